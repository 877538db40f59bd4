"""synthetic_trace: determinism, shapes, and that each knob does what its docstring says."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from switchyard.placement.errors import PlacementError
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace


def greedy_groups(pair_counts: np.ndarray, num_gpus: int, slots: int) -> np.ndarray:
    """`[E]` GPU of each expert: fill GPUs one by one with the expert most co-activated with them.

    A deliberately simple co-activation-aware placement, to show the trace has structure to find.
    """
    gpu = np.full(len(pair_counts), -1)
    for g in range(num_gpus):
        free = np.flatnonzero(gpu < 0)
        members = [free[np.argmax(pair_counts[free].sum(axis=1))]]
        gpu[members[0]] = g
        while len(members) < slots:
            free = np.flatnonzero(gpu < 0)
            members.append(free[np.argmax(pair_counts[np.ix_(free, members)].sum(axis=1))])
            gpu[members[-1]] = g
    return gpu


def gpus_per_token(topk_ids: np.ndarray, gpu_of_expert: np.ndarray) -> float:
    """Mean distinct GPUs per token and layer; `gpu_of_expert` is `[L, E]`."""
    gpus = np.sort(np.take_along_axis(gpu_of_expert[None], topk_ids, axis=2), axis=2)
    return float((1 + (gpus[:, :, 1:] != gpus[:, :, :-1]).sum(axis=2)).mean())


def test_deterministic_for_a_seed() -> None:
    a = synthetic_trace(3, 16, 2, 200, seed=7)
    assert np.array_equal(a.topk_ids, synthetic_trace(3, 16, 2, 200, seed=7).topk_ids)
    assert np.array_equal(a.topk_ids, synthetic_trace(3, 16, 2, 200, seed=np.random.default_rng(7)).topk_ids)
    assert not np.array_equal(a.topk_ids, synthetic_trace(3, 16, 2, 200, seed=8).topk_ids)


@pytest.mark.parametrize("experts, top_k, clusters", [(32, 4, None), (10, 4, 5), (10, 10, 3), (8, 1, 8)],
                         ids=["default", "clusters-smaller-than-k", "k-equals-e", "singleton-clusters"])
def test_shape_and_distinct_picks(experts: int, top_k: int, clusters: int | None) -> None:
    trace = synthetic_trace(3, experts, top_k, 100, seq_len=32, num_clusters=clusters)
    assert trace.topk_ids.shape == (100, 3, top_k) and trace.num_experts == experts
    assert trace.seq_lens.tolist() == [32, 32, 32, 4]
    picks = np.sort(trace.topk_ids, axis=2)
    assert (picks[:, :, 1:] != picks[:, :, :-1]).all()
    assert picks.min() >= 0 and picks.max() < experts


def max_over_mean_load(**options: Any) -> float:
    load = RoutingStats.from_trace(synthetic_trace(4, 32, 4, 4096, **options)).load
    return float((load.max(axis=1) / load.mean(axis=1)).mean())


def test_skew_makes_hot_experts() -> None:
    flat = max_over_mean_load(skew=0.0, affinity=0.0)
    mild = max_over_mean_load(skew=0.5, affinity=0.0)
    steep = max_over_mean_load(skew=1.5, affinity=0.0)
    assert flat < 1.25 < mild < steep and steep > 4


def test_clusters_reward_coactivation_aware_placement() -> None:
    """With the default structure, grouping co-activated experts on GPUs clearly beats a linear
    placement on held-out tokens; without structure (no affinity, no skew) it does not."""
    for options, min_gain, max_gain in (({}, 0.6, 4.0), ({"affinity": 0.0, "skew": 0.0}, -0.15, 0.15)):
        plan_on, evaluate_on = synthetic_trace(4, 32, 4, 4096, seed=2, **options).split()
        pairs = RoutingStats.from_trace(plan_on).pair_counts
        linear = np.tile(np.arange(32) // 4, (4, 1))
        grouped = np.stack([greedy_groups(layer_pairs, 8, 4) for layer_pairs in pairs])
        gain = gpus_per_token(evaluate_on.topk_ids, linear) - gpus_per_token(evaluate_on.topk_ids, grouped)
        assert min_gain < gain < max_gain, options


def test_full_affinity_picks_whole_clusters() -> None:
    # 8 clusters of exactly k = 4 experts: every token picks one whole cluster at every layer.
    stats = RoutingStats.from_trace(synthetic_trace(3, 32, 4, 2000, num_clusters=8, affinity=1.0))
    assert [len(sets) for sets in stats.topk_sets] == [8, 8, 8]
    assert all(not np.intersect1d(a, b).size for sets in stats.topk_sets for a, b in zip(sets[:-1], sets[1:]))


def mutual_information(joint: np.ndarray) -> float:
    p = joint / joint.sum()
    independent = p.sum(axis=1, keepdims=True) * p.sum(axis=0, keepdims=True)
    nonzero = p > 0
    return float((p[nonzero] * np.log(p[nonzero] / independent[nonzero])).sum())


def layer_to_layer(picks: np.ndarray, next_picks: np.ndarray, num_experts: int) -> np.ndarray:
    """`[E, E]`: tokens with e among `picks` `[T, k]` and f among `next_picks` `[T, k]` (all k * k pairs)."""
    counts = np.zeros((num_experts, num_experts))
    np.add.at(counts, (np.repeat(picks, next_picks.shape[1], axis=1), np.tile(next_picks, (1, picks.shape[1]))), 1)
    return counts


def test_layer_correlation_links_consecutive_layers() -> None:
    def information(correlation: float) -> float:
        ids = synthetic_trace(3, 32, 4, 4096, layer_correlation=correlation).topk_ids  # [T, L, k]
        return min(mutual_information(layer_to_layer(ids[:, layer], ids[:, layer + 1], 32)) for layer in range(2))

    assert information(0.0) < 0.05 and information(1.0) > 0.2


def test_sequence_affinity_shares_a_cluster_within_a_sequence() -> None:
    def experts_per_sequence(sequence_affinity: float) -> int:
        trace = synthetic_trace(1, 32, 4, 640, num_clusters=4, affinity=1.0,
                                sequence_affinity=sequence_affinity)
        return max(len(np.unique(trace.topk_ids[s * 64:(s + 1) * 64])) for s in range(10))

    assert experts_per_sequence(1.0) <= 8  # one cluster of 32 / 4 experts
    assert experts_per_sequence(0.0) > 8


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_k": 9}, "top_k 9 exceeds the 8 experts"),
        ({"num_tokens": 0}, "num_tokens must be a positive integer"),
        ({"num_layers": True}, "num_layers must be a positive integer"),
        ({"num_clusters": 0}, "num_clusters must be in \\[1, 8\\]"),
        ({"num_clusters": 9}, "num_clusters must be in \\[1, 8\\]"),
        ({"skew": -1.0}, "skew must be non-negative"),
        ({"affinity": 1.5}, "affinity must be in \\[0, 1\\]"),
        ({"layer_correlation": float("nan")}, "layer_correlation must be in \\[0, 1\\]"),
        ({"sequence_affinity": -0.1}, "sequence_affinity must be in \\[0, 1\\]"),
    ],
    ids=["k-above-e", "no-tokens", "bool-layers", "zero-clusters", "too-many-clusters", "negative-skew",
         "affinity", "nan-correlation", "sequence-affinity"],
)
def test_rejects_bad_parameters(options: dict[str, Any], message: str) -> None:
    arguments = {"num_layers": 2, "num_experts": 8, "top_k": 2, "num_tokens": 10, **options}
    with pytest.raises(PlacementError, match=message):
        synthetic_trace(**arguments)

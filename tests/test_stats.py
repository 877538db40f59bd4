"""RoutingStats: exact counts on a hand-checked trace, merge/decay/slice semantics, validation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from switchyard.placement.errors import PlacementError
from switchyard.placement.formats import load_trace
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.trace import RoutingTrace


def hand_trace() -> RoutingTrace:
    # 3 tokens, 2 layers, top-2 of 4 experts; tokens 0-1 form one sequence, token 2 another.
    ids = [
        [[0, 1], [2, 3]],
        [[1, 0], [2, 0]],
        [[2, 3], [3, 2]],
    ]
    return RoutingTrace(np.array(ids), np.array([2, 1]), 4)


def assert_same_stats(a: RoutingStats, b: RoutingStats) -> None:
    assert a.num_tokens == pytest.approx(b.num_tokens)
    np.testing.assert_allclose(a.load, b.load)
    for name in ("pair_counts",):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(x, y, err_msg=name)
    assert (a.topk_sets is None) == (b.topk_sets is None)
    if a.topk_sets is not None:
        for layer, (sa, sb, ca, cb) in enumerate(zip(a.topk_sets, b.topk_sets, a.set_counts, b.set_counts)):
            np.testing.assert_array_equal(sa, sb, err_msg=f"sets of layer {layer}")
            np.testing.assert_allclose(ca, cb, err_msg=f"set counts of layer {layer}")


def test_hand_checked_counts() -> None:
    stats = RoutingStats.from_trace(hand_trace())
    assert (stats.num_layers, stats.num_experts, stats.top_k, stats.num_tokens) == (2, 4, 2, 3.0)
    assert stats.has_coactivation
    assert stats.load.tolist() == [[2, 2, 1, 1], [1, 0, 3, 2]]
    expected_pairs = np.zeros((2, 4, 4))
    expected_pairs[0, 0, 1] = expected_pairs[0, 1, 0] = 2
    expected_pairs[0, 2, 3] = expected_pairs[0, 3, 2] = 1
    expected_pairs[1, 2, 3] = expected_pairs[1, 3, 2] = 2
    expected_pairs[1, 0, 2] = expected_pairs[1, 2, 0] = 1
    np.testing.assert_array_equal(stats.pair_counts, expected_pairs)
    assert [s.tolist() for s in stats.topk_sets] == [[[0, 1], [2, 3]], [[0, 2], [2, 3]]]
    assert [c.tolist() for c in stats.set_counts] == [[2, 1], [1, 2]]


def test_arrays_are_read_only() -> None:
    stats = RoutingStats.from_trace(hand_trace())
    for array in (stats.load, stats.pair_counts, *stats.topk_sets, *stats.set_counts):
        assert not array.flags.writeable


@pytest.mark.parametrize("start, stop", [(0, 2), (1, None), (None, -1), (2, 2)],
                         ids=["head", "tail", "negative-stop", "empty"])
def test_token_range_matches_sliced_trace(start: int | None, stop: int | None) -> None:
    trace = hand_trace()
    assert_same_stats(RoutingStats.from_trace(trace, start, stop),
                      RoutingStats.from_trace(trace.slice_tokens(start, stop)))


def test_window_tokens_keep_the_load_of_every_run_of_tokens() -> None:
    trace = synthetic_trace(3, 16, 3, 300, seed=1)
    stats = RoutingStats.from_trace(trace, 10, None, window_tokens=128)
    assert stats.windows.shape == (3, 3, 16)  # 290 tokens: runs of 128, 128 and 34
    for index, (start, stop) in enumerate([(10, 138), (138, 266), (266, None)]):
        np.testing.assert_array_equal(stats.windows[index], RoutingStats.from_trace(trace, start, stop).load)
    np.testing.assert_array_equal(stats.windows.sum(axis=0), stats.load)
    assert_same_stats(stats, RoutingStats.from_trace(trace, 10, None))  # the counts are the same
    assert RoutingStats.from_trace(trace, 5, 5, window_tokens=4).windows.shape == (1, 3, 16)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(PlacementError, match=f"window_tokens must be a positive integer, got {bad!r}"):
            RoutingStats.from_trace(trace, window_tokens=bad)


def test_merge_of_windows_equals_whole() -> None:
    trace = synthetic_trace(3, 16, 3, 300, seed=1)
    whole = RoutingStats.from_trace(trace)
    merged = RoutingStats.from_trace(trace, 0, 120).merge(RoutingStats.from_trace(trace, 120, None))
    assert_same_stats(merged, whole)


def test_merge_sums_shared_sets() -> None:
    stats = RoutingStats.from_trace(hand_trace())
    doubled = stats.merge(stats)
    assert [s.tolist() for s in doubled.topk_sets] == [s.tolist() for s in stats.topk_sets]
    assert [c.tolist() for c in doubled.set_counts] == [[4, 2], [2, 4]]
    assert doubled.num_tokens == 6


def test_merge_with_load_only_keeps_load_only() -> None:
    full = RoutingStats.from_trace(hand_trace())
    merged = full.merge(RoutingStats.from_load(full.load, num_tokens=3))
    assert not merged.has_coactivation and merged.topk_sets is None
    assert merged.top_k == 0
    np.testing.assert_array_equal(merged.load, 2 * full.load)


@pytest.mark.parametrize(
    "other, message",
    [
        (RoutingStats.from_load(np.ones((2, 5))), "2 layers x 4 experts with 2 layers x 5 experts"),
        (RoutingStats.from_load(np.ones((3, 4))), "2 layers x 4 experts with 3 layers x 4 experts"),
        (RoutingStats.from_trace(RoutingTrace(np.array([[[0, 1, 2], [1, 2, 3]]]), [1], 4)),
         "top-2 sets with top-3"),
    ],
    ids=["experts", "layers", "top-k"],
)
def test_merge_errors(other: RoutingStats, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        RoutingStats.from_trace(hand_trace()).merge(other)


def test_decay_scales_every_count() -> None:
    stats = RoutingStats.from_trace(hand_trace())
    half = stats.decayed(0.5)
    assert half.num_tokens == 1.5
    np.testing.assert_array_equal(half.load, stats.load / 2)
    np.testing.assert_array_equal(half.pair_counts, stats.pair_counts / 2)
    assert [c.tolist() for c in half.set_counts] == [[1, 0.5], [0.5, 1]]
    assert [s.tolist() for s in half.topk_sets] == [s.tolist() for s in stats.topk_sets]
    assert_same_stats(stats.decayed(1.0), stats)
    assert stats.decayed(0.0).load.sum() == 0


@pytest.mark.parametrize("factor", [-0.1, 1.5, float("nan")], ids=["negative", "above-one", "nan"])
def test_decay_rejects_factor(factor: float) -> None:
    with pytest.raises(PlacementError, match="decay factor must be in"):
        RoutingStats.from_trace(hand_trace()).decayed(factor)


def test_load_only() -> None:
    stats = RoutingStats.from_load(np.array([[3, 1], [2, 2]]))
    assert (stats.top_k, stats.has_coactivation, stats.num_tokens) == (0, False, 4.0)
    assert stats.pair_counts is None and stats.topk_sets is None and stats.set_counts is None
    assert RoutingStats.from_load(np.ones((1, 2)), num_tokens=7).num_tokens == 7


@pytest.mark.parametrize(
    "load, message",
    [
        (np.ones(4), "non-empty \\[layers, experts\\]"),
        (np.zeros((0, 4)), "non-empty \\[layers, experts\\]"),
        (np.array([[1.0, -1.0]]), "finite non-negative"),
        (np.array([[1.0, np.nan]]), "finite non-negative"),
        ([["a", "b"]], "numeric array"),
    ],
    ids=["1-d", "no-layers", "negative", "nan", "text"],
)
def test_from_load_errors(load: np.ndarray, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        RoutingStats.from_load(load)


def test_constructor_checks_views() -> None:
    good = RoutingStats.from_trace(hand_trace())
    cases = {
        "pair_counts must have shape": dict(pair_counts=np.zeros((2, 4, 3))),
        "given together": dict(set_counts=None),
        "one entry per layer": dict(topk_sets=good.topk_sets[:1], set_counts=good.set_counts[:1]),
        "outside \\[0, 4\\)": dict(topk_sets=(np.array([[0, 4]]), good.topk_sets[1]),
                                  set_counts=(np.array([1.0]), good.set_counts[1])),
        "set_counts\\[0\\] must have shape": dict(set_counts=(np.ones(5), good.set_counts[1])),
        "num_tokens must be non-negative": dict(num_tokens=-1),
    }
    fields = dict(load=good.load, pair_counts=good.pair_counts, topk_sets=good.topk_sets,
                  set_counts=good.set_counts, num_tokens=good.num_tokens)
    for message, change in cases.items():
        with pytest.raises(PlacementError, match=message):
            RoutingStats(**{**fields, **change})


def test_deepseek_v3_shape() -> None:
    trace = synthetic_trace(58, 256, 8, 256, seed=3)
    stats = RoutingStats.from_trace(trace)
    assert stats.pair_counts.shape == (58, 256, 256)
    assert stats.top_k == 8


@pytest.mark.traces
def test_esft_invariants(esft_path: Callable[[str], Path]) -> None:
    trace = load_trace(esft_path("intent"))
    stats = RoutingStats.from_trace(trace)
    tokens, k = trace.num_tokens, trace.top_k
    np.testing.assert_array_equal(stats.load.sum(axis=1), tokens * k)
    np.testing.assert_array_equal(stats.pair_counts.sum(axis=(1, 2)), tokens * k * (k - 1))
    np.testing.assert_array_equal(stats.pair_counts, stats.pair_counts.transpose(0, 2, 1))
    assert not np.diagonal(stats.pair_counts, axis1=1, axis2=2).any()
    assert all(c.sum() == tokens for c in stats.set_counts)
    assert all(len(s) < tokens for s in stats.topk_sets)  # real routing repeats sets

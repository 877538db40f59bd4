"""Plan, Topology and RoutingTrace: construction, derived views, and every validation error."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace


def two_gpu_plan() -> Plan:
    # 4 experts, 2 GPUs x 3 slots: GPU 0 holds 0,1,2; GPU 1 holds 3,0,1 (experts 0 and 1 replicated).
    return Plan(np.array([[0, 1, 2, 3, 0, 1]]), Topology(1, 2, 3), 4)


def test_topology_layout() -> None:
    topology = Topology(num_nodes=2, gpus_per_node=2, slots_per_gpu=3)
    assert topology.num_gpus == 4 and topology.num_slots == 12
    assert topology.gpu_of_slot.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert topology.node_of_slot.tolist() == [0] * 6 + [1] * 6
    assert topology.node_of_gpu.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "experts, nodes, gpus, slots, message",
    [
        (64, 1, 6, None, "do not divide over 6 GPUs"),
        (64, 1, 8, 7, "cannot hold 64 experts"),
        (64, 0, 8, None, "num_nodes must be a positive integer"),
        (64, 1, 8, -1, "slots_per_gpu must be a positive integer"),
    ],
    ids=["indivisible-default", "too-few-slots", "zero-nodes", "negative-slots"],
)
def test_topology_errors(experts: int, nodes: int, gpus: int, slots: int | None, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        Topology.for_experts(experts, nodes, gpus, slots)


def test_topology_default_slots() -> None:
    assert Topology.for_experts(64, 2, 4).slots_per_gpu == 8
    assert Topology.for_experts(64, 2, 4, 9).num_slots == 72


def test_plan_views() -> None:
    plan = two_gpu_plan()
    assert plan.num_layers == 1 and plan.num_physical_experts == 6
    assert plan.replica_count.tolist() == [[2, 2, 1, 1]]
    assert plan.logical_to_physical.tolist() == [[[0, 4], [1, 5], [2, -1], [3, -1]]]
    assert plan.gpu_experts.tolist() == [[[0, 1, 2], [3, 0, 1]]]
    assert not plan.physical_to_logical.flags.writeable


def test_plan_round_trips_through_dict() -> None:
    plan = two_gpu_plan()
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_dict({"physical_to_logical_map": [[0, 1, 2, 3, 0, 1]], "num_nodes": 1,
                           "gpus_per_node": 2}) == plan


def test_from_gpu_experts() -> None:
    plan = Plan.from_gpu_experts(np.array([[[0, 1, 2], [3, 0, 1]]]), 1, 2, 4)
    assert plan == two_gpu_plan()


@pytest.mark.parametrize(
    "table, topology, experts, message",
    [
        ([[0, 1, 2, 0, 1, 2]], Topology(1, 2, 3), 4, "expert 3 has no replica"),
        ([[0, 1, 2, 3]], Topology(1, 2, 3), 4, "4 slots per layer but the topology has 2 GPUs x 3"),
        ([[0, 1, 2, 3, 4, 1]], Topology(1, 2, 3), 4, "expert id 4, outside"),
        ([[0, 1, 2, -1, 3, 1]], Topology(1, 2, 3), 4, "expert id -1, outside"),
        ([[0, 0, 2, 3, 1, 1]], Topology(1, 2, 3), 4, "GPU 0 holds expert 0 twice"),
        ([0, 1, 2, 3], Topology(1, 2, 2), 4, "must be 2-D"),
        ([[0.5, 1, 2, 3]], Topology(1, 2, 2), 4, "integer expert ids"),
    ],
    ids=["missing-expert", "slot-count", "id-too-large", "id-negative", "twice-on-gpu", "not-2d", "not-int"],
)
def test_plan_validation(table: list, topology: Topology, experts: int, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        Plan(np.array(table), topology, experts)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"num_nodes": 1, "gpus_per_node": 2}, "lacks the key"),
        ({"physical_to_logical_map": [[0, 1], [2]], "num_nodes": 1, "gpus_per_node": 2}, "rectangular"),
        ({"physical_to_logical_map": [[0, 1, 2]], "num_nodes": 1, "gpus_per_node": 2}, "do not divide"),
        ({"physical_to_logical_map": [[0, 1]], "num_nodes": "2", "gpus_per_node": 1}, "num_nodes must be"),
        ([1, 2], "JSON object"),
    ],
    ids=["missing-key", "ragged", "indivisible", "bad-nodes", "not-object"],
)
def test_plan_from_dict_errors(data: object, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        Plan.from_dict(data)  # type: ignore[arg-type]


def test_plan_check_matches() -> None:
    plan = two_gpu_plan()
    plan.check_matches(1, 4)
    with pytest.raises(PlacementError, match="1 layers but the trace has 26"):
        plan.check_matches(26, 4)
    with pytest.raises(PlacementError, match="places 4 experts but the model has 8"):
        plan.check_matches(1, 8, what="the model")


def test_trace_slicing_keeps_sequences() -> None:
    ids = np.arange(10 * 2 * 1).reshape(10, 2, 1) % 4
    trace = RoutingTrace(ids, np.array([3, 4, 3]), num_experts=4)
    assert trace.sequence_of_token.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert trace.home_node_of_token(2).tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    middle = trace.slice_tokens(2, 8)
    assert middle.seq_lens.tolist() == [1, 4, 1]
    assert np.array_equal(middle.topk_ids, ids[2:8])
    first, second = trace.split(0.5)
    assert (first.num_tokens, second.num_tokens) == (5, 5)
    assert first.seq_lens.tolist() == [3, 2] and second.seq_lens.tolist() == [2, 3]


@pytest.mark.parametrize(
    "ids, seq_lens, experts, message",
    [
        (np.zeros((4, 2)), [4], 4, "must be 3-D"),
        (np.full((4, 1, 1), 4), [4], 4, "expert id 4"),
        (np.zeros((4, 1, 1), dtype=np.int64), [3], 4, "sum to the 4 tokens"),
        (np.zeros((4, 1, 1), dtype=float), [4], 4, "integer expert ids"),
    ],
    ids=["not-3d", "id-out-of-range", "seq-lens-sum", "float-ids"],
)
def test_trace_validation(ids: np.ndarray, seq_lens: list, experts: int, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        RoutingTrace(ids, np.array(seq_lens), experts)

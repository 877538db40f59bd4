"""Placement policies: invariants every registered policy keeps, golden cases, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.policies import POLICIES, get_policy, policy_names
from switchyard.placement.policies.eplb import (
    EplbPolicy,
    balanced_packing,
    rebalance_experts,
    replicate_experts,
)
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology

# DeepSeek EPLB's README example: 2 layers x 12 experts in 4 groups, 16 replicas on 2 nodes x 4 GPUs.
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_PHYSICAL_TO_LOGICAL = np.array([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                       [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])

# (experts, topology): no redundancy, redundancy, E not a multiple of G, S == E, one GPU, 3 nodes.
TOPOLOGIES = [
    pytest.param(16, Topology(1, 4, 4), id="E16-1x4x4"),
    pytest.param(64, Topology(2, 4, 9), id="E64-2x4x9-redundant"),
    pytest.param(12, Topology(1, 3, 5), id="E12-1x3x5-uneven"),
    pytest.param(10, Topology(2, 2, 3), id="E10-2x2x3-uneven"),
    pytest.param(4, Topology(1, 3, 4), id="E4-1x3x4-slots-equal-experts"),
    pytest.param(8, Topology(1, 1, 8), id="E8-1x1x8-one-gpu"),
    pytest.param(20, Topology(3, 2, 7), id="E20-3x2x7"),
]


def skewed_stats(num_experts: int, num_layers: int = 3, seed: int = 0) -> RoutingStats:
    """Stats with co-activation from a small synthetic trace, so every kind of policy can run."""
    trace = synthetic_trace(num_layers, num_experts, min(2, num_experts), 600, skew=1.2, seed=seed)
    return RoutingStats.from_trace(trace)


@pytest.mark.parametrize("name", policy_names())
@pytest.mark.parametrize("num_experts, topology", TOPOLOGIES)
def test_every_policy_keeps_the_plan_invariants(name: str, num_experts: int, topology: Topology) -> None:
    stats = skewed_stats(num_experts)
    plan = get_policy(name).place(stats, topology)

    assert isinstance(plan, Plan)
    assert plan.physical_to_logical.shape == (stats.num_layers, topology.num_slots)
    assert plan.topology == topology and plan.num_logical_experts == num_experts
    assert (plan.replica_count >= 1).all(), "every expert has a replica"
    assert (plan.replica_count.sum(axis=1) == topology.num_slots).all(), "replicas sum to the slots"
    gpu_experts = plan.gpu_experts
    assert gpu_experts.shape == (stats.num_layers, topology.num_gpus, topology.slots_per_gpu)
    per_gpu = np.sort(gpu_experts, axis=2)
    assert not (per_gpu[:, :, 1:] == per_gpu[:, :, :-1]).any(), "no expert twice on a GPU"


@pytest.mark.parametrize("name", policy_names())
def test_every_policy_is_deterministic(name: str) -> None:
    stats, topology = skewed_stats(64), Topology(2, 4, 9)
    first = get_policy(name).place(stats, topology)
    assert get_policy(name).place(stats, topology) == first
    assert get_policy(name).place(stats, topology, current=first).topology == topology  # accepts `current`


@pytest.mark.parametrize("name", policy_names())
@pytest.mark.parametrize(
    "num_experts, topology, message",
    [
        pytest.param(8, Topology(1, 2, 3), "fewer than the 8 experts", id="too-few-slots"),
        pytest.param(4, Topology(1, 2, 5), "slots_per_gpu=5 exceeds the 4 experts",
                     id="more-slots-than-experts"),
    ],
)
def test_every_policy_rejects_a_topology_that_cannot_fit(
    name: str, num_experts: int, topology: Topology, message: str
) -> None:
    with pytest.raises(PlacementError, match=message):
        get_policy(name).place(RoutingStats.from_load(np.ones((2, num_experts))), topology)


def test_registry() -> None:
    assert {"linear", "round-robin", "eplb"} <= set(POLICIES)
    assert policy_names() == sorted(POLICIES)
    assert all(get_policy(name).name == name for name in POLICIES)
    assert get_policy("eplb", num_groups=4) == EplbPolicy(num_groups=4)


@pytest.mark.parametrize(
    "name, options, message",
    [
        pytest.param("nope", {}, "unknown policy 'nope'; choose one of .*eplb.*linear", id="unknown-name"),
        pytest.param("linear", {"num_groups": 2}, "takes no option.*num_groups.*options: none",
                     id="option-of-another-policy"),
        pytest.param("eplb", {"groups": 2}, "no option.*groups.*options: num_groups", id="misspelt-option"),
        pytest.param("eplb", {"num_groups": 0}, "num_groups must be a positive integer", id="zero-groups"),
        pytest.param("eplb", {"num_groups": 2.5}, "num_groups must be a positive integer", id="float-groups"),
    ],
)
def test_get_policy_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        get_policy(name, **options)


# --- linear and round-robin: golden layouts ---------------------------------------------------------

def test_linear_layout() -> None:
    plan = get_policy("linear").place(RoutingStats.from_load(np.ones((2, 4))), Topology(1, 2, 3))
    assert plan.physical_to_logical.tolist() == [[0, 1, 2, 3, 0, 1]] * 2


@pytest.mark.parametrize(
    "num_experts, topology, gpu_experts",
    [
        pytest.param(4, Topology(1, 2, 2), [[0, 2], [1, 3]], id="one-pass"),
        pytest.param(5, Topology(1, 2, 3), [[0, 2, 4], [1, 3, 0]], id="redundant-cycle"),
        # lcm(4, 2) = 4 slots per lap; the second lap shifts by one, else GPU 0 would get 0 again.
        pytest.param(4, Topology(1, 2, 3), [[0, 2, 1], [1, 3, 2]], id="shifted-lap"),
    ],
)
def test_round_robin_layout(num_experts: int, topology: Topology, gpu_experts: list) -> None:
    plan = get_policy("round-robin").place(RoutingStats.from_load(np.ones((1, num_experts))), topology)
    assert plan.gpu_experts[0].tolist() == gpu_experts


def test_round_robin_puts_expert_e_on_gpu_e_mod_g() -> None:
    plan = get_policy("round-robin").place(RoutingStats.from_load(np.ones((1, 64))), Topology(2, 4, 9))
    assert all(expert in plan.gpu_experts[0, expert % 8] for expert in range(64))
    assert plan.gpu_experts[0, 0].tolist() == [0, 8, 16, 24, 32, 40, 48, 56, 1]


# --- EPLB ----------------------------------------------------------------------------------------------

def test_eplb_readme_example() -> None:
    assert np.array_equal(rebalance_experts(README_WEIGHT, 16, 4, 2, 8), README_PHYSICAL_TO_LOGICAL)
    plan = EplbPolicy(num_groups=4).place(RoutingStats.from_load(README_WEIGHT), Topology(2, 4, 2))
    assert np.array_equal(plan.physical_to_logical, README_PHYSICAL_TO_LOGICAL)


def test_eplb_hierarchical_keeps_each_group_on_one_node() -> None:
    load = RoutingStats.from_load(np.random.default_rng(3).pareto(1.0, size=(4, 32)))
    topology = Topology(2, 4, 5)
    plan = EplbPolicy(num_groups=8).place(load, topology)
    node_of_slot = np.broadcast_to(topology.node_of_slot, plan.physical_to_logical.shape)
    group_of_slot = plan.physical_to_logical // 4
    for layer in range(plan.num_layers):
        for group in range(8):
            assert len(set(node_of_slot[layer][group_of_slot[layer] == group])) == 1


def test_eplb_balances_better_than_linear() -> None:
    stats, topology = skewed_stats(64, seed=1), Topology(1, 8, 9)
    eplb = _gpu_load(stats.load, get_policy("eplb").place(stats, topology))
    linear = _gpu_load(stats.load, get_policy("linear").place(stats, topology))
    assert np.allclose(eplb.sum(axis=1), stats.load.sum(axis=1))
    assert (eplb.max(axis=1) < linear.max(axis=1)).all()


def test_eplb_caps_replicas_at_one_per_gpu() -> None:
    # One expert carries almost all the load: the reference would give it 5 replicas on 2 GPUs.
    load = np.array([[1000.0, 1, 1, 1]])
    plan = EplbPolicy().place(RoutingStats.from_load(load), Topology(1, 2, 4))
    assert plan.replica_count.tolist() == [[2, 2, 2, 2]]


def test_balanced_packing_golden() -> None:
    pack_index, rank_in_pack = balanced_packing(np.array([[5.0, 4, 3, 2, 1, 1]]), 2)
    assert pack_index.tolist() == [[0, 1, 1, 0, 0, 1]]
    assert rank_in_pack.tolist() == [[0, 0, 1, 1, 2, 2]]


def test_balanced_packing_moves_an_item_rather_than_repeat_a_label() -> None:
    # Items: a=10, c=d=e=3, then two replicas of b. Pack 1 fills with c, d, e and pack 0 gets the first
    # b; the second b may not join it, so it takes c's place in pack 1 and c moves to pack 0.
    weight = np.array([[10.0, 3, 3, 3, 1, 1]])
    labels = np.array([[0, 2, 3, 4, 1, 1]])
    pack_index, rank_in_pack = balanced_packing(weight, 2, labels)
    assert pack_index.tolist() == [[0, 0, 1, 1, 0, 1]]
    assert rank_in_pack.tolist() == [[0, 2, 1, 2, 1, 0]]


@pytest.mark.parametrize(
    "max_replicas, replica_to_expert, replica_count",
    [
        pytest.param(3, [0, 1, 2, 0, 0], [3, 1, 1], id="uncapped"),
        pytest.param(2, [0, 1, 2, 0, 1], [2, 2, 1], id="capped"),
    ],
)
def test_replicate_experts_golden(max_replicas: int, replica_to_expert: list, replica_count: list) -> None:
    to_expert, count = replicate_experts(np.array([[10.0, 4, 2]]), 5, max_replicas)
    assert to_expert.tolist() == [replica_to_expert] and count.tolist() == [replica_count]


@pytest.mark.parametrize(
    "weight, args, message",
    [
        pytest.param(np.ones(12), (16, 1, 1, 4), "2-D", id="one-dimensional"),
        pytest.param(-np.ones((1, 12)), (16, 1, 1, 4), "non-negative", id="negative-load"),
        pytest.param(np.full((1, 12), np.nan), (16, 1, 1, 4), "finite", id="nan-load"),
        pytest.param(np.ones((1, 12)), (16, 5, 1, 4), "num_groups=5 does not divide the 12", id="groups"),
        pytest.param(np.ones((1, 12)), (16, 4, 2, 3), "num_gpus=3 is not a multiple of num_nodes=2",
                     id="gpus"),
        pytest.param(np.ones((1, 12)), (18, 1, 1, 4), "num_replicas=18 must be a multiple of num_gpus=4",
                     id="replicas-indivisible"),
        pytest.param(np.ones((1, 12)), (8, 1, 1, 4), "at least the 12 experts", id="replicas-too-few"),
        pytest.param(np.ones((1, 12)), (0, 1, 1, 4), "num_replicas must be a positive integer", id="zero"),
        pytest.param(np.ones((1, 12)), (56, 4, 2, 8), "7 slots per GPU exceed the 6 experts each node",
                     id="hierarchical-slots"),
    ],
)
def test_rebalance_experts_errors(weight: np.ndarray, args: tuple, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        rebalance_experts(weight, *args)


def test_eplb_policy_rejects_groups_that_do_not_divide_the_experts() -> None:
    with pytest.raises(PlacementError, match="num_groups=3 does not divide the 16 experts"):
        EplbPolicy(num_groups=3).place(RoutingStats.from_load(np.ones((1, 16))), Topology(1, 4, 4))


def _gpu_load(load: np.ndarray, plan: Plan) -> np.ndarray:
    """`[L, G]`: tokens on each GPU when each expert's load splits evenly over its replicas."""
    per_slot = np.take_along_axis(load / plan.replica_count, plan.physical_to_logical, axis=1)
    return per_slot.reshape(plan.num_layers, plan.topology.num_gpus, -1).sum(axis=2)

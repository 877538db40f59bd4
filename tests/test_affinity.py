"""The affinity policy: invariants, determinism, the migration budget, and the targets on ESFT."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from switchyard.placement.budget import allocate, copies_needed, relabel_gpus
from switchyard.placement.cost import PRESETS
from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import evaluate
from switchyard.placement.formats import load_trace
from switchyard.placement.forked import map_forked, usable_cpus
from switchyard.placement.migration import plan_migration
from switchyard.placement.partition import (LayerRows, Layout, LoadCap, Refinement, Score, component_count,
                                            connect_replicas, expert_vertices, perturbed, refine, refine_layers,
                                            replica_components, replicated, score, score_layers,
                                            stranding_swaps, swap_deltas)
from switchyard.placement.plan import Plan
from switchyard.placement.policies import affinity, get_policy
from switchyard.placement.policies.affinity import AffinityPolicy, layer_rows, sampled_rows
from switchyard.placement.policies.eplb import EplbPolicy
from switchyard.placement.seeding import graph_partition, replica_counts
from switchyard.placement.set_routing import route_sets
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.windows import decayed_stats, split_windows


@pytest.fixture(scope="module")
def synthetic():
    """A clustered trace (8 layers x 32 experts, top-4, 64 sequences) split into training and test
    halves; sequences have topics, so the halves differ the way real traffic drifts."""
    trace = synthetic_trace(8, 32, 4, 8192, skew=1.2, seed=7)
    train, test = trace.split()
    return RoutingStats.from_trace(train), train, test


def _assert_valid(plan: Plan, stats: RoutingStats, topology: Topology) -> None:
    assert plan.physical_to_logical.shape == (stats.num_layers, topology.num_slots)
    assert (plan.replica_count >= 1).all()
    per_gpu = np.sort(plan.gpu_experts, axis=2)
    assert not (per_gpu[:, :, 1:] == per_gpu[:, :, :-1]).any()


@pytest.mark.parametrize("topology", [
    pytest.param(Topology(1, 4, 8), id="1x4x8-no-spare"),
    pytest.param(Topology(2, 2, 9), id="2x2x9-spare"),
    pytest.param(Topology(4, 2, 5), id="4x2x5-spare"),
    pytest.param(Topology(1, 3, 11), id="1x3x11-uneven"),
])
def test_plan_is_valid_with_exact_slots(synthetic, topology: Topology) -> None:
    stats, _, _ = synthetic
    plan = AffinityPolicy().place(stats, topology)
    _assert_valid(plan, stats, topology)
    assert (plan.replica_count.sum(axis=1) == topology.num_slots).all()
    assert plan.gpu_experts.shape[1:] == (topology.num_gpus, topology.slots_per_gpu)


@pytest.mark.parametrize("seed", range(12))
def test_random_small_topologies_are_valid(seed: int) -> None:
    """Tight corners (few experts, S close to E, skewed load) where seeding must make room."""
    rng = np.random.default_rng(seed)
    num_experts, num_nodes, gpus_per_node = int(rng.integers(3, 16)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    slots = int(rng.integers(-(-num_experts // (num_nodes * gpus_per_node)), num_experts + 1))
    trace = synthetic_trace(2, num_experts, min(3, num_experts), 300, skew=float(rng.uniform(0, 3)), seed=seed)
    stats, topology = RoutingStats.from_trace(trace), Topology(num_nodes, gpus_per_node, slots)
    for policy in (AffinityPolicy(), AffinityPolicy(max_imbalance=0.0)):
        _assert_valid(policy.place(stats, topology), stats, topology)


def test_registered_and_deterministic(synthetic) -> None:
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    first = get_policy("affinity").place(stats, topology)
    assert get_policy("affinity", seed=0).place(stats, topology) == first


def test_more_starts_keep_the_best_layout_of_each_layer(synthetic) -> None:
    """Option `starts`: each refined layer's plan scores no worse on its statistics than with fewer
    starts (the first start is the same), better in some layer, and the plan stays deterministic."""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    scores = {starts: [candidates[-1][1] for candidates in
                       AffinityPolicy(starts=starts, perturbations=0)._candidates(stats, topology, None)]
              for starts in (1, 2, 4)}
    for fewer, more in ((1, 2), (2, 4)):
        assert not any(few.better_than(many) for few, many in zip(scores[fewer], scores[more]))
    assert any(many.better_than(one) for one, many in zip(scores[1], scores[4]))
    policy = AffinityPolicy(starts=3, perturbations=0)
    assert policy.place(stats, topology) == policy.place(stats, topology)


def test_kicks_keep_the_best_layout_of_each_layer(synthetic) -> None:
    """Option `perturbations` (iterated local search): each refined layer's plan scores no worse on its
    statistics than without kicks (the starts are the same), better in some layer, and the plan stays
    deterministic; a migration budget of 0 still returns the plan in service."""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    scores = {kicks: [candidates[-1][1] for candidates in
                      AffinityPolicy(perturbations=kicks)._candidates(stats, topology, None)] for kicks in (0, 4)}
    assert not any(none.better_than(kicked) for none, kicked in zip(scores[0], scores[4]))
    assert any(kicked.better_than(none) for none, kicked in zip(scores[0], scores[4]))
    policy = AffinityPolicy(perturbations=2)
    assert policy.place(stats, topology) == policy.place(stats, topology)
    current = AffinityPolicy().place(stats, topology)
    assert dataclasses.replace(policy, max_moves=0).place(stats, topology, current) == current


def test_a_kick_swaps_only_as_refinement_may() -> None:
    """`partition.perturbed`: every GPU keeps its slot count, no expert lands twice on a GPU, no GPU
    loses its last replica of a replicated expert, the same generator state gives the same kick, and a
    layout that allows no swap stays as it is."""
    expert_of_vertex = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7])  # expert 0 replicated, on GPUs 0 and 1
    gpu_of_vertex = np.array([0, 1, 0, 0, 1, 1, 2, 2, 2])
    for seed in range(20):
        kicked = perturbed(expert_of_vertex, gpu_of_vertex, 3, 4, np.random.default_rng(seed))
        assert np.bincount(kicked, minlength=3).tolist() == [3, 3, 3]
        pairs = kicked * 8 + expert_of_vertex
        assert len(np.unique(pairs)) == len(pairs)
        assert len(set(kicked[expert_of_vertex == 0].tolist())) == 2
        assert set(kicked[expert_of_vertex == 0].tolist()) <= {0, 1, 2}
        same = perturbed(expert_of_vertex, gpu_of_vertex, 3, 4, np.random.default_rng(seed))
        assert same.tolist() == kicked.tolist()
    assert not all(np.array_equal(perturbed(expert_of_vertex, gpu_of_vertex, 3, 1, np.random.default_rng(seed)),
                                  gpu_of_vertex) for seed in range(5))
    stuck = np.array([0, 0])  # one expert on both GPUs: no swap may move it
    assert perturbed(stuck, np.array([0, 1]), 2, 3, np.random.default_rng(0)).tolist() == [0, 1]


def test_starts_refine_distinct_partitions(synthetic) -> None:
    """A layer's starts are different METIS partitions, the first from the policy's seed: METIS gives
    seeds 0 and 1 the same partition, which would make a start repeat another's work. A graph with
    one partition (no co-activation) gets one start."""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    partitions = affinity.distinct_partitions(stats.pair_counts[0], stats.load[0], topology, 0, 4)
    assert len(partitions) == 4
    assert all(not np.array_equal(partitions[i], partitions[j]) for i in range(4) for j in range(i))
    assert np.array_equal(partitions[0], graph_partition(stats.pair_counts[0], stats.load[0], topology, 0))
    no_pairs = np.zeros_like(stats.pair_counts[0])
    assert len(affinity.distinct_partitions(no_pairs, stats.load[0], topology, 0, 4)) == 1


def test_groups_too_small_to_partition_deal_their_experts_by_load() -> None:
    """Fewer than two experts per part are not partitioned: busiest first (ties to the lower id),
    one per part in turn, over the nodes and then over each node's GPUs, as DeepSeek-V3's 8 experts
    per node of 32 are. 12 experts on 8 nodes of 2 GPUs: node r % 8 for the r-th busiest, and on a
    node its busier expert on the first GPU."""
    load = np.array([5.0, 1.0, 3.0, 3.0, 8.0, 2.0, 4.0, 4.0, 6.0, 0.5, 7.0, 9.0])
    pairs = np.ones((12, 12)) - np.eye(12)
    gpu = graph_partition(pairs, load, Topology(8, 2, 2), 0)
    # By load: 11, 4, 10, 8, 0, 6, 7, 2 on nodes 0-7 (GPU 0), then 3, 5, 1, 9 on nodes 0-3 (GPU 1).
    assert gpu.tolist() == [8, 5, 14, 1, 2, 3, 10, 12, 6, 7, 4, 0]


def test_cluster_prices_remote_nodes_and_moves_the_plan(synthetic) -> None:
    """Time as the objective: a slower network prices a remote node higher, so the same statistics
    give another plan; the same options give the same plan. (Whether the pricier plan has fewer
    remote nodes is a measurement, not an invariant: docs/placement.md.)"""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    fast, slow = PRESETS["h100"], PRESETS["h100-100gbit"]
    assert fast.remote_node_weight == pytest.approx(8.0)
    assert slow.remote_node_weight == pytest.approx(35.0)
    assert AffinityPolicy(cluster=slow).remote_node_weight == 35.0
    assert AffinityPolicy().remote_node_weight == 1.0
    on_fast = AffinityPolicy(cluster=fast).place(stats, topology)
    on_slow = AffinityPolicy(cluster=slow).place(stats, topology)
    assert on_fast != on_slow
    assert AffinityPolicy(cluster=slow).place(stats, topology) == on_slow


def _two_windows() -> tuple[np.ndarray, LayerRows]:
    """Four experts, one token row each, 10 tokens apiece over two windows that load them crosswise:
    window 0 only experts 0 and 3, window 1 only 1 and 2. Summed, every expert carries 10."""
    window_load = np.array([[10.0, 0.0, 0.0, 10.0], [0.0, 10.0, 10.0, 0.0]])
    rows = LayerRows(np.arange(4)[:, None], np.full(4, 10.0), np.full(4, -1), np.zeros(4))
    return window_load, rows


def test_per_window_cap_sees_what_the_sum_hides() -> None:
    """{0, 3} | {1, 2} on two GPUs is balanced on the sum but puts a whole window on one GPU: 10
    picks over the cap (the window's mean, 10) in each window; {0, 1} | {2, 3} is balanced in both."""
    window_load, _ = _two_windows()
    cap = LoadCap.per_window(window_load, num_gpus=2, max_imbalance=0.0)
    np.testing.assert_allclose(cap.limit, [10.0, 10.0])
    experts, vertex_load = np.arange(4), np.full(4, 10.0)
    assert cap.overload(vertex_load, experts, np.array([0, 1, 1, 0]), 2) == pytest.approx(20.0)
    assert cap.overload(vertex_load, experts, np.array([0, 0, 1, 1]), 2) == 0.0
    summed = LoadCap.single(20.0, 4)
    assert summed.overload(vertex_load, experts, np.array([0, 1, 1, 0]), 2) == 0.0


def test_refinement_balances_every_window() -> None:
    window_load, rows = _two_windows()
    topology = Topology(1, 2, 2)
    cap = LoadCap.per_window(window_load, topology.num_gpus, 0.0)
    path = refine(rows, np.arange(4), np.array([0, 1, 1, 0]), topology, cap, max_rounds=8)
    gpus, result = path[-1]
    assert result.overload == 0.0
    assert gpus[0] != gpus[3] and gpus[1] != gpus[2]


def test_priced_overload_trades_with_cost() -> None:
    """With a price, a layout is better when cost + price x overload is lower; without, overload first."""
    low_cost = Score(overload=1.0, cost=10.0, pins=np.zeros((0, 1), dtype=np.int64), vertex_load=np.zeros(0))
    balanced = Score(overload=0.0, cost=20.0, pins=low_cost.pins, vertex_load=low_cost.vertex_load)
    assert balanced.better_than(low_cost)
    assert low_cost.better_than(balanced, price=5.0)
    assert balanced.better_than(low_cost, price=20.0)


def test_time_objective_moves_the_plan_with_the_cluster(synthetic) -> None:
    """Given a cluster, overload is priced at its exchange rate of compute for NVLink traffic
    (`ClusterSpec.overload_weight`); on GPUs 8x slower a pick of overload costs 8x as much locality."""
    stats, _, _ = synthetic
    topology = Topology(1, 4, 9)
    fast = PRESETS["h100"]
    slow_gpus = dataclasses.replace(fast, name="slow", gpu_flops=fast.gpu_flops / 8)
    assert AffinityPolicy().overload_price(topology) == np.inf
    assert AffinityPolicy(cluster=slow_gpus).overload_price(topology) == pytest.approx(
        8 * AffinityPolicy(cluster=fast).overload_price(topology))
    plans = [AffinityPolicy(cluster=cluster).place(stats, topology) for cluster in (None, fast, slow_gpus)]
    assert plans[0] != plans[1] and plans[1] != plans[2]
    assert AffinityPolicy(cluster=fast).place(stats, topology) == plans[1]


def test_plans_hold_on_each_window_and_stay_deterministic() -> None:
    """Planned on three decayed windows of a drifting trace, the plan is valid and the same each time,
    and budget 0 keeps the current plan."""
    trace = synthetic_trace(4, 32, 4, 3000, seq_len=100, skew=1.0, seed=3)
    stats = decayed_stats([RoutingStats.from_trace(w) for w in split_windows(trace, 1000)], 0.5)
    topology = Topology(2, 2, 9)
    policy = AffinityPolicy(cluster=PRESETS["h100"])
    plan = policy.place(stats, topology)
    _assert_valid(plan, stats, topology)
    assert policy.place(stats, topology) == plan
    current = EplbPolicy().place(stats, topology)
    kept = AffinityPolicy(cluster=PRESETS["h100"], max_moves=0).place(stats, topology, current)
    np.testing.assert_array_equal(kept.physical_to_logical, current.physical_to_logical)


def test_beats_eplb_on_held_out_tokens(synthetic) -> None:
    """Planned on the first half, measured on the second: fewer GPUs and nodes, a faster layer, and
    close to EPLB's balance (topic drift costs a placement that groups topics some balance)."""
    stats, _, test = synthetic
    topology = Topology(2, 2, 9)
    cluster = PRESETS["h100"]
    affinity = evaluate(AffinityPolicy().place(stats, topology), test, cluster)
    eplb = evaluate(EplbPolicy().place(stats, topology), test, cluster)
    assert affinity.gpus_per_token < 0.75 * eplb.gpus_per_token
    assert affinity.remote_nodes_per_token < 0.8 * eplb.remote_nodes_per_token
    assert affinity.balancedness >= eplb.balancedness - 0.04
    assert affinity.layer_time_s < eplb.layer_time_s


def test_load_only_stats_balance_like_eplb(synthetic) -> None:
    stats, _, _ = synthetic
    load_only = RoutingStats.from_load(stats.load)
    topology = Topology(2, 2, 9)
    plan = AffinityPolicy(max_imbalance=0.0).place(load_only, topology)
    _assert_valid(plan, load_only, topology)
    assert _even_split_balance(load_only.load, plan) >= _even_split_balance(
        load_only.load, EplbPolicy().place(load_only, topology)) - 0.02


def test_fast_path_above_the_work_bound(synthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers with more rows x slots than `_REFINED_WORK` (every DeepSeek-V3-sized one) are seeded
    under the cap without refinement, still with exactly S slots per GPU."""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    refined = AffinityPolicy().place(stats, topology)
    monkeypatch.setattr(affinity, "_REFINED_WORK", 0)
    seeded = AffinityPolicy().place(stats, topology)
    _assert_valid(seeded, stats, topology)
    assert (seeded.replica_count == refined.replica_count).all()
    assert seeded != refined


def test_sampled_refinement_above_the_work_bound(synthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `sampled_rounds`, layers above the work bound are refined on sampled rows among a subset of
    vertices a round: the plan stays valid and deterministic, uses fewer GPUs per token on its window
    than the seeding alone, and budget 0 still returns the current plan."""
    stats, train, _ = synthetic
    topology = Topology(2, 2, 9)
    monkeypatch.setattr(affinity, "_REFINED_WORK", 0)  # every layer: rows sampled to _SAMPLED_MIN_ROWS
    monkeypatch.setattr(affinity, "_SWAP_VERTICES", 16)  # of 36 vertices
    seeded = AffinityPolicy().place(stats, topology)
    refined = AffinityPolicy(sampled_rounds=8).place(stats, topology)
    _assert_valid(refined, stats, topology)
    assert AffinityPolicy(sampled_rounds=8).place(stats, topology) == refined
    assert evaluate(refined, train).gpus_per_token < evaluate(seeded, train).gpus_per_token
    assert AffinityPolicy(sampled_rounds=8, max_moves=0).place(stats, topology, seeded) == seeded


@pytest.mark.parametrize("processes", [2, 3, 8])
def test_forked_layers_plan_the_same(synthetic, monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    """Layers planned in forked processes (every `processes`-th layer in one, lockstep seeding per
    process) give the serial plan byte for byte: refined, sampled, and under a migration budget,
    where budget 0 still returns the current plan."""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    current = EplbPolicy().place(stats, topology)
    for options in ({}, {"max_moves": 20}):
        serial = AffinityPolicy(**options).place(stats, topology, current)
        forked = AffinityPolicy(processes=processes, **options).place(stats, topology, current)
        assert forked.physical_to_logical.tobytes() == serial.physical_to_logical.tobytes()
    assert AffinityPolicy(processes=processes, max_moves=0).place(stats, topology, current) == current
    monkeypatch.setattr(affinity, "_REFINED_WORK", 0)  # every layer seeded under the cap, then sampled rounds
    monkeypatch.setattr(affinity, "_SWAP_VERTICES", 16)
    serial = AffinityPolicy(sampled_rounds=2).place(stats, topology)
    forked = AffinityPolicy(sampled_rounds=2, processes=processes).place(stats, topology)
    assert forked.physical_to_logical.tobytes() == serial.physical_to_logical.tobytes()


def test_process_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """`processes=None` forks one process per CPU, at most one per layer, where the work pays for it."""
    stats = RoutingStats.from_trace(synthetic_trace(3, 16, 2, 512, seed=0))
    topology = Topology(1, 2, 8)
    assert AffinityPolicy().process_count(stats, topology) == 1
    assert AffinityPolicy(processes=8).process_count(stats, topology) == 3  # at most one per layer
    assert AffinityPolicy(processes=None).process_count(stats, topology) == 1  # too small to pay for a fork
    work = AffinityPolicy(starts=1, perturbations=0)._planning_work(stats, topology)
    assert AffinityPolicy(starts=4, perturbations=0)._planning_work(stats, topology) == 4 * work  # once per start
    assert AffinityPolicy(starts=1, perturbations=2)._planning_work(stats, topology) == 2 * work  # a kick: half
    monkeypatch.setattr(affinity, "_FORKED_WORK", 1)
    assert AffinityPolicy(processes=None).process_count(stats, topology) == min(3, usable_cpus())


def test_a_failing_forked_piece_raises_here() -> None:
    def fail_on_odd(piece: int) -> int:
        if piece % 2:
            raise PlacementError(f"piece {piece}")
        return piece
    assert map_forked(fail_on_odd, [0, 2, 4]) == [0, 2, 4]
    with pytest.raises(PlacementError, match="piece 1"):
        map_forked(fail_on_odd, [0, 1])


def test_sampled_rows_keep_the_totals(synthetic) -> None:
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    rows = layer_rows(stats, 0, topology, 1.5, np.random.default_rng(0))
    assert sampled_rows(rows, len(rows.sets), np.random.default_rng(1)) is rows
    sample = sampled_rows(rows, 100, np.random.default_rng(1))
    assert sample.sampled and len(sample.sets) <= 100
    assert sample.weight.sum() == pytest.approx(rows.weight.sum())
    assert sample.node_weight == pytest.approx(1.5 * sample.weight)  # the node price per token is kept
    assert sampled_rows(rows, 100, np.random.default_rng(1)).sets.tolist() == sample.sets.tolist()


@pytest.mark.parametrize("options, message", [
    pytest.param({"max_imbalance": -0.1}, "max_imbalance must be a non-negative number", id="imbalance"),
    pytest.param({"node_weight": "2"}, "node_weight must be a non-negative number", id="node-weight"),
    pytest.param({"max_moves": -1}, "max_moves must be a non-negative integer", id="moves"),
    pytest.param({"seed": 1.5}, "seed must be a non-negative integer", id="seed"),
    pytest.param({"sampled_rounds": -1}, "sampled_rounds must be a non-negative integer", id="rounds"),
    pytest.param({"perturbations": -1}, "perturbations must be a non-negative integer", id="perturbations"),
    pytest.param({"starts": 0}, "starts must be a positive integer", id="starts"),
    pytest.param({"processes": 0}, "processes must be a positive integer or None", id="processes"),
    pytest.param({"cluster": "h100"}, "cluster must be a ClusterSpec", id="cluster"),
    pytest.param({"cluster": PRESETS["h100"], "node_weight": 2.0}, "not both", id="cluster-and-weight"),
])
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        AffinityPolicy(**options)


def test_current_plan_of_another_topology_is_rejected(synthetic) -> None:
    stats, _, _ = synthetic
    current = EplbPolicy().place(stats, Topology(1, 4, 8))
    with pytest.raises(PlacementError, match="current plan is for 1 node"):
        AffinityPolicy(max_moves=4).place(stats, Topology(2, 2, 8), current)


# --- the migration budget ---------------------------------------------------------------------------

def test_budget_zero_returns_the_current_plan(synthetic) -> None:
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    current = EplbPolicy().place(stats, topology)
    assert AffinityPolicy(max_moves=0).place(stats, topology, current) == current


@pytest.mark.parametrize("topology", [
    pytest.param(Topology(1, 4, 8), id="1x4x8"),
    pytest.param(Topology(2, 2, 9), id="2x2x9"),
])
def test_budget_is_respected(synthetic, topology: Topology) -> None:
    stats, _, _ = synthetic
    current = EplbPolicy().place(stats, topology)
    for budget in (3, 20, 100):
        plan = AffinityPolicy(max_moves=budget).place(stats, topology, current)
        _assert_valid(plan, stats, topology)
        assert plan_migration(current, plan).num_copies <= budget


def test_larger_budget_is_never_worse_on_the_training_window(synthetic) -> None:
    """One node, no spare slots: the policy's model of its training window is exact, so the evaluated
    (overload, GPUs per token) never gets worse as the budget grows."""
    stats, train, _ = synthetic
    topology = Topology(1, 4, 8)
    current = EplbPolicy().place(stats, topology)
    cap = stats.load.sum(axis=1, keepdims=True) / topology.num_gpus * 1.02
    outcomes = []
    for budget in (0, 2, 8, 24, 64, 400):
        result = evaluate(AffinityPolicy(max_moves=budget).place(stats, topology, current), train)
        overload = float(np.maximum(result.gpu_load - cap, 0).sum())
        outcomes.append((round(overload, 6), round(result.gpus_per_token, 9)))
    assert outcomes == sorted(outcomes, reverse=True)
    assert outcomes[-1] < outcomes[0]


def test_allocate_takes_the_best_steps_per_copy() -> None:
    moves = [np.array([0, 2, 4]), np.array([0, 1, 3])]
    values = [np.array([0.0, 10.0, 12.0]), np.array([0.0, 4.0, 9.0])]
    assert allocate(moves, values, 0) == [0, 0]
    assert allocate(moves, values, 2) == [1, 0]  # 5 per copy beats 4
    assert allocate(moves, values, 5) == [1, 2]
    assert allocate(moves, values, 100) == [2, 2]


def test_relabel_gpus_keeps_experts_in_place() -> None:
    topology = Topology(2, 2, 2)
    current = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    proposed = current[[3, 2, 1, 0]]  # the same GPUs, renumbered
    assert copies_needed(current, proposed, 8) == 8
    assert relabel_gpus(current, proposed, topology).tolist() == current.tolist()


# --- building blocks ----------------------------------------------------------------------------------

def test_replica_counts_follow_eplb() -> None:
    assert replica_counts(np.array([10.0, 4, 2]), 5, 3).tolist() == [3, 1, 1]
    assert replica_counts(np.array([10.0, 4, 2]), 5, 2).tolist() == [2, 2, 1]
    assert replica_counts(np.array([1.0, 1, 1]), 4, 3).tolist() == [2, 1, 1]  # ties: lowest id


def test_swap_deltas_match_recounting(synthetic) -> None:
    """The predicted cost change of a swap equals the cost recounted after it, picks kept pinned."""
    stats, _, _ = synthetic
    topology = Topology(2, 2, 9)
    rng = np.random.default_rng(0)
    rows = layer_rows(stats, 0, topology, 1.5, rng)
    replicas = replica_counts(stats.load[0], topology.num_slots, topology.num_gpus)
    expert_of_vertex = np.repeat(np.arange(stats.num_experts), replicas)
    gpu_of_vertex = rng.permutation(topology.gpu_of_slot)
    pins = score(rows, expert_vertices(expert_of_vertex, stats.num_experts), gpu_of_vertex, topology,
                 LoadCap.single(np.inf, stats.num_experts)).pins
    delta = swap_deltas(rows, pins, gpu_of_vertex, topology)

    def cost(layout: np.ndarray) -> float:
        gpus = np.sort(layout[pins], axis=1)
        nodes = np.sort(np.concatenate([topology.node_of_gpu[gpus], rows.home[:, None]], axis=1), axis=1)
        distinct_gpus = 1 + (gpus[:, 1:] != gpus[:, :-1]).sum(axis=1)
        remote_nodes = (nodes[:, 1:] != nodes[:, :-1]).sum(axis=1)  # distinct nodes less the home one
        return float(rows.weight @ distinct_gpus + rows.node_weight @ remote_nodes)

    base = cost(gpu_of_vertex)
    for a, b in rng.integers(topology.num_slots, size=(40, 2)):
        if gpu_of_vertex[a] == gpu_of_vertex[b]:  # not a swap the refinement makes
            continue
        swapped = gpu_of_vertex.copy()
        swapped[[a, b]] = gpu_of_vertex[[b, a]]
        assert delta[a, b] == pytest.approx(cost(swapped) - base, abs=1e-6)
    subset = np.sort(rng.choice(topology.num_slots, 12, replace=False))  # a round among some vertices
    assert swap_deltas(rows, pins, gpu_of_vertex, topology, subset) == pytest.approx(delta[np.ix_(subset, subset)])


def test_no_swap_strands_a_gpu_without_a_replicated_expert() -> None:
    """Experts 0 and 1 have two replicas each (vertices 0-1 and 2-3), 2-5 one. GPU 0 holds vertex 0,
    the only replica of a replicated expert on it; a swap moving it off for a single-replica expert's
    vertex would strand GPU 0 (the rule's repair could no longer relieve it). A swap for another
    replicated expert's vertex, or of a GPU's second such replica, is allowed."""
    experts = np.array([0, 0, 1, 1, 2, 3, 4, 5])
    gpus = np.array([0, 1, 1, 2, 0, 2, 1, 0])  # GPU 0: vertices 0, 4, 7; GPU 1: 1, 2, 6; GPU 2: 3, 5
    assert replicated(experts).tolist() == [True] * 4 + [False] * 4
    stranding = stranding_swaps(experts, gpus, 3, np.arange(8))
    assert stranding[0, 6] and stranding[6, 0] and stranding[0, 5]  # vertex 0 away for a single one
    assert not stranding[0, 3]  # for expert 1's replica: GPU 0 keeps one
    assert not stranding[1, 4] and not stranding[2, 7]  # GPU 1 holds two, it keeps the other
    assert stranding[3, 4]  # vertex 3 is GPU 2's only one


def test_replica_components_link_the_gpus_of_each_replicated_expert() -> None:
    """Expert 0 on GPUs 0 and 1, expert 1 on GPUs 1 and 2, experts 2-5 once: GPUs 0-2 form one
    component and GPU 3 one of its own. Moving expert 1's replica from GPU 2 to GPU 3 joins GPU 3
    and leaves GPU 2 alone; moving expert 0's from GPU 0 to GPU 2 leaves GPU 0 alone."""
    experts = np.array([0, 0, 1, 1, 2, 3, 4, 5])
    gpus = np.array([0, 1, 1, 2, 0, 2, 3, 3])
    labels = replica_components(experts, gpus, 4)
    assert labels.tolist() == [0, 0, 0, 3]
    assert component_count(labels) == 2
    moved = replica_components(experts, gpus, 4, np.array([[3, 3], [0, 2]]))
    assert moved.tolist() == [[0, 0, 2, 0], [0, 1, 1, 3]]
    assert component_count(moved).tolist() == [2, 3]


def test_connect_replicas_joins_the_replica_graph_and_refinement_keeps_every_gpu_holding_one(synthetic) -> None:
    """From a seeding that puts all replicas of replicated experts on GPUs 0 and 1 (three components:
    GPUs 0-1, GPU 2, GPU 3), two swaps join them into one, every GPU then holds a replica, and no
    refined swap takes a GPU's last one away."""
    stats, _, _ = synthetic
    topology = Topology(1, 4, 9)
    rows = layer_rows(stats, 0, topology, 1.0, np.random.default_rng(0))
    replicas = replica_counts(stats.load[0], topology.num_slots, topology.num_gpus)
    experts = np.repeat(np.arange(stats.num_experts), replicas)
    spare = replicated(experts)
    assert topology.num_gpus <= spare.sum() <= 2 * topology.slots_per_gpu
    gpus = np.empty(len(experts), dtype=np.int64)  # replicas of replicated experts on GPUs 0 and 1 only
    gpus[spare] = np.arange(spare.sum()) % 2
    gpus[np.nonzero(~spare)[0]] = np.repeat(np.arange(topology.num_gpus), topology.slots_per_gpu
                                            - np.bincount(gpus[spare], minlength=topology.num_gpus))
    assert np.bincount(gpus, minlength=topology.num_gpus).tolist() == [topology.slots_per_gpu] * topology.num_gpus
    assert component_count(replica_components(experts, gpus, topology.num_gpus)) == 3
    cap = LoadCap.single(np.inf, stats.num_experts)
    joined = connect_replicas(rows, experts, gpus, topology, cap)
    assert np.bincount(joined, minlength=topology.num_gpus).tolist() == [topology.slots_per_gpu] * topology.num_gpus
    assert component_count(replica_components(experts, joined, topology.num_gpus)) == 1
    assert (joined != gpus).sum() == 2 * 2  # one swap per join
    for gpu_of_vertex, _ in refine(rows, experts, joined, topology, cap, max_rounds=8):
        assert (np.bincount(gpu_of_vertex[spare], minlength=topology.num_gpus) >= 1).all()


def test_every_gpu_of_a_plan_holds_a_replicated_expert(synthetic) -> None:
    """With as many replicas of replicated experts as GPUs or more, every GPU of every refined layer
    holds one, so the rule's repair can relieve any GPU; without spare slots nothing is replicated."""
    stats, _, _ = synthetic
    for topology in (Topology(1, 4, 9), Topology(2, 2, 9)):
        plan = AffinityPolicy(cluster=PRESETS["h100"]).place(stats, topology)
        for layer in plan.physical_to_logical:
            held = np.bincount(topology.gpu_of_slot[replicated(layer)], minlength=topology.num_gpus)
            assert (held >= 1).all()


def test_route_sets_follows_the_rule() -> None:
    # Expert 0 has replicas on GPU 0 (vertex 0) and GPU 1 (vertex 3); expert 1 on GPU 0, expert 2 on GPU 1.
    vertices = np.array([[0, 3], [1, -1], [2, -1]])
    gpu_of_vertex = np.array([0, 0, 1, 1])
    sets = np.array([[0, 1], [0, 2], [0, 1], [0, 2]])
    pins, load = route_sets(sets, np.ones(4), np.zeros(4, dtype=np.int64), vertices, gpu_of_vertex,
                            np.zeros(2, dtype=np.int64))
    assert pins[:, 0].tolist() == [0, 3, 0, 3]  # each pick of expert 0 joins its partner's GPU
    assert load.tolist() == [2, 2, 2, 2]


def test_layers_scored_and_refined_together_match_one_at_a_time(synthetic) -> None:
    """`score_layers` routes many layers in one `route_sets` call and `refine_layers` runs their
    searches in lockstep; each layer gets what it gets alone, to the bit: with replicated experts of
    different replica counts per layer, home nodes, per-window caps and one layer's rows sampled."""
    stats, _, _ = synthetic
    topology = Topology(2, 4, 8)
    tables = EplbPolicy().place(stats, topology).physical_to_logical
    layouts, refinements = [], []
    for layer in range(4):
        rng = np.random.default_rng(layer)
        rows = layer_rows(stats, layer, topology, 1.5, rng)
        if layer == 3:
            rows = sampled_rows(rows, 64, rng)
        cap = LoadCap.per_window(stats.windows[:, layer], topology.num_gpus, 0.02)
        layouts.append(Layout(rows, expert_vertices(tables[layer], stats.num_experts), topology.gpu_of_slot, cap))
        refinements.append(Refinement(rows, tables[layer], topology.gpu_of_slot, cap, max_rounds=8))
    assert len({one.vertices.shape[1] for one in layouts}) > 1  # the layers' replica tables differ in width
    for together, layout in zip(score_layers(layouts, topology), layouts):
        alone = score(layout.rows, layout.vertices, layout.gpu_of_vertex, topology, layout.cap)
        assert (together.cost, together.overload) == (alone.cost, alone.overload)
        assert np.array_equal(together.pins, alone.pins) and np.array_equal(together.vertex_load, alone.vertex_load)
    paths = refine_layers(refinements, topology)
    assert any(len(path) > 2 for path in paths)
    for path, one in zip(paths, refinements):
        alone = refine(one.rows, one.expert_of_vertex, one.gpu_of_vertex, topology, one.cap, one.max_rounds)
        assert [(gpus.tolist(), result.cost, result.overload) for gpus, result in path] == [
            (gpus.tolist(), result.cost, result.overload) for gpus, result in alone]


# --- the targets of issue 6 on the real ESFT traces ---------------------------------------------------

# Measured misses, kept visible: 2 x 4 GPUs cannot get a token's experts onto one node often enough
# (mtkahypar's best balanced bisection of the training sets already leaves 0.78 remote nodes per token
# on intent, above the 0.74 target). Law's 9-slot cells keep EPLB's balance within 0.01 and miss the
# 25 % cut in GPUs per token this test asks of them, with one start and 8 kicks (2026-12-07 07:07 UTC;
# law 4 x 2 x 8's remote nodes, 0.749x, met since): 0.757x, 0.760x and 0.762x EPLB's.
# docs/placement.md has the window-by-window picture.
KNOWN_MISSES = {
    ("intent", 2, 4, 8): "remote nodes 0.828x EPLB's",
    ("intent", 2, 4, 9): "remote nodes 0.782x EPLB's",
    ("law", 2, 4, 8): "remote nodes 0.857x EPLB's",
    ("law", 2, 4, 9): "remote nodes 0.820x, and GPUs per token 0.760x EPLB's",
    ("law", 1, 8, 9): "GPUs per token 0.757x EPLB's",
    ("law", 4, 2, 9): "GPUs per token 0.762x EPLB's",
}


@pytest.mark.traces
@pytest.mark.parametrize("task", ["intent", "law"])
@pytest.mark.parametrize("num_nodes, gpus_per_node", [(1, 8), (2, 4), (4, 2)], ids=["1x8", "2x4", "4x2"])
@pytest.mark.parametrize("slots", [8, 9])
def test_issue_targets_on_esft(esft_path, task: str, num_nodes: int, gpus_per_node: int, slots: int,
                               request: pytest.FixtureRequest) -> None:
    miss = KNOWN_MISSES.get((task, num_nodes, gpus_per_node, slots))
    if miss:
        request.applymarker(pytest.mark.xfail(reason=f"measured miss: {miss}", strict=True))
    train, test = load_trace(esft_path(task)).split()
    stats = RoutingStats.from_trace(train)
    topology = Topology(num_nodes, gpus_per_node, slots)
    cluster = PRESETS["h100"]
    affinity = evaluate(AffinityPolicy().place(stats, topology), test, cluster)
    eplb = evaluate(EplbPolicy().place(stats, topology), test, cluster)
    assert affinity.balancedness >= eplb.balancedness - 0.02
    reduction = 0.15 if slots * topology.num_gpus == stats.num_experts else 0.25
    assert affinity.gpus_per_token <= (1 - reduction) * eplb.gpus_per_token
    if num_nodes > 1:
        assert affinity.remote_nodes_per_token <= 0.75 * eplb.remote_nodes_per_token
    assert affinity.layer_time_s < eplb.layer_time_s


def _even_split_balance(load: np.ndarray, plan: Plan) -> float:
    """vLLM's balancedness when each expert's load splits evenly over its replicas."""
    per_slot = np.take_along_axis(load / plan.replica_count, plan.physical_to_logical, axis=1)
    gpu = per_slot.reshape(plan.num_layers, plan.topology.num_gpus, -1).sum(axis=2)
    return float(gpu.mean(axis=1).sum() / gpu.max(axis=1).sum())

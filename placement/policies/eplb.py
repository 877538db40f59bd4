"""DeepSeek's expert-parallelism load balancer (EPLB), written from its published description.

Source: github.com/deepseek-ai/EPLB (README and `eplb.py`, MIT); vLLM's `DefaultEplbPolicy` is the
same algorithm. Hot experts get redundant replicas and the replicas are packed so that every GPU
carries about the same load:

1. pack expert groups onto nodes, balancing the nodes' load (experts of a group stay on one node,
   which suits DeepSeek-V3's group-limited routing);
2. inside each node, give the redundant slots one by one to the expert with the highest load per
   replica;
3. pack each node's replicas onto its GPUs, balancing the GPUs' load.

This hierarchical policy applies when the groups divide evenly over the nodes; otherwise the global
policy runs, which is the hierarchical one with one group and one node.

`rebalance_experts(..., distinct_per_gpu=False)` is the reference algorithm exactly (ties broken by
id, where the reference leaves their order to its sort routine); tests/test_eplb_parity.py checks its
per-GPU loads against vLLM's copy. The policy runs it with `distinct_per_gpu=True`, the one deliberate
difference: a GPU never gets two replicas of one expert (a `Plan` forbids it; the reference allows it,
and on real loads with redundant slots often does), so an expert gets at most one replica per GPU of
its node and the packing skips a GPU that already holds the expert. Where the reference repeats no
expert on a GPU, the two give the same plan loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from switchyard.placement.errors import PlacementError, positive_int
from switchyard.placement.plan import Plan
from switchyard.placement.policies.base import check_capacity
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology


@dataclass(frozen=True)
class EplbPolicy:
    """EPLB as a policy. `num_groups`: expert groups of the model's group-limited routing (1: none)."""

    num_groups: int = 1
    name: ClassVar[str] = "eplb"

    def __post_init__(self) -> None:
        positive_int("num_groups", self.num_groups)

    def place(self, stats: RoutingStats, topology: Topology, current: Plan | None = None) -> Plan:
        """Plan from the load alone; `current` is ignored (slot alignment is `migration`'s job)."""
        check_capacity(stats.num_experts, topology)
        physical_to_logical = rebalance_experts(
            stats.load, topology.num_slots, self.num_groups, topology.num_nodes, topology.num_gpus
        )
        return Plan(physical_to_logical, topology, stats.num_experts)


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
    distinct_per_gpu: bool = True,
) -> np.ndarray:
    """The EPLB placement: the reference's entry point, with its arguments.

    weight: `[L, E]` float, non-negative load of each logical expert (tokens routed to it).
    num_replicas: P, slots per layer; a multiple of `num_gpus`, at least E.
    num_groups: expert groups (contiguous blocks of E / num_groups experts); must divide E.
    num_nodes: N; `num_gpus` must be a multiple of it.
    num_gpus: G.
    distinct_per_gpu: keep replicas of one expert on different GPUs (False: the reference exactly).
    Returns physical_to_logical: `[L, P]` int64, the logical expert of each slot; slot p lives on
    GPU p // (P / G); with `distinct_per_gpu`, no GPU holds an expert twice.
    """
    weight = _check_weight(weight)
    for name, value in (("num_replicas", num_replicas), ("num_groups", num_groups),
                        ("num_nodes", num_nodes), ("num_gpus", num_gpus)):
        positive_int(name, value)
    num_layers, num_experts = weight.shape
    if num_experts % num_groups:
        raise PlacementError(f"num_groups={num_groups} does not divide the {num_experts} experts")
    if num_gpus % num_nodes:
        raise PlacementError(f"num_gpus={num_gpus} is not a multiple of num_nodes={num_nodes}")
    if num_replicas % num_gpus or num_replicas < num_experts:
        raise PlacementError(
            f"num_replicas={num_replicas} must be a multiple of num_gpus={num_gpus} and at least "
            f"the {num_experts} experts"
        )
    if num_groups % num_nodes:
        num_groups, num_nodes = 1, 1  # the global policy
    group_size = num_experts // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_experts // num_nodes
    slots_per_node = num_replicas // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots_per_gpu = num_replicas // num_gpus
    if distinct_per_gpu and slots_per_gpu > experts_per_node:
        raise PlacementError(
            f"{slots_per_gpu} slots per GPU exceed the {experts_per_node} experts each node holds, so a "
            f"GPU would hold one twice; use at most {experts_per_node} slots per GPU, or num_groups=1 "
            "for the global policy"
        )

    # Step 1: pack groups onto nodes. [L, num_groups]
    group_load = weight.reshape(num_layers, num_groups, group_size).sum(axis=2)
    node_of_group, rank_of_group = balanced_packing(group_load, num_nodes)
    # [L, E]: each expert's position when experts are listed node by node, group by group.
    position = ((node_of_group * groups_per_node + rank_of_group)[:, :, None] * group_size
                + np.arange(group_size)).reshape(num_layers, num_experts)
    expert_at = _inverse(position)  # [L, E]: the expert at each position

    # Step 2: replicate inside each node; one row per (layer, node). [L * N, E / N]
    node_weight = np.take_along_axis(weight, expert_at, axis=1).reshape(-1, experts_per_node)
    max_replicas = gpus_per_node if distinct_per_gpu else slots_per_node
    local_of_replica, replica_count = replicate_experts(node_weight, slots_per_node, max_replicas)

    # Step 3: pack each node's replicas onto its GPUs. [L * N, P / N]
    replica_load = np.take_along_axis(node_weight / replica_count, local_of_replica, axis=1)
    labels = local_of_replica if distinct_per_gpu else None
    gpu_of_replica, rank_on_gpu = balanced_packing(replica_load, gpus_per_node, labels=labels)
    replica_at_slot = _inverse(gpu_of_replica * slots_per_gpu + rank_on_gpu)  # [L * N, P / N]

    # Back to global ids: local expert -> position (offset by the node) -> logical expert. [L, P]
    local_at_slot = np.take_along_axis(local_of_replica, replica_at_slot, axis=1)
    node_offset = (np.arange(num_nodes) * experts_per_node)[None, :, None]
    position_at_slot = (local_at_slot.reshape(num_layers, num_nodes, slots_per_node) + node_offset)
    return np.take_along_axis(expert_at, position_at_slot.reshape(num_layers, num_replicas), axis=1)


def balanced_packing(weight: np.ndarray, num_packs: int, labels: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pack n weighted items into `num_packs` packs of exactly n / num_packs items each, balancing weight.

    Greedy, heaviest item first (ties: lower label, then lower index first) into the lightest pack
    with room (ties: lower pack). With `labels`, a pack never takes two items of one label (see
    `_pack_row`); ordering ties by label keeps the replicas of one expert together, so they spread.

    weight: `[X, n]` float, the weight of each item (one packing problem per row).
    labels: `[X, n]` int64 in `[0, n)`, at most num_packs items per label; None when all are distinct.
    Returns pack_index: `[X, n]` int64, the pack of each item; rank_in_pack: `[X, n]` int64, the
    item's place in its pack.
    """
    num_rows, num_items = weight.shape
    assert num_items % num_packs == 0, "items must divide evenly over the packs"
    if num_items == num_packs:  # one item per pack: keep the order, as the reference does
        pack_index = np.tile(np.arange(num_items, dtype=np.int64), (num_rows, 1))
        return pack_index, np.zeros_like(pack_index)
    if labels is None:
        labels = np.tile(np.arange(num_items, dtype=np.int64), (num_rows, 1))
    order = np.lexsort((labels, -weight), axis=1)  # [X, n]: by weight descending, then label
    packed = [_pack_row(weight[row], labels[row], order[row], num_packs) for row in range(num_rows)]
    pack_index, rank_in_pack = (np.stack(arrays) for arrays in zip(*packed))
    return pack_index, rank_in_pack


def _pack_row(weight: np.ndarray, labels: np.ndarray, order: np.ndarray, num_packs: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """One row of `balanced_packing`: `[n]` weight, labels and processing order in; `[n]` pack, rank out.

    When every pack with room already holds the item's label (the reference would repeat it there),
    the item goes instead into a full pack p lacking the label, and p hands the lightest open pack q
    the item closest in weight whose label q lacks. Such an item exists: p holds n / num_packs
    distinct labels, q fewer.
    """
    num_items = len(weight)
    items_per_pack = num_items // num_packs
    pack_index = np.full(num_items, -1, dtype=np.int64)
    rank_in_pack = np.full(num_items, -1, dtype=np.int64)
    pack_weight = np.zeros(num_packs)
    pack_items = np.zeros(num_packs, dtype=np.int64)
    holds = np.zeros((num_packs, num_items), dtype=bool)  # [num_packs, n]: labels present in each pack
    for item in order:
        label = labels[item]
        has_room = pack_items < items_per_pack
        allowed = has_room & ~holds[:, label]
        if allowed.any():
            pack = int(np.argmin(np.where(allowed, pack_weight, np.inf)))
            rank = pack_items[pack]
        else:
            open_pack = int(np.argmin(np.where(has_room, pack_weight, np.inf)))
            placed = pack_index >= 0
            movable = placed & ~holds[np.where(placed, pack_index, 0), label] & ~holds[open_pack, labels]
            moved = int(np.argmin(np.where(movable, np.abs(weight - weight[item]), np.inf)))
            assert movable[moved], "a full pack lacking the label has an item the open pack can take"
            pack, rank = pack_index[moved], rank_in_pack[moved]
            pack_weight[pack] -= weight[moved]
            pack_items[pack] -= 1
            holds[pack, labels[moved]] = False
            pack_index[moved], rank_in_pack[moved] = open_pack, pack_items[open_pack]
            pack_weight[open_pack] += weight[moved]
            pack_items[open_pack] += 1
            holds[open_pack, labels[moved]] = True
        pack_index[item], rank_in_pack[item] = pack, rank
        pack_weight[pack] += weight[item]
        pack_items[pack] += 1
        holds[pack, label] = True
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_replicas: int, max_replicas: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Give `num_replicas - n` redundant replicas to n experts, minimising the largest load per replica.

    Each redundant replica goes to the expert with the highest load per replica (ties: lower id) among
    those with fewer than `max_replicas` replicas.

    weight: `[X, n]` float, the load of each expert (one problem per row).
    num_replicas: replicas per row, at least n and at most n * max_replicas.
    Returns replica_to_expert: `[X, num_replicas]` int64 (the first n are experts 0..n-1 in order);
    replica_count: `[X, n]` int64.
    """
    num_rows, num_experts = weight.shape
    assert num_experts <= num_replicas <= num_experts * max_replicas, "replica count out of range"
    replica_to_expert = np.zeros((num_rows, num_replicas), dtype=np.int64)
    replica_to_expert[:, :num_experts] = np.arange(num_experts)
    replica_count = np.ones((num_rows, num_experts), dtype=np.int64)
    rows = np.arange(num_rows)
    for replica in range(num_experts, num_replicas):
        per_replica = np.where(replica_count < max_replicas, weight / replica_count, -np.inf)
        expert = np.argmax(per_replica, axis=1)
        replica_to_expert[:, replica] = expert
        replica_count[rows, expert] += 1
    return replica_to_expert, replica_count


def _inverse(permutation: np.ndarray) -> np.ndarray:
    """`[X, n]` int64: the inverse of each row's permutation."""
    inverse = np.empty_like(permutation)
    np.put_along_axis(inverse, permutation, np.arange(permutation.shape[1]), axis=1)
    return inverse


def _check_weight(weight: np.ndarray) -> np.ndarray:
    """`weight` as `[L, E]` float64, or `PlacementError` naming what is wrong with it."""
    array = np.asarray(weight, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise PlacementError(
            f"the load must be a non-empty 2-D [layers, experts] array, got shape {array.shape}"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise PlacementError("the load must be finite and non-negative")
    return array

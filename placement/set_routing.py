"""The replica-choice rule applied to weighted top-k sets: what a planner can predict from statistics.

`routing.assign_slots` routes real tokens one by one. A planner only has `RoutingStats`: the distinct
top-k sets of a layer and how many tokens picked each, without token order or top-k order. This module
applies the same rule to those sets so that a candidate placement can be scored (GPUs per token, nodes
per token, load of every replica) many times while it is being optimised:

1. A pick of an expert with one replica goes to it.
2. Picks of replicated experts are resolved column by column (a set's experts in ascending id, the
   stand-in for top-k order). Each goes to the best tier of the expert's replicas: (a) on a GPU the
   set already uses, (b) on the set's home node, (c) any. Within the tier, the runtime gives each
   token to the replica with the fewest tokens so far; with many tokens that evens the replicas out,
   so here the tier's picks of one column are spread over its replicas by water-filling: each
   replica receives what brings the lowest ones up to a common level. Picks are handed out in row
   order by cumulative weight, so a set with weight w may be given whole to one replica.

The result is exact for single-replica experts and, for replicated ones, the expected outcome of the
rule when tokens arrive in random order. It models the "replica" balance of the rule family
(`routing.ReplicaRule`) for every rule: the runtime's default, "gpu-repair", evens the GPUs at least
as well on the same layout, while water-filling the GPUs' loads instead over-promised balance to the
planner (ESFT, half/half, 9 slots: intent 1 x 8 planned to 0.952 and served 0.947, against 0.974
and 0.972 when planned with this model), and so did a load model of the repair (docs/placement.md).
Vectorised per column: a handful of numpy calls per column, over flat arrays of each pick's replicas
(no table as wide as the busiest expert's), for as many layers as a call holds (`partition.score_layers`).
"""

from __future__ import annotations

import numpy as np

_SAME_GPU, _HOME_NODE, _ANYWHERE = 0, 1, 2
# Fixed odd 31-bit multipliers for hashing which replicas of an expert are eligible (one per replica
# position; an expert has at most G replicas). Sums of at most 2**16 of them stay far below 2**63.
_HASH = np.random.default_rng(20240531).integers(1, 1 << 31, size=1 << 16) | 1


def route_sets(sets: np.ndarray, weight: np.ndarray, home: np.ndarray, expert_vertices: np.ndarray,
               gpu_of_vertex: np.ndarray, node_of_gpu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The replica (vertex) every pick of every set goes to, and each replica's load.

    sets: `[M, k]` int64 expert ids of each row (a top-k set), distinct within a row.
    weight: `[M]` float64 tokens behind each row.
    home: `[M]` int64 home node of each row, or -1 where unknown (then tier (b) never applies).
    expert_vertices: `[E, R]` int64 the vertices (replicas) of each expert, -1 padded; every expert
        has at least one.
    gpu_of_vertex: `[V]` int64 the GPU of every vertex. node_of_gpu: `[G]` int64.
    Returns pins `[M, k]` int64 (the vertex serving each pick) and vertex_load `[V]` float64 (the
    tokens each vertex serves).

    Rows whose experts have no vertex in common are routed independently, to the bit: a call may hold
    many layers, their experts and vertices numbered apart (`partition.score_layers`).
    """
    num_rows, top_k = sets.shape
    num_vertices, num_gpus = len(gpu_of_vertex), len(node_of_gpu)
    replicas = (expert_vertices >= 0).sum(axis=1)  # [E]
    pins = expert_vertices[sets, 0]  # [M, k] first replica: final for single-replica experts
    replicated = replicas[sets] > 1  # [M, k]
    row_weight = np.broadcast_to(weight[:, None], sets.shape)
    load = np.bincount(pins[~replicated], weights=row_weight[~replicated],
                       minlength=num_vertices).astype(np.float64)
    if not replicated.any():
        return pins, load
    single_rows = np.nonzero(~replicated)[0]
    single_gpus = gpu_of_vertex[pins[~replicated]]
    # What does not change between the two passes, per column: the replicated picks, their replicas
    # and GPUs, and their tier apart from (a), which depends on the GPUs a row uses so far.
    columns = [_Column(column, rows, sets[rows, column], weight[rows], home[rows], expert_vertices, replicas,
                       gpu_of_vertex, node_of_gpu)
               for column in range(top_k) if len(rows := np.nonzero(replicated[:, column])[0])]
    # Pass 1 estimates the load of picks left a single eligible replica (tier a usually) over the
    # whole layer; pass 2 then spreads every other pick on top of that estimate, so that, as with the
    # runtime's least-loaded choice over the whole stream, replicas end up even where they can.
    forced_load = np.zeros(num_vertices)
    for final in (False, True):
        used = np.zeros((num_rows, num_gpus), dtype=bool)  # [M, G] GPUs each row uses so far
        used[single_rows, single_gpus] = True
        spread_load = np.zeros(num_vertices)
        for at, one in enumerate(columns):
            eligible, count = one.best_tier(used.ravel())  # [T], [n]
            forced = count == 1
            chosen = np.maximum.reduceat(np.where(eligible, one.vertex, -1), one.first)
            if not final:
                forced_load += np.bincount(chosen[forced], weights=one.weight[forced], minlength=num_vertices)
                if at == len(columns) - 1:  # pass 1 needs nothing of its last column but its forced load
                    break
            if not forced.all():
                spread = ~forced
                kept = eligible & spread[one.pick]
                chosen[spread] = _water_fill(np.cumsum(spread)[one.pick[kept]] - 1, one.vertex[kept],
                                             one.position[kept], one.weight[spread],
                                             load + forced_load + spread_load)
                spread_load += np.bincount(chosen[spread], weights=one.weight[spread], minlength=num_vertices)
            used[one.rows, gpu_of_vertex[chosen]] = True
            if final:
                pins[one.rows, one.column] = chosen
    load += np.bincount(pins[replicated], weights=row_weight[replicated], minlength=num_vertices)
    return pins, load


class _Column:
    """One column's replicated picks, as both passes of `route_sets` see them.

    rows: `[n]` the rows whose pick in this column is replicated; weight: `[n]` theirs. The picks'
    candidates are the replicas of the picked expert, as flat `[T]` arrays in pick order: `pick`,
    `vertex`, `position` (the replica's column in the expert's `[E, R]` vertices); `first`: `[n]`
    where each pick's run starts. Flat, since at DeepSeek-V3 scale a pick's expert has 16 replicas on
    average and the hottest ~80 (a `[n, R]` table would be mostly padding). Every candidate's tier but
    (a) (`_HOME_NODE` or `_ANYWHERE`) stays the same in both passes, so it is computed once, here, as
    is where to look up (a) in the flat `[M, G]` table of GPUs used.
    """

    def __init__(self, column: int, rows: np.ndarray, experts: np.ndarray, weight: np.ndarray, home: np.ndarray,
                 expert_vertices: np.ndarray, replicas: np.ndarray, gpu_of_vertex: np.ndarray,
                 node_of_gpu: np.ndarray) -> None:
        self.column, self.rows, self.weight = column, rows, weight
        count = replicas[experts]  # [n]
        self.first = np.cumsum(count) - count
        self.pick = np.repeat(np.arange(len(rows)), count)  # [T]
        self.position = _rank_in_run(self.first, self.pick)
        self.vertex = expert_vertices[experts[self.pick], self.position]
        gpu = gpu_of_vertex[self.vertex]
        self.tier = (node_of_gpu[gpu] != home[self.pick]).astype(np.int8) + _HOME_NODE  # _HOME_NODE or _ANYWHERE
        self.used_at = rows[self.pick] * len(node_of_gpu) + gpu

    def best_tier(self, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`[T]` whether each candidate is in its pick's best tier of the rule, and `[n]` how many of a
        pick's are; used: the `[M, G]` bool GPUs every row uses so far, raveled."""
        tier = np.where(used[self.used_at], _SAME_GPU, self.tier)
        best = tier == np.minimum.reduceat(tier, self.first)[self.pick]
        return best, np.add.reduceat(best, self.first)


def _water_fill(pick: np.ndarray, vertex: np.ndarray, position: np.ndarray, weight: np.ndarray,
                load: np.ndarray) -> np.ndarray:
    """`[n]` the vertex each pick goes to: picks with the same eligible replicas form a group, and
    each group's weight raises its least loaded replicas to a common level (least-loaded, in bulk).

    pick, vertex, position: `[T]` the replicas each pick may use, in pick order (at least one per
    pick), and their columns in the expert's `[E, R]` vertices; weight: `[n]` float64; load: `[V]`
    float64 the vertices' load so far.
    """
    num_picks = len(weight)
    first = np.flatnonzero(np.concatenate([[True], pick[1:] != pick[:-1]]))  # [n] each pick's run
    # Groups: picks with the same eligible replicas, found by a key: the largest eligible vertex
    # (which names the expert) and a 32-bit hash of which of its replicas are eligible. [n] group of
    # each pick.
    key = np.maximum.reduceat(vertex, first) * (1 << 32) + np.add.reduceat(_HASH[position], first) % (1 << 32)
    # np.unique(key, return_index=True, return_inverse=True) by hand, keeping its stable order of the
    # picks: it is also the picks grouped in row order, which the hand-out below needs.
    by_group = np.argsort(key, kind="stable")
    starts = np.empty(num_picks, dtype=bool)
    starts[0] = True
    sorted_key = key[by_group]
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=starts[1:])
    group_of_sorted = np.cumsum(starts) - 1  # [n] the group of each pick, in `by_group` order
    num_groups = int(group_of_sorted[-1]) + 1
    # [Q, R'] each group's eligible vertices in the order of their columns, from its first pick, -1
    # padded to the most any group has, not to the busiest expert's replicas (~80 columns at
    # DeepSeek-V3 scale): a replica a group may not use would take no share, and a cumulative sum only
    # adds 0 there, so leaving them out changes nothing.
    group_of_pick = np.empty(num_picks, dtype=np.int64)
    group_of_pick[by_group] = group_of_sorted
    representative = np.zeros(num_picks, dtype=bool)
    representative[by_group[starts]] = True
    shown = representative[pick]
    rank_in_pick = _rank_in_run(first, pick)
    width = int(rank_in_pick[shown].max()) + 1
    groups = np.full((num_groups, width), -1, dtype=np.int64)
    groups[group_of_pick[pick[shown]], rank_in_pick[shown]] = vertex[shown]
    # Each pick's weight and the weight before it in its group, summed in row order within the group
    # alone (a `[Q, largest group]` table), so that picks of other groups, in this call or not, never
    # change the rounding: a call on many layers at once (`partition.score_layers`) hands out as one
    # layer at a time does, to the bit.
    sorted_weight = weight[by_group]
    rank = _rank_in_run(np.flatnonzero(starts), group_of_sorted)
    weights = np.zeros((num_groups, int(rank.max()) + 1))
    weights[group_of_sorted, rank] = sorted_weight
    running = np.cumsum(weights, axis=1)
    total = running[:, -1]  # [Q]
    base = np.where(groups >= 0, load[np.maximum(groups, 0)], np.inf)  # [Q, R]
    # Water level: with replicas sorted by load, the first n of them reach level (total + sum) / n. The
    # padding (inf) sorts last; the level stops at or before the last finite load, so the infinite
    # partial sums after it are never read.
    sorted_base = np.sort(base, axis=1)
    filled = np.arange(1, width + 1)
    levels = (total[:, None] + np.cumsum(sorted_base, axis=1)) / filled  # [Q, R] level with n filled
    next_base = np.concatenate([sorted_base[:, 1:], np.full((num_groups, 1), np.inf)], axis=1)
    reached = levels <= next_base  # the level stops below the next replica's load
    level = levels[np.arange(num_groups), reached.argmax(axis=1)]  # first n where it stops
    share = np.maximum(level[:, None] - base, 0.0)  # [Q, R] weight each replica receives (padding: 0)
    weightless = np.flatnonzero(total <= 0)  # all picks of zero weight: the least loaded replica takes them
    share[weightless, np.argmin(base[weightless], axis=1)] = 1.0
    # Shares summed in order (a sequential sum adds nothing at a zero, wherever the unused replica
    # positions sit), each bound their cumulative share of the whole.
    cumulative = np.cumsum(share, axis=1)
    bounds = cumulative / cumulative[:, -1:]  # [Q, R'] cumulative share
    # The last replica with a share closes its group's range, whatever the rounding.
    last = width - 1 - np.argmax(share[:, ::-1] > 0, axis=1)
    # Hand picks out in row order within each group: the midpoint of a pick's weight in its group's
    # cumulative weight falls into one replica's share.
    # Computed in `by_group` order and put back in pick order at the end.
    midpoint = (running[group_of_sorted, rank] - sorted_weight / 2) / np.maximum(total[group_of_sorted], 1e-300)
    # The first replica past the midpoint, at most the group's last (the bounds never decrease).
    slot = np.minimum((bounds[group_of_sorted] <= midpoint[:, None]).sum(axis=1), last[group_of_sorted])
    chosen = np.empty(num_picks, dtype=groups.dtype)
    chosen[by_group] = groups[group_of_sorted, slot]
    return chosen


def _rank_in_run(first: np.ndarray, run: np.ndarray) -> np.ndarray:
    """`[T]` each element's place in its run, for elements in run order: `run` `[T]` the run of each,
    `first` `[runs]` where each run starts."""
    return np.arange(len(run)) - first[run]

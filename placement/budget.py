"""Spending a migration budget: how far each layer moves from the plan in service.

Moving an expert means copying its weights, so a rebalance is given a budget of copies (the
`Migration.num_copies` of the result). Each layer offers a chain of candidate layouts, from the
current one (0 copies) to better ones that need more copies; `allocate` picks one per layer so that
the total stays within the budget and the summed value is as high as a greedy can make it:

1. per layer, keep the candidates that beat every candidate needing fewer copies (a staircase), then
   its upper concave hull, so the value per copy falls from one step to the next;
2. merge the steps of all layers by value per copy and take them in that order until the next one
   no longer fits.

Taking a prefix of one fixed order makes the result monotone: a larger budget takes every step a
smaller one took, and each step raises its layer's value, so it never ends worse.
"""

from __future__ import annotations

import numpy as np

from switchyard.placement.topology import Topology


def allocate(moves: list[np.ndarray], values: list[np.ndarray], budget: int) -> list[int]:
    """The candidate chosen in every layer.

    moves: per layer `[C]` int64 copies each candidate needs; candidate 0 is the current layout
        (0 copies). values: per layer `[C]` float64, higher is better.
    Returns per layer the index of its chosen candidate; their moves sum to at most `budget`.
    """
    steps = []  # (value per copy, layer, position on the hull, copies, candidate)
    for layer, (layer_moves, layer_values) in enumerate(zip(moves, values)):
        hull = _hull(layer_moves, layer_values)
        for position in range(1, len(hull)):
            added = int(layer_moves[hull[position]] - layer_moves[hull[position - 1]])
            gain = float(layer_values[hull[position]] - layer_values[hull[position - 1]])
            steps.append((-gain / added, layer, position, added, int(hull[position])))
    chosen = [0] * len(moves)
    left = budget
    for _, layer, _, added, candidate in sorted(steps):
        if added > left:
            break
        left -= added
        chosen[layer] = candidate
    return chosen


def _hull(moves: np.ndarray, values: np.ndarray) -> list[int]:
    """Indices on the upper concave hull of the staircase of (moves, value), starting at candidate 0."""
    order = np.lexsort((-values, moves))  # by moves, best value first among equal moves
    stairs = [0]
    for index in order.tolist():
        if moves[index] > moves[stairs[-1]] and values[index] > values[stairs[-1]]:
            stairs.append(index)
    hull: list[int] = []
    for index in stairs:
        while len(hull) >= 2 and _not_below(moves, values, hull[-2], hull[-1], index):
            hull.pop()
        hull.append(index)
    return hull


def _not_below(moves: np.ndarray, values: np.ndarray, a: int, b: int, c: int) -> bool:
    """Whether b lies on or under the segment from a to c (so b is not a hull corner)."""
    cross = (moves[b] - moves[a]) * (values[c] - values[a]) - (values[b] - values[a]) * (moves[c] - moves[a])
    return cross >= 0


def copies_needed(current: np.ndarray, proposed: np.ndarray, num_experts: int) -> int:
    """Copies that turn `current` into `proposed`, both `[G, S]` int64 experts per GPU: on every GPU,
    the experts it gains (`migration.plan_migration` counts the same)."""
    num_gpus = len(current)
    holds = np.zeros((num_gpus, num_experts), dtype=bool)
    holds[np.arange(num_gpus)[:, None], current] = True
    return int((~holds[np.arange(num_gpus)[:, None], proposed]).sum())


def relabel_gpus(current: np.ndarray, proposed: np.ndarray, topology: Topology) -> np.ndarray:
    """`proposed` `[G, S]` with its nodes, and GPUs within each node, renumbered to keep as many
    experts where `current` has them (greedy matching on shared experts). Renumbering changes no
    metric: every node has the same GPUs and tokens' home nodes are spread evenly over nodes."""
    gpus_per_node = topology.gpus_per_node
    num_experts = int(max(current.max(), proposed.max())) + 1
    shared = _overlap(current, proposed, num_experts)  # [G current, G proposed]
    node_shared = shared.reshape(topology.num_nodes, gpus_per_node, topology.num_nodes,
                                 gpus_per_node).sum(axis=(1, 3))
    node_of = _greedy_match(node_shared)  # proposed node -> current node
    relabelled = np.empty_like(proposed)
    for proposed_node, current_node in enumerate(node_of):
        current_gpus = current_node * gpus_per_node + np.arange(gpus_per_node)
        proposed_gpus = proposed_node * gpus_per_node + np.arange(gpus_per_node)
        gpu_of = _greedy_match(shared[np.ix_(current_gpus, proposed_gpus)])
        relabelled[current_gpus[gpu_of]] = proposed[proposed_gpus]
    return relabelled


def _overlap(current: np.ndarray, proposed: np.ndarray, num_experts: int) -> np.ndarray:
    """`[G, G]` experts current GPU i and proposed GPU j have in common."""
    num_gpus = len(current)
    holds_current = np.zeros((num_gpus, num_experts))
    holds_current[np.arange(num_gpus)[:, None], current] = 1
    holds_proposed = np.zeros((num_gpus, num_experts))
    holds_proposed[np.arange(num_gpus)[:, None], proposed] = 1
    return holds_current @ holds_proposed.T


def _greedy_match(shared: np.ndarray) -> np.ndarray:
    """`[n]` for every column of the `[n, n]` table the row it is matched to, largest entries first."""
    size = len(shared)
    row_of = np.full(size, -1)
    row_taken = np.zeros(size, dtype=bool)
    for flat in np.argsort(-shared, axis=None, kind="stable").tolist():
        row, column = divmod(flat, size)
        if row_of[column] < 0 and not row_taken[row]:
            row_of[column] = row
            row_taken[row] = True
    return row_of

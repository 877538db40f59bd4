"""Swap refinement of one layer's replica layout: fewer GPUs and nodes per token at a load cap.

The affinity policy's optimiser. A layout puts V replicas (vertices; V = P, the layer's slots) on GPUs,
exactly S per GPU. Its cost on a layer's top-k sets (`LayerRows`), with each pick routed to a replica
by the runtime's rule (`set_routing.route_sets`), is

    cost = sum over rows of weight * (distinct GPUs) + node_weight * (remote nodes)

which for rows without replicated experts is the connectivity (KM1) objective of hypergraph
partitioning, on two levels. Load enters as a cap (`LoadCap`): no GPU may serve more picks than its
limit, on each window of traffic the rows were counted over (a plan made on past windows serves the
next one, and a layout that balances only their sum may balance none of them: it fits the noise of
the sum). A window's GPU load is each replica's routed load scaled by its expert's share in that
window, and the overload is summed over windows.

Moves are swaps of two replicas on different GPUs, so every GPU keeps exactly S slots; a swap may not
put two replicas of one expert on one GPU. Each round computes the exact change of the cost for every
swap at once (for the current routing of picks to replicas), takes the best non-overlapping swaps as
a batch, and keeps the batch only if the re-routed layout really is better: less overload, or the same
overload and a lower cost. A batch that fails is cut to its best swap, then to the next best few,
before the search stops. Every kept step strictly improves (overload, cost), so a prefix of the path
is never worse than the start, which the migration budget relies on.

Delta of moving vertex v from GPU A to GPU g, over the rows m that use v (C[m, x]: picks of row m on
GPU x): w_m * ([C[m, g] == 0] - [C[m, A] == 1]). A swap is the two moves plus a correction for rows
holding both vertices (their counts do not change): w_m * ([C[m, A] == 1] + [C[m, B] == 1]). The node
term is the same with node counts, the row's home node counted as a pick, between different nodes only.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from switchyard.placement.set_routing import route_sets
from switchyard.placement.topology import Topology

_TOLERANCE = 1e-9
_SINGLE_TRIES = 8  # best single swaps tried when a batch fails
_DISJOINT_CHUNK = 4096  # swaps read at a time when a batch is gathered


@dataclass(frozen=True, eq=False)
class LayerRows:
    """One layer's top-k sets as the optimiser scores them.

    sets: `[M, k]` int64 expert ids of each row, distinct within a row.
    weight: `[M]` float64 tokens behind each row (the weight of its GPU count).
    home: `[M]` int64 the row's home node, or -1 when unknown.
    node_weight: `[M]` float64 the weight of the row's remote-node count.
    sampled: the rows are a sample of the layer's (`affinity.sampled_rows`), weighted to its total.
    """

    sets: np.ndarray
    weight: np.ndarray
    home: np.ndarray
    node_weight: np.ndarray
    sampled: bool = False


@dataclass(frozen=True, eq=False)
class LoadCap:
    """The most picks a GPU should serve, on each of S windows.

    limit: `[S]` float64 the cap in each window.
    share: `[S, E]` float64 each expert's load in that window over its load in all of them (one
        window: all ones), by which a replica's routed load splits over the windows.

    price: what one pick above a limit costs, in units of the cost (distinct GPUs per token); inf:
        the cap comes first and the cost only decides among layouts with as much overload.
    """

    limit: np.ndarray
    share: np.ndarray
    price: float = np.inf

    @classmethod
    def single(cls, cap: float, num_experts: int) -> LoadCap:
        """One window: `cap` on the load of all rows."""
        return cls(np.array([float(cap)]), np.ones((1, num_experts)))

    @classmethod
    def per_window(cls, window_load: np.ndarray, num_gpus: int, max_imbalance: float, price: float = np.inf
                   ) -> LoadCap:
        """`(1 + max_imbalance)` x the mean GPU load of each window; window_load: `[S, E]`."""
        total = window_load.sum(axis=0)
        share = np.divide(window_load, total, out=np.full(window_load.shape, 1.0 / len(window_load)),
                          where=total > 0)
        return cls(window_load.sum(axis=1) / num_gpus * (1 + max_imbalance), share, price)

    def vertex_loads(self, vertex_load: np.ndarray, expert_of_vertex: np.ndarray) -> np.ndarray:
        """`[S, V]` each vertex's load in every window."""
        return vertex_load[None, :] * self.share[:, expert_of_vertex]

    @staticmethod
    def gpu_loads(vertex_loads: np.ndarray, gpu_of_vertex: np.ndarray, num_gpus: int) -> np.ndarray:
        """`[S, G]` each GPU's load in every window, from `vertex_loads`' `[S, V]`."""
        return np.stack([np.bincount(gpu_of_vertex, weights=loads, minlength=num_gpus) for loads in vertex_loads])

    def overload(self, vertex_load: np.ndarray, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray,
                 num_gpus: int) -> float:
        """Picks above the cap, summed over GPUs and windows."""
        gpu_loads = self.gpu_loads(self.vertex_loads(vertex_load, expert_of_vertex), gpu_of_vertex, num_gpus)
        return float(sum(np.maximum(gpu_load - limit, 0).sum() for gpu_load, limit in zip(gpu_loads, self.limit)))


@dataclass(frozen=True, eq=False)
class Score:
    """A layout's cost on its rows. overload: picks above the cap, summed over GPUs and windows (0 when within).
    pins: `[M, k]` int64 the vertex serving each pick; vertex_load: `[V]` float64."""

    overload: float
    cost: float
    pins: np.ndarray
    vertex_load: np.ndarray

    def better_than(self, other: Score, price: float = np.inf) -> bool:
        """With an infinite `price`: less overload, or as little and a lower cost. Else a lower
        `cost + price * overload` (both in the cost's units)."""
        if np.isfinite(price):
            mine, theirs = self.cost + price * self.overload, other.cost + price * other.overload
            return mine < theirs - _TOLERANCE * (1 + abs(theirs))
        if self.overload < other.overload - _TOLERANCE * (1 + other.overload):
            return True
        return (self.overload <= other.overload + _TOLERANCE * (1 + other.overload)
                and self.cost < other.cost - _TOLERANCE * (1 + abs(other.cost)))


def expert_vertices(expert_of_vertex: np.ndarray, num_experts: int) -> np.ndarray:
    """`[E, R]` int64 the vertices of each expert in vertex order, -1 padded."""
    order = np.argsort(expert_of_vertex, kind="stable")
    counts = np.bincount(expert_of_vertex, minlength=num_experts)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((num_experts, max(int(counts.max()), 1)), -1, dtype=np.int64)
    table[expert_of_vertex[order], rank] = order
    return table


def score(rows: LayerRows, vertices: np.ndarray, gpu_of_vertex: np.ndarray, topology: Topology,
          cap: LoadCap) -> Score:
    """Route the rows' picks to replicas and measure the layout.

    vertices: `[E, R]` int64 from `expert_vertices`; gpu_of_vertex: `[V]` int64.
    """
    return score_layers([Layout(rows, vertices, gpu_of_vertex, cap)], topology)[0]


@dataclass(frozen=True, eq=False)
class Layout:
    """One layer's layout to score: its rows, `[E, R]` vertices of each expert (`expert_vertices`),
    `[V]` GPU of each vertex and load cap."""

    rows: LayerRows
    vertices: np.ndarray
    gpu_of_vertex: np.ndarray
    cap: LoadCap


def score_layers(layouts: list[Layout], topology: Topology) -> list[Score]:
    """`score` of many layouts, routed in one call of `route_sets`: their experts and vertices are
    numbered apart, so no pick of one can reach another's replicas, and the rule routes each as on its
    own, to the bit. Routing is a few dozen numpy calls per column of picks, on arrays small enough
    that the calls' own cost counts; routing the layers of a refinement step together pays it once."""
    expert_start = np.cumsum([0] + [len(one.vertices) for one in layouts])
    vertex_start = np.cumsum([0] + [len(one.gpu_of_vertex) for one in layouts])
    row_start = np.cumsum([0] + [len(one.rows.sets) for one in layouts])
    vertices = np.full((expert_start[-1], max(one.vertices.shape[1] for one in layouts)), -1, dtype=np.int64)
    for one, first_expert, first_vertex in zip(layouts, expert_start, vertex_start):
        table = vertices[first_expert:first_expert + len(one.vertices), :one.vertices.shape[1]]
        np.add(one.vertices, first_vertex, out=table, where=one.vertices >= 0)
    pins, vertex_load = route_sets(
        np.concatenate([one.rows.sets + first for one, first in zip(layouts, expert_start)]),
        np.concatenate([one.rows.weight for one in layouts]), np.concatenate([one.rows.home for one in layouts]),
        vertices, np.concatenate([one.gpu_of_vertex for one in layouts]), topology.node_of_gpu)
    return [_measure(one, pins[row_start[at]:row_start[at + 1]] - vertex_start[at],
                     vertex_load[vertex_start[at]:vertex_start[at + 1]], topology)
            for at, one in enumerate(layouts)]


def _measure(layout: Layout, pins: np.ndarray, vertex_load: np.ndarray, topology: Topology) -> Score:
    """The score of one layout from its routing: the cost of its rows and the overload of its GPUs."""
    rows = layout.rows
    gpu_counts, node_counts = _counts(rows, pins, layout.gpu_of_vertex, topology)
    home_known = (rows.home >= 0).astype(np.float64)
    cost = (rows.weight @ (gpu_counts > 0).sum(axis=1)
            + rows.node_weight @ ((node_counts > 0).sum(axis=1) - home_known))
    overload = layout.cap.overload(vertex_load, _expert_of_vertex(layout.vertices, len(layout.gpu_of_vertex)),
                                   layout.gpu_of_vertex, topology.num_gpus)
    return Score(overload, float(cost), pins, vertex_load)


@dataclass(frozen=True, eq=False)
class Refinement:
    """One layer's refinement to run (`refine_layers`).

    expert_of_vertex: `[V]` int64 the expert each vertex replicates (fixed: swaps move vertices).
    gpu_of_vertex: `[V]` int64 the start layout, exactly S vertices per GPU, no expert twice on a GPU.
    cap: the most picks a GPU should serve, per window. max_rounds: batches tried at most.
    swap_vertices: with more vertices than this, each round considers the swaps among this many
        (`_swap_candidates`) instead of all `V x V`, which at DeepSeek-V3's 2304 slots per layer would
        cost ~0.5 s a round; None: all.
    """

    rows: LayerRows
    expert_of_vertex: np.ndarray
    gpu_of_vertex: np.ndarray
    cap: LoadCap
    max_rounds: int
    swap_vertices: int | None = None

    @functools.cached_property
    def vertices(self) -> np.ndarray:
        """`[E, R]` the vertices of each expert (`expert_vertices`)."""
        return expert_vertices(self.expert_of_vertex, int(self.expert_of_vertex.max()) + 1)


RefinePath = list[tuple[np.ndarray, Score]]


def refine(rows: LayerRows, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray,
           topology: Topology, cap: LoadCap, max_rounds: int, swap_vertices: int | None = None) -> RefinePath:
    """Improve a layout by swaps; returns the path: the start and every kept step, with its score
    (`Refinement` says what the arguments are). The last element of the path is the best layout found."""
    return refine_layers([Refinement(rows, expert_of_vertex, gpu_of_vertex, cap, max_rounds, swap_vertices)],
                         topology)[0]


def refine_layers(refinements: list[Refinement], topology: Topology) -> list[RefinePath]:
    """`refine` of many layers in lockstep: each step scores the layout every unfinished search tries
    next in one `score_layers` call. Each search goes as it would alone, so the paths are the same."""
    searches = [_search(one, topology) for one in refinements]
    paths: list[RefinePath | None] = [None] * len(refinements)
    trying = {at: next(search) for at, search in enumerate(searches)}
    while trying:
        scores = score_layers([Layout(refinements[at].rows, refinements[at].vertices, layout, refinements[at].cap)
                               for at, layout in trying.items()], topology)
        following = {}
        for at, result in zip(trying, scores):
            try:
                following[at] = searches[at].send(result)
            except StopIteration as finished:
                paths[at] = finished.value
        trying = following
    return paths


def _search(refinement: Refinement, topology: Topology) -> Generator[np.ndarray, Score, RefinePath]:
    """One layer's swap search: yields each layout to score, is sent its score, returns the path."""
    rows, expert_of_vertex, cap = refinement.rows, refinement.expert_of_vertex, refinement.cap
    swap_vertices = refinement.swap_vertices
    current = refinement.gpu_of_vertex.copy()
    best = yield current
    path = [(current.copy(), best)]
    for _ in range(refinement.max_rounds):
        subset = (np.arange(len(current)) if swap_vertices is None or swap_vertices >= len(current)
                  else _swap_candidates(rows, best, expert_of_vertex, current, topology, cap, swap_vertices))
        first, second = _ranked_swaps(rows, best, expert_of_vertex, current, topology, cap, subset)
        if not len(first):
            break
        batch = _disjoint(first, second, current)
        trials = ([batch] if len(batch) > 1 else []) + [[swap] for swap in
                                                        zip(first[:_SINGLE_TRIES].tolist(), second[:_SINGLE_TRIES].tolist())]
        for trial in trials:
            layout = current.copy()
            for a, b in trial:
                layout[a], layout[b] = current[b], current[a]
            result = yield layout
            if result.better_than(best, cap.price):
                current, best = layout, result
                path.append((current.copy(), best))
                break
        else:
            break
    return path


def _expert_of_vertex(vertices: np.ndarray, num_vertices: int) -> np.ndarray:
    """`[V]` int64 the expert of every vertex, from `expert_vertices`' table."""
    expert = np.empty(num_vertices, dtype=np.int64)
    held = vertices >= 0
    expert[vertices[held]] = np.nonzero(held)[0]
    return expert


def _counts(rows: LayerRows, pins: np.ndarray, gpu_of_vertex: np.ndarray, topology: Topology
            ) -> tuple[np.ndarray, np.ndarray]:
    """`[M, G]` picks of each row per GPU and `[M, N]` per node, the row's home node counted once."""
    num_rows = len(pins)
    row = np.arange(num_rows)[:, None]
    gpu = gpu_of_vertex[pins]
    gpu_counts = np.bincount((row * topology.num_gpus + gpu).ravel(),
                             minlength=num_rows * topology.num_gpus).reshape(num_rows, topology.num_gpus)
    node = topology.node_of_gpu[gpu]
    node_counts = np.bincount((row * topology.num_nodes + node).ravel(),
                              minlength=num_rows * topology.num_nodes).reshape(num_rows, topology.num_nodes)
    known = rows.home >= 0
    node_counts[np.nonzero(known)[0], rows.home[known]] += 1
    return gpu_counts, node_counts


def _swap_candidates(rows: LayerRows, current: Score, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray,
                     topology: Topology, cap: LoadCap, count: int) -> np.ndarray:
    """`[count]` int64 ascending: the vertices a round of swaps considers when there are too many for
    all pairs. Those on GPUs above the cap first, then those that serve the most row weight alone
    on their GPU (the GPUs a move could save), then by id."""
    gpu_counts, _ = _counts(rows, current.pins, gpu_of_vertex, topology)
    alone = (np.take_along_axis(gpu_counts, gpu_of_vertex[current.pins], axis=1) == 1) * rows.weight[:, None]
    saving = np.bincount(current.pins.ravel(), weights=alone.ravel(), minlength=len(gpu_of_vertex))
    gpu_loads = cap.gpu_loads(cap.vertex_loads(current.vertex_load, expert_of_vertex), gpu_of_vertex, topology.num_gpus)
    over = (gpu_loads > cap.limit[:, None]).any(axis=0)[gpu_of_vertex]
    return np.sort(np.lexsort((-saving, ~over))[:count])


def _ranked_swaps(rows: LayerRows, current: Score, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray,
                  topology: Topology, cap: LoadCap, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The improving swaps among `subset` (ascending vertex ids) for the current routing, best first:
    two `[n]` int64 arrays of vertices."""
    delta, overload, allowed = _swap_changes(rows, current, expert_of_vertex, gpu_of_vertex, topology, cap, subset)
    allowed &= np.triu(np.ones(delta.shape, dtype=bool), 1)
    if np.isfinite(cap.price):  # one objective: the cost with the overload priced in
        improving = delta + cap.price * overload < -_TOLERANCE
    else:
        improving = (overload < -_TOLERANCE) | ((overload <= _TOLERANCE) & (delta < -_TOLERANCE))
    a, b = np.nonzero(allowed & improving)
    # Rank: swaps that cut overload first, cheapest cost per token of overload cut; then by cost.
    cut = -overload[a, b]
    relieves = cut > _TOLERANCE
    rank = np.where(relieves, delta[a, b] / np.where(relieves, cut, 1.0), delta[a, b])
    order = np.lexsort((rank, ~relieves))
    return subset[a[order]], subset[b[order]]


def _swap_changes(rows: LayerRows, current: Score, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray,
                  topology: Topology, cap: LoadCap, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every swap of two vertices of `subset` (ascending ids), `[C, C]` each: the change of the cost
    (`swap_deltas`) and of the overload (summed over windows) for the current routing, and whether it
    is allowed (`allowed_swaps`)."""
    delta = swap_deltas(rows, current.pins, gpu_of_vertex, topology, subset)
    gpu = gpu_of_vertex[subset]
    overload = np.zeros(delta.shape)  # [a, b] the change of the overload, summed over windows
    vertex_loads = cap.vertex_loads(current.vertex_load, expert_of_vertex)
    gpu_loads = cap.gpu_loads(vertex_loads, gpu_of_vertex, topology.num_gpus)
    for all_loads, gpu_load, limit in zip(vertex_loads, gpu_loads, cap.limit):
        vertex_load = all_loads[subset]
        shift = vertex_load[None, :] - vertex_load[:, None]  # [a, b]: b's load minus a's
        over = np.maximum(gpu_load - limit, 0)
        overload += (np.maximum(gpu_load[gpu][:, None] + shift - limit, 0)
                     + np.maximum(gpu_load[gpu][None, :] - shift - limit, 0)
                     - over[gpu][:, None] - over[gpu][None, :])
    return delta, overload, allowed_swaps(expert_of_vertex, gpu_of_vertex, topology.num_gpus, subset)


def allowed_swaps(expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, num_gpus: int, subset: np.ndarray
                  ) -> np.ndarray:
    """`[C, C]` bool over `subset`: the swaps a layout may make. Neither expert may already be on the
    other's GPU (which rules out two vertices of one GPU, or of one expert, too), and no GPU may be
    left without a replica of a replicated expert (`stranding_swaps`)."""
    on_gpu = experts_on_gpus(expert_of_vertex, gpu_of_vertex, num_gpus)
    blocked = on_gpu[expert_of_vertex[subset]][:, gpu_of_vertex[subset]]  # [a, b]: a's expert already on b's GPU
    return ~(blocked | blocked.T | stranding_swaps(expert_of_vertex, gpu_of_vertex, num_gpus, subset))


def experts_on_gpus(expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, num_gpus: int) -> np.ndarray:
    """`[E, G]` bool: whether expert e has a replica on GPU g, which a move must not give it twice."""
    on_gpu = np.zeros((int(expert_of_vertex.max()) + 1, num_gpus), dtype=bool)
    on_gpu[expert_of_vertex, gpu_of_vertex] = True
    return on_gpu


def replicated(expert_of_vertex: np.ndarray) -> np.ndarray:
    """`[V]` bool: the vertices of experts with more than one replica, the only picks the replica rule
    can send elsewhere."""
    return np.bincount(expert_of_vertex)[expert_of_vertex] > 1


def stranding_swaps(expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, num_gpus: int, subset: np.ndarray
                    ) -> np.ndarray:
    """`[C, C]` bool over `subset`: the swaps that would leave a GPU without a replica of a replicated
    expert (one moves the GPU's last such replica away for a single-replica expert's).

    The rule's repair relieves a GPU only by moving picks of replicated experts to their other
    replicas, so a GPU without one cannot shed load on traffic the plan did not foresee. On the
    served windows of both ESFT traces at 1 x 8 x 9, before this rule, the busiest GPU held none in a
    quarter of affinity's layers, and those carried two fifths of its load above the mean
    (docs/placement.md, "Every GPU keeps a replica")."""
    spare = replicated(expert_of_vertex)
    held = np.bincount(gpu_of_vertex[spare], minlength=num_gpus)
    last = spare[subset] & (held[gpu_of_vertex[subset]] == 1)  # [C] the only such replica on its GPU
    alone = last[:, None] & ~spare[subset][None, :]
    return alone | alone.T


def perturbed(expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, num_gpus: int, swaps: int,
              rng: np.random.Generator) -> np.ndarray:
    """`gpu_of_vertex` after `swaps` random swaps of two vertices, each one the refinement could make
    (`allowed_swaps`): the kick of an iterated local search, from which refinement settles into a
    nearby local optimum. Where no swap is allowed, the layout stays as it is."""
    layout = gpu_of_vertex.copy()
    everyone = np.arange(len(layout))
    for _ in range(swaps):
        first, second = np.nonzero(np.triu(allowed_swaps(expert_of_vertex, layout, num_gpus, everyone), 1))
        if not len(first):
            break
        pick = rng.integers(len(first))
        a, b = first[pick], second[pick]
        layout[a], layout[b] = layout[b], layout[a]
    return layout


def replica_components(expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, num_gpus: int,
                       moves: np.ndarray | None = None) -> np.ndarray:
    """The components of the replica graph, whose vertices are GPUs and where the replicas of one
    replicated expert link their GPUs: `[G]` each GPU's label, the lowest GPU of its component.

    moves: `[M, 2]` rows (replicated vertex, GPU); then `[M, G]`, the labels with that one vertex on
    that GPU instead, for every move on its own.
    """
    spare = np.flatnonzero(replicated(expert_of_vertex))
    experts, column = np.unique(expert_of_vertex[spare], return_inverse=True)
    count = 1 if moves is None else len(moves)
    incidence = np.zeros((count, len(experts), num_gpus), dtype=np.int64)  # [M, X, G] expert x holds a replica on g
    incidence[:, column, gpu_of_vertex[spare]] = 1
    if moves is not None:
        row, moved = np.arange(count), column[np.searchsorted(spare, moves[:, 0])]
        incidence[row, moved, gpu_of_vertex[moves[:, 0]]] = 0
        incidence[row, moved, moves[:, 1]] = 1
    linked = ((incidence.transpose(0, 2, 1) @ incidence) > 0) | np.eye(num_gpus, dtype=bool)  # [M, G, G]
    while True:  # the transitive closure by squaring: paths of up to 2^i links
        wider = (linked.astype(np.int64) @ linked.astype(np.int64)) > 0
        if (wider == linked).all():
            break
        linked = wider
    labels = linked.argmax(axis=2)
    return labels[0] if moves is None else labels


def component_count(labels: np.ndarray) -> np.ndarray:
    """`[...]` the number of components of every labelling `[..., G]` from `replica_components`."""
    return (labels == np.arange(labels.shape[-1])).sum(axis=-1)


def connect_replicas(rows: LayerRows, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, topology: Topology,
                     cap: LoadCap) -> np.ndarray:
    """`gpu_of_vertex` with its replica graph (`replica_components`) in as few components as swaps can
    make it: while swapping a replicated expert's replica with a single-replica expert's joins two
    components, the swap that adds the least (overload first, or priced by `cap.price`, then cost),
    for the current routing.

    The runtime's repair moves load along chains of replicas, so it can even out the GPUs of one
    component but never move load between two; a GPU holding no replica is a component of its own.
    """
    spare = replicated(expert_of_vertex)
    givers = np.flatnonzero(spare)
    vertices = expert_vertices(expert_of_vertex, int(expert_of_vertex.max()) + 1)
    num_gpus = topology.num_gpus
    layout = gpu_of_vertex.copy()
    while len(givers):
        count = component_count(replica_components(expert_of_vertex, layout, num_gpus))
        if count == 1:
            return layout
        moves = np.stack(np.meshgrid(givers, np.arange(num_gpus), indexing="ij"), axis=2).reshape(-1, 2)
        joins = component_count(replica_components(expert_of_vertex, layout, num_gpus, moves)) < count
        on_gpu = experts_on_gpus(expert_of_vertex, layout, num_gpus)
        joins = joins.reshape(len(givers), num_gpus) & ~on_gpu[expert_of_vertex[givers]]  # never an expert twice on a GPU
        takers = np.flatnonzero(~spare & joins.any(axis=0)[layout])
        if not len(takers):
            return layout
        subset = np.sort(np.concatenate([givers, takers]))
        delta, overload, _ = _swap_changes(rows, score(rows, vertices, layout, topology, cap), expert_of_vertex,
                                           layout, topology, cap, subset)
        pairs = np.ix_(np.searchsorted(subset, givers), np.searchsorted(subset, takers))
        joining = joins[:, layout[takers]]  # [givers, takers] the swaps that join two components
        delta, overload = np.where(joining, delta[pairs], np.inf), np.where(joining, overload[pairs], np.inf)
        if np.isfinite(cap.price):
            best = np.argmin(delta + cap.price * overload)
        else:
            best = np.lexsort((delta.ravel(), overload.ravel()))[0]
        giver, taker = np.unravel_index(best, delta.shape)
        layout[givers[giver]], layout[takers[taker]] = layout[takers[taker]], layout[givers[giver]]
    return layout


def swap_deltas(rows: LayerRows, pins: np.ndarray, gpu_of_vertex: np.ndarray, topology: Topology,
                subset: np.ndarray | None = None) -> np.ndarray:
    """`[C, C]` float64 the cost change of swapping the GPUs of two vertices of `subset` (ascending
    vertex ids; None: all V), picks staying pinned."""
    num_vertices = len(gpu_of_vertex)
    gpu_counts, node_counts = _counts(rows, pins, gpu_of_vertex, topology)
    gpu, node = gpu_of_vertex, topology.node_of_gpu[gpu_of_vertex]
    node_of_gpu = topology.node_of_gpu
    num_rows, width = pins.shape
    pin_row = np.repeat(np.arange(num_rows), width)  # [M * k] the row of every pin
    pin_vertex = pins.ravel()
    first, second = np.triu_indices(width, 1)  # the pairs of picks within a row
    pair_a, pair_b = pins[:, first].ravel(), pins[:, second].ravel()  # [M * k(k-1)/2]
    pair_row = np.repeat(np.arange(num_rows), len(first))
    if subset is None:
        subset, local = np.arange(num_vertices), np.arange(num_vertices)
    else:  # keep the pins, and pairs of pins, of the subset; number its vertices 0 .. C-1
        local = np.full(num_vertices, -1)
        local[subset] = np.arange(len(subset))
        kept = local[pin_vertex] >= 0
        pin_row, pin_vertex = pin_row[kept], pin_vertex[kept]
        kept = (local[pair_a] >= 0) & (local[pair_b] >= 0)
        pair_a, pair_b, pair_row = pair_a[kept], pair_b[kept], pair_row[kept]
    size, pin_local = len(subset), local[pin_vertex]

    def level(counts: np.ndarray, weight: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move deltas `[C, blocks]` and swap corrections `[C, C]` at one level (GPU or node)."""
        alone = (counts == 1) * weight[:, None]  # [M, blocks] weight of rows with one pick there
        empty = (counts == 0) * weight[:, None]  # [M, blocks] weight of rows with none there
        gain = np.stack([np.bincount(pin_local, weights=empty[pin_row, b], minlength=size)
                         for b in range(counts.shape[1])], axis=1)
        loss = np.bincount(pin_local, weights=alone[pin_row, block[pin_vertex]], minlength=size)
        both = alone[pair_row, block[pair_a]] + alone[pair_row, block[pair_b]]
        fix = np.bincount(local[pair_a] * size + local[pair_b], weights=both, minlength=size ** 2)
        fix = fix.reshape(size, size)
        return gain - loss[:, None], fix + fix.T

    move_gpu, fix_gpu = level(gpu_counts, rows.weight, gpu)
    move_node, fix_node = level(node_counts, rows.node_weight, node)
    gpu, node = gpu[subset], node[subset]
    cross = node[:, None] != node[None, :]  # [C, C] pairs on different nodes
    move = move_gpu + np.where(node_of_gpu[None, :] != node[:, None], move_node[:, node_of_gpu], 0.0)
    moved = move[:, gpu]
    return moved + moved.T + fix_gpu + np.where(cross, fix_node, 0.0)


def _disjoint(first: np.ndarray, second: np.ndarray, gpu_of_vertex: np.ndarray) -> list[tuple[int, int]]:
    """The best swaps (`first[i]`, `second[i]`, best first) that share no GPU, greedily: their deltas
    then add up except through rows. Read in chunks: the batch fills long before the list ends."""
    num_gpus = int(gpu_of_vertex.max()) + 1
    taken: set[int] = set()
    batch = []
    for start in range(0, len(first), _DISJOINT_CHUNK):
        chunk = slice(start, start + _DISJOINT_CHUNK)
        for a, b, ga, gb in zip(first[chunk].tolist(), second[chunk].tolist(),
                                gpu_of_vertex[first[chunk]].tolist(), gpu_of_vertex[second[chunk]].tolist()):
            if ga in taken or gb in taken:
                continue
            batch.append((a, b))
            taken.update((ga, gb))
            if len(taken) >= num_gpus - 1:  # no two GPUs left: the rest of the list cannot join
                return batch
    return batch

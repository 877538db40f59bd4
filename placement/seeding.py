"""A starting layout for the affinity refinement: a graph partition, then exactly S slots per GPU.

The swap refinement (`partition.refine`) only improves locally, so it needs a start that already
keeps co-activated experts together. METIS (pymetis) partitions the co-activation graph (experts as
vertices weighted by load, each expert's strongest pair counts as edge weights) hierarchically: the
nodes first, then each node's experts over its GPUs. Its blocks have about equal load but any number
of experts, and know nothing of replicas, so the layout is then built replica by replica, busiest
first (as in LPT scheduling), on GPUs with a free slot that do not hold the expert yet and, given a
load cap, where the replica fits under it: an expert's first replica goes to its METIS GPU, every
other replica to the GPU whose experts it is most often picked with, on the node holding the fewest
replicas of its expert (so the home-node tier of the rule finds one). The rare dead end, where every
GPU with a free slot already holds the expert, is solved by moving a placed replica into that slot
and taking its place.

METIS bisects recursively (pymetis's default up to 8 parts, where ESFT's layouts stay): for
DeepSeek-V3's 32 nodes its k-way mode took ~12 ms a layer against ~4 ms, 0.7 s of 58 layers.

mtkahypar's KM1 partition of the top-k sets was measured as the alternative start: after refinement
it gives the same distinct GPUs per token on the ESFT traces at ~100x the time (0.11 s against 1 ms
per layer), so the graph view is used.
"""

from __future__ import annotations

import numpy as np
import pymetis

from switchyard.placement.topology import Topology

_EDGE_SCALE = 1000  # pair counts are scaled to integers up to this for METIS
_NEIGHBOURS = 32  # METIS sees each expert's strongest partners only: the graph stays sparse
_NODE_PREFERENCE = 1e12  # an extra replica's first criterion: fewer replicas of its expert on the node
_TIE = 1e-9  # among equally co-activated GPUs, the least loaded


def replica_counts(load: np.ndarray, num_slots: int, max_replicas: int) -> np.ndarray:
    """`[E]` int64 replicas per expert: one each, then every spare slot to the expert with the most
    load per replica (EPLB's rule, ties to the lower id), at most `max_replicas` (= G) each.

    Giving slots one by one to the highest `load / replicas` takes, overall, the largest of the
    values `load[e] / c` for c = 1 .. max_replicas - 1 (the claim of e's (c+1)-th replica), so they
    are sorted once instead.
    """
    num_experts, spare = len(load), num_slots - len(load)
    copies = np.arange(1, max_replicas)  # [C] replicas an expert has when it claims one more
    claims = (load[:, None] / copies[None, :]).ravel()  # [E * C], expert-major: ties in EPLB's order
    counts = np.ones(num_experts, dtype=np.int64)
    if spare == 0:
        return counts
    threshold = np.partition(claims, len(claims) - spare)[len(claims) - spare]
    taken = claims > threshold
    tied = np.nonzero(claims == threshold)[0][: spare - int(taken.sum())]
    taken[tied] = True
    return counts + taken.reshape(num_experts, -1).sum(axis=1)


def graph_partition(pair_counts: np.ndarray, load: np.ndarray, topology: Topology, seed: int
                    ) -> np.ndarray:
    """`[E]` int64 a GPU for every expert: METIS over nodes, then over each node's GPUs.

    pair_counts: `[E, E]` float64 symmetric co-activation counts; load: `[E]` float64.
    """
    num_experts, gpus_per_node = len(load), topology.gpus_per_node
    node = _metis(pair_counts, load, np.arange(num_experts), topology.num_nodes, seed)
    # Nodes with too few experts to partition (DeepSeek-V3's 256 over 32 nodes: 8 each) take
    # `_by_load` all at once, which a call per node made 0.2 s of 58 layers' seeding.
    gpu = node * gpus_per_node + _by_load(load, node, gpus_per_node)
    members_per_node = np.bincount(node, minlength=topology.num_nodes)
    for n in np.nonzero(~_too_few(members_per_node, gpus_per_node))[0]:
        members = np.nonzero(node == n)[0]
        gpu[members] = n * gpus_per_node + _metis(pair_counts, load, members, gpus_per_node, seed)
    return gpu


def _too_few(count: np.ndarray | int, parts: int) -> np.ndarray | bool:
    """Whether `count` experts are too few for METIS to split into `parts` blocks: fewer than two
    each (`_by_load` deals them instead)."""
    return count < 2 * parts


def _by_load(load: np.ndarray, group: np.ndarray, parts: int) -> np.ndarray:
    """`[E]` int64 a block of each expert for groups too small to partition: within its group, the
    experts by falling load (ties to the lower id) dealt one per block in turn."""
    order = np.lexsort((-load, group))  # stable: ties keep the lower id first
    rank = np.empty(len(load), dtype=np.int64)
    starts = np.searchsorted(group[order], group[order])  # where each one's group starts in `order`
    rank[order] = np.arange(len(load)) - starts
    return rank % parts


def _metis(pair_counts: np.ndarray, load: np.ndarray, members: np.ndarray, parts: int, seed: int
           ) -> np.ndarray:
    """`[len(members)]` int64 block of each member expert: METIS on the induced subgraph."""
    if _too_few(len(members), parts):
        return _by_load(load[members], np.zeros(len(members), dtype=np.int64), parts)
    pairs = pair_counts[np.ix_(members, members)]
    top = pairs.max()
    if top <= 0:  # no co-activation among them: blocks by index (the refinement balances load)
        return np.arange(len(members), dtype=np.int64) % parts
    weights = np.rint(pairs / top * _EDGE_SCALE).astype(np.int64)
    np.fill_diagonal(weights, 0)
    if len(members) > _NEIGHBOURS:  # keep each expert's strongest partners (both directions)
        strongest = np.argpartition(-weights, _NEIGHBOURS, axis=1)[:, :_NEIGHBOURS]
        keep = np.zeros(weights.shape, dtype=bool)
        keep[np.arange(len(members))[:, None], strongest] = True
        weights = np.where(keep | keep.T, weights, 0)
    rows, cols = np.nonzero(weights)
    starts = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(members)))])
    member_load = load[members]
    vertex_weights = np.rint(member_load / max(member_load.max(), 1e-300) * _EDGE_SCALE).astype(np.int64) + 1
    options = pymetis.Options(seed=seed)
    _, blocks = pymetis.part_graph(
        parts, adjacency=pymetis.CSRAdjacency(adj_starts=starts.tolist(), adjacent=cols.tolist()),
        eweights=weights[rows, cols].tolist(), vweights=vertex_weights.tolist(), options=options,
        recursive=True)
    return np.asarray(blocks, dtype=np.int64)


def initial_layouts(pair_counts: np.ndarray, load: np.ndarray, replicas: np.ndarray, preferred_gpu: np.ndarray,
                    topology: Topology, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place every replica of every layer: `expert_of_vertex` `[L, V]` and `gpu_of_vertex` `[L, V]`
    int64, V = P.

    pair_counts: `[L, E, E]`; load: `[L, E]`; replicas: `[L, E]` int64 from `replica_counts` (sum P
    per layer, each at most G); preferred_gpu: `[L, E]` int64 each expert's GPU from
    `graph_partition`; cap: `[L]` the load a GPU should not exceed, a replica counting
    `load / replicas` of its expert.
    Per layer, replicas are placed one by one, busiest first (as in LPT scheduling), on a GPU with a
    free slot that does not hold the expert yet: one where it fits under the cap if any (else the
    least loaded); among those, a first replica takes its expert's METIS GPU, any other replica the
    GPU on the node with the fewest replicas of its expert that it is most co-activated with.
    Every GPU receives exactly S vertices and no expert twice. The layers are independent and go in
    lockstep, step i placing every layer's i-th replica with one numpy call over `[L, G]`: a step per
    slot and layer in Python took 1.8 s of DeepSeek-V3's 58 x 2304 slots, lockstep ~0.1 s.
    """
    state = _Seeding(pair_counts, load, replicas, topology, cap)
    layers = np.arange(len(load))
    expert_of_vertex, first = state.expert_of_vertex, np.cumsum(replicas, axis=1) - replicas
    order = np.argsort(-np.take_along_axis(state.per_replica, expert_of_vertex, axis=1), axis=1, kind="stable")
    for vertex in order.T:  # [L] each layer's next vertex
        expert = expert_of_vertex[layers, vertex]
        options = state.preference[layers, :, expert] + state.closed  # [L, G], -inf where not allowed
        fits = np.where(state.gpu_load <= state.room[layers, expert][:, None],
                        options - state.gpu_load * _TIE, -np.inf)
        target = np.argmax(fits, axis=1)
        placed = fits[layers, target] > -np.inf
        wanted = preferred_gpu[layers, expert]
        target = np.where(placed & (vertex == first[layers, expert]) & (fits[layers, wanted] > -np.inf),
                          wanted, target)
        if not placed.all():  # nowhere under the cap: the least loaded GPU that may take it
            least = np.argmax(np.where(np.isfinite(options), -state.gpu_load, -np.inf), axis=1)
            target = np.where(placed, target, least)
            placed |= np.isfinite(options[layers, least])
        state.put(layers[placed], vertex[placed], target[placed])
        for layer in np.nonzero(~placed)[0]:
            state.make_room(int(layer), int(vertex[layer]))
    assert (state.free == 0).all() and (state.gpu_of_vertex >= 0).all()
    return expert_of_vertex, state.gpu_of_vertex


class _Seeding:
    """The seeding's state over `[L]` layers: where vertices are, and how much each GPU wants each
    expert's next replica (`preference` `[L, G, E]`: its co-activation with what the GPU holds, pair
    counts shared among the partner's replicas, less the node-spreading penalty, and -inf where the
    GPU already holds the expert; GPU-major, so that a placement updates one contiguous row)."""

    def __init__(self, pair_counts: np.ndarray, load: np.ndarray, replicas: np.ndarray, topology: Topology,
                 cap: np.ndarray) -> None:
        num_layers, num_experts = load.shape
        self.topology = topology
        self.expert_of_vertex = np.stack([np.repeat(np.arange(num_experts), count) for count in replicas])
        self.gpu_of_vertex = np.full(self.expert_of_vertex.shape, -1, dtype=np.int64)
        self.free = np.full((num_layers, topology.num_gpus), topology.slots_per_gpu)
        self.gpu_load = np.zeros((num_layers, topology.num_gpus))
        self.closed = np.zeros((num_layers, topology.num_gpus))  # -inf on full GPUs
        self.preference = np.zeros((num_layers, topology.num_gpus, num_experts))
        self.shared = pair_counts / replicas[:, None, :]
        self.shared_by_partner = np.ascontiguousarray(self.shared.transpose(0, 2, 1))  # [l, e]: column e
        self.per_replica = load / replicas
        self.room = np.asarray(cap, dtype=np.float64)[:, None] - self.per_replica  # most load before a replica

    def put(self, layers: np.ndarray, vertices: np.ndarray, gpus: np.ndarray, sign: int = 1) -> None:
        """Place `vertices[i]` of `layers[i]` on `gpus[i]` (sign 1) or take them off (sign -1); one
        vertex per layer at most."""
        expert = self.expert_of_vertex[layers, vertices]
        gpus_per_node = self.topology.gpus_per_node
        node_gpus = (gpus // gpus_per_node * gpus_per_node)[:, None] + np.arange(gpus_per_node)  # [n, gpn]
        self.gpu_of_vertex[layers, vertices] = gpus if sign > 0 else -1
        free = self.free[layers, gpus] - sign
        self.free[layers, gpus] = free
        self.closed[layers, gpus] = np.where(free == 0, -np.inf, 0.0)
        self.gpu_load[layers, gpus] += sign * self.per_replica[layers, expert]
        held = self.preference[layers, gpus, expert] if sign < 0 else None
        self.preference[layers, gpus] += sign * self.shared_by_partner[layers, expert]
        self.preference[layers[:, None], node_gpus, expert[:, None]] -= sign * _NODE_PREFERENCE
        if sign > 0:
            self.preference[layers, gpus, expert] = -np.inf
            return
        for layer, one, gpu in zip(layers[np.isinf(held)], expert[np.isinf(held)], gpus[np.isinf(held)]):
            # Its place is open again: recompute what the GPU holds for it.
            experts, on_gpus = self.expert_of_vertex[layer], self.gpu_of_vertex[layer]
            holds = np.bincount(experts[on_gpus == gpu], minlength=self.preference.shape[2])
            node_of_gpu = self.topology.node_of_gpu
            on_node = np.count_nonzero(node_of_gpu[on_gpus[(experts == one) & (on_gpus >= 0)]] == node_of_gpu[gpu])
            self.preference[layer, gpu, one] = self.shared[layer, one] @ holds - _NODE_PREFERENCE * on_node

    def make_room(self, layer: int, vertex: int) -> None:
        """Every GPU of `layer` with a free slot holds `vertex`'s expert: move a placed replica into
        such a slot and put `vertex` where it was. One exists whenever a valid layout does for the
        remaining replicas."""
        experts, gpus = self.expert_of_vertex[layer], self.gpu_of_vertex[layer]
        holds = np.isinf(self.preference[layer].T)  # [E, G]
        expert = experts[vertex]
        one = np.array([layer])
        for target in np.nonzero(self.free[layer] > 0)[0]:
            for other in np.nonzero(gpus >= 0)[0]:
                source, moved = gpus[other], experts[other]
                if not holds[expert, source] and not holds[moved, target]:
                    self.put(one, np.array([other]), np.array([source]), -1)
                    self.put(one, np.array([other]), np.array([target]))
                    self.put(one, np.array([vertex]), np.array([source]))
                    return
        raise AssertionError(f"no valid layout for the replicas of expert {expert}")

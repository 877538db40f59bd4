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

mtkahypar's KM1 partition of the top-k sets was measured as the alternative start: after refinement
it gives the same distinct GPUs per token on the ESFT traces at ~100x the time (0.11 s against 1 ms
per layer), so the graph view is used.
"""

from __future__ import annotations

from collections.abc import Callable

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
    num_experts = len(load)
    node = _metis(pair_counts, load, np.arange(num_experts), topology.num_nodes, seed)
    gpu = np.empty(num_experts, dtype=np.int64)
    for n in range(topology.num_nodes):
        members = np.nonzero(node == n)[0]
        local = _metis(pair_counts, load, members, topology.gpus_per_node, seed)
        gpu[members] = n * topology.gpus_per_node + local
    return gpu


def _metis(pair_counts: np.ndarray, load: np.ndarray, members: np.ndarray, parts: int, seed: int
           ) -> np.ndarray:
    """`[len(members)]` int64 block of each member expert: METIS on the induced subgraph."""
    if len(members) < 2 * parts:  # too few to partition: one block each, by load
        return np.argsort(np.argsort(-load[members], kind="stable")) % parts
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
        eweights=weights[rows, cols].tolist(), vweights=vertex_weights.tolist(), options=options)
    return np.asarray(blocks, dtype=np.int64)


def initial_layout(pair_counts: np.ndarray, load: np.ndarray, replicas: np.ndarray, preferred_gpu: np.ndarray,
                   topology: Topology, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Place every replica: `expert_of_vertex` `[V]` and `gpu_of_vertex` `[V]` int64, V = P.

    replicas: `[E]` int64 from `replica_counts` (sum P, each at most G).
    preferred_gpu: `[E]` int64 each expert's GPU from `graph_partition`.
    cap: the load a GPU should not exceed, a replica counting `load / replicas` of its expert.
    Replicas are placed one by one, busiest first (as in LPT scheduling), on a GPU with a free slot
    that does not hold the expert yet: one where it fits under the cap if any (else the least
    loaded); among those, a first replica takes its expert's METIS GPU, any other replica the GPU
    on the node with the fewest replicas of its expert that it is most co-activated with.
    Every GPU receives exactly S vertices and no expert twice.
    """
    num_experts, num_gpus = len(load), topology.num_gpus
    node_of_gpu, gpus_per_node = topology.node_of_gpu, topology.gpus_per_node
    expert_of_vertex = np.repeat(np.arange(num_experts), replicas)
    first = np.cumsum(replicas) - replicas  # [E] each expert's first vertex
    gpu_of_vertex = np.full(len(expert_of_vertex), -1, dtype=np.int64)
    free = np.full(num_gpus, topology.slots_per_gpu)
    gpu_load = np.zeros(num_gpus)
    closed = np.zeros(num_gpus)  # [G] -inf on full GPUs
    # [E, G] how much a GPU wants an expert's next replica: its co-activation with what the GPU
    # holds (pair counts shared among the partner's replicas), less the node-spreading penalty, and
    # -inf where the GPU already holds the expert.
    preference = np.zeros((num_experts, num_gpus))
    shared = pair_counts / replicas[None, :]
    shared_by_partner = np.ascontiguousarray(shared.T)  # row e: column e of `shared`, contiguous
    per_replica = load / replicas
    room = cap - per_replica  # [E] the most load a GPU may carry before taking a replica
    # The loop below runs once per slot (2304 times a layer for DeepSeek-V3 on 256 GPUs): its scalar
    # look-ups go to Python lists, cheaper to index than numpy arrays (~12 % of the seeding's time there).
    expert_list, first_list, preferred_list = expert_of_vertex.tolist(), first.tolist(), preferred_gpu.tolist()
    node_list = node_of_gpu.tolist()

    def put(vertex: int, gpu: int, sign: int = 1) -> None:
        """Place `vertex` on `gpu` (sign 1) or take it off (sign -1)."""
        expert = expert_list[vertex]
        node = node_list[gpu]
        gpu_of_vertex[vertex] = gpu if sign > 0 else -1
        free[gpu] -= sign
        closed[gpu] = -np.inf if free[gpu] == 0 else 0.0
        gpu_load[gpu] += sign * per_replica[expert]
        held = preference[expert, gpu]
        preference[:, gpu] += sign * shared_by_partner[expert]
        preference[expert, node * gpus_per_node:(node + 1) * gpus_per_node] -= sign * _NODE_PREFERENCE
        if sign > 0:
            preference[expert, gpu] = -np.inf
        elif np.isinf(held):  # its place is open again: recompute what the GPU holds for it
            holds = np.bincount(expert_of_vertex[gpu_of_vertex == gpu], minlength=num_experts)
            on_node = np.count_nonzero(node_of_gpu[gpu_of_vertex[(expert_of_vertex == expert)
                                                                 & (gpu_of_vertex >= 0)]] == node)
            preference[expert, gpu] = shared[expert] @ holds - _NODE_PREFERENCE * on_node

    for vertex in np.argsort(-per_replica[expert_of_vertex], kind="stable").tolist():
        expert = expert_list[vertex]
        options = preference[expert] + closed  # [G], -inf where not allowed
        fits = np.where(gpu_load <= room[expert], options - gpu_load * _TIE, -np.inf)
        best = int(np.argmax(fits))
        if fits[best] > -np.inf:
            wanted = preferred_list[expert]
            put(vertex, wanted if vertex == first_list[expert] and fits[wanted] > -np.inf else best)
            continue
        best = int(np.argmax(np.where(np.isfinite(options), -gpu_load, -np.inf)))  # the least loaded
        if np.isfinite(options[best]):
            put(vertex, best)
        else:
            _make_room(vertex, expert_of_vertex, gpu_of_vertex, free, np.isinf(preference), put)
    assert (free == 0).all() and (gpu_of_vertex >= 0).all()
    return expert_of_vertex, gpu_of_vertex


def _make_room(vertex: int, expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray, free: np.ndarray,
               holds: np.ndarray, put: Callable[..., None]) -> None:
    """Every GPU with a free slot holds `vertex`'s expert: move a placed replica into such a slot and
    put `vertex` where it was. One exists whenever a valid layout does for the remaining replicas."""
    expert = expert_of_vertex[vertex]
    for target in np.nonzero(free > 0)[0]:
        for other in np.nonzero(gpu_of_vertex >= 0)[0]:
            source, moved = gpu_of_vertex[other], expert_of_vertex[other]
            if not holds[expert, source] and not holds[moved, target]:
                put(other, int(source), -1)
                put(other, int(target))
                put(vertex, int(source))
                return
    raise AssertionError(f"no valid layout for the replicas of expert {expert}")

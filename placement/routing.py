"""The replica-choice rule: which slot serves each token's pick of each expert.

A plan may hold several replicas of a hot expert; every token that picks it must be sent to one. The
evaluation here and the runtime's per-batch dispatch call this same function, so what it does *is* the
rule. It is applied to each layer independently, with its load counters starting afresh in every call
(for the runtime: every batch, which is all a dispatcher knows):

1. A pick of an expert with one replica goes to that replica.
2. Picks of replicated experts are then resolved one by one: token by token (row 0 of `topk_ids`
   first) and, within a token, in top-k order (position 0 first). Each goes to, among the expert's
   replicas, the best by this order:
     a. a replica on a GPU the same token already uses at this layer (the GPUs of its single-replica
        picks and of its replicated picks resolved before this one): no extra hidden-state transfer;
     b. otherwise a replica on the token's home node: the transfer stays on NVLink;
     c. otherwise any replica.
   Within the best non-empty tier the least loaded replica wins, ties to the lowest slot id. What
   "least loaded" counts is the rule's `balance` (`ReplicaRule`):
     - "replica": the tokens given to that replica so far (every pick resolved before this one);
     - "gpu": the picks its GPU serves so far in the call: all of the call's single-replica picks
       (known before any replicated pick is resolved) plus the replicated picks resolved before.
   With `home_first=False` tiers b and c are one: balance decides between the home node and the
   others (on one node the two rules are the same).
3. With `repair` (the default rule), the busiest GPU is then relieved, layer by layer, along chains
   of replicas. A replicated pick may move to any other replica of its expert; with `home_first`, a
   pick that step 2 left on its home node only to one on that node. Each GPU at the layer's highest
   load in turn is relieved by the shortest chain of moves that ends on a GPU at least two picks
   lighter: one pick off the busy GPU onto a second GPU, one of that GPU's picks onto a third, and so
   on, so only the two ends change load. The chain is found breadth first: the GPUs one move away,
   each reached by its best move (the fewest added hidden-state transfers: +1 onto a GPU the token
   does not use yet, -1 off its only pick on a GPU; then the lowest slot, the earliest pick), then
   those two moves away, and so on; the last move is the best onto a light enough GPU, by added
   transfers, then that GPU's load, slot and pick. When a GPU at the highest load has no chain, the
   moves made since that load last dropped are undone: they did not lower it. Then no choice of
   replicas makes the busiest GPU lighter (with the single-replica picks where they are): every GPU
   its chains reach is at most one pick lighter than it, and their picks can only move among them.
   So the repair lowers the busiest GPU's load, which sets the layer's compute time and vLLM's
   balancedness, as far as the replicas allow.

Why this order: the hidden state goes once to every distinct GPU a token uses, so reusing a GPU is free
and the home node is cheap. "replica" keeps an expert's replicas evenly busy; "gpu" lets replicas
even out the GPUs, which is what balancedness and the busiest GPU's compute measure. Step 2 decides
pick by pick, before it knows where the call's later picks go, so tier a can pile picks on a GPU
that ends up the busiest; the repair looks at the whole call, which a dispatcher has, and by the
cost model a pick off the busiest GPU is worth several transfers (`ClusterSpec.overload_weight`), more
than a chain of a few moves adds (docs/placement.md has the measured family; `DEFAULT_RULE` is the
one the runtime uses).

Speed: picks of single-replica experts are one gather. Only picks of replicated experts are resolved
in a Python loop over plain lists (their tiers a/b against the single-replica GPUs are precomputed with
numpy). On half the ESFT trace (4k tokens x 26 layers x top-6) with 8 redundant slots per layer
holding second replicas of the 8 busiest experts, as EPLB would (~205k of 641k picks replicated), that
is ~0.25-0.6 s on one core. The repair searches one chain per move, a few numpy calls per GPU
level of the search over the layer's replicated picks: on that batch ~4.8 s more on that unbalanced
plan and ~1.7 s more on EPLB's and affinity's plans (~5000 moves over 26 layers, ~0.35 ms each;
the one-hop repair it replaced took 0.1-0.4 s, in passes over all layers at once). The runtime's
calls, one layer of one batch each, cost what they did with the one-hop repair: ~0.5 ms for 32
tokens and ~1.9 ms for 256, the repair included (EPLB's 1 x 8 x 9 plan on ESFT intent).

While a worker is down the runtime passes `live_gpus`: the same rule then chooses among the live
replicas only (the plan's replicas are the redundancy), and a pick of an expert without one gets -1.

`first_occurrence` and `gpu_load` read routed picks for `evaluate` and `cost`: distinct GPUs (nodes)
per token-layer, and the picks every GPU serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology

_SAME_GPU, _HOME_NODE, _ELSEWHERE = 0, 1, 2  # tiers a, b, c of the rule


@dataclass(frozen=True)
class ReplicaRule:
    """One member of the rule family (module docstring).

    balance: "replica" (least-loaded replica of the expert) or "gpu" (replica on the least-loaded GPU).
    home_first: whether the home-node tier (b) comes before balance.
    repair: whether step 3 relieves the busiest GPU after the picks are resolved.
    """

    balance: str = "gpu"
    home_first: bool = True
    repair: bool = False

    def __post_init__(self) -> None:
        if self.balance not in ("replica", "gpu"):
            raise PlacementError(f"balance must be 'replica' or 'gpu', got {self.balance!r}")

    @property
    def name(self) -> str:
        return self.balance + ("" if self.home_first else "-any-node") + ("-repair" if self.repair else "")


RULES: dict[str, ReplicaRule] = {rule.name: rule for rule in (
    ReplicaRule("replica"), ReplicaRule("gpu"), ReplicaRule("gpu", repair=True), ReplicaRule("replica", False),
    ReplicaRule("gpu", False), ReplicaRule("gpu", False, repair=True))}
DEFAULT_RULE = RULES["gpu-repair"]


def assign_slots(plan: Plan, topk_ids: np.ndarray, home_node: np.ndarray,
                 rule: ReplicaRule = DEFAULT_RULE, live_gpus: np.ndarray | None = None) -> np.ndarray:
    """The slot serving every pick, by the rule in the module docstring.

    topk_ids: `[T, L, k]` int, logical expert ids in `[0, E)`; L must be the plan's layer count.
    home_node: `[T]` int, each token's home node in `[0, N)` (`RoutingTrace.home_node_of_token`).
    rule: the member of the rule family; the runtime uses the default.
    live_gpus: `[G]` bool, the GPUs that can serve (a worker down is False); None: all. The rule then
    chooses among the live replicas only, and a pick of an expert with no live replica gets slot -1.
    Returns `[T, L, k]` int64 slot ids in `[0, P)` (or -1, see `live_gpus`); slot `[t, l, j]` holds
    expert `topk_ids[t, l, j]`.
    """
    ids, home = _checked(plan, topk_ids, home_node)
    table, counts = plan.logical_to_physical, plan.replica_count
    if live_gpus is not None:
        table, counts = live_replicas(plan, live_gpus)
    layers = np.arange(plan.num_layers)[None, :, None]
    slots = table[layers, ids, 0]  # [T, L, k] each expert's first (live) replica, -1 where none is live
    replicated = counts[layers, ids] > 1  # [T, L, k] picks the loop must resolve
    if replicated.any():
        _resolve_replicated(plan, table, ids, home, slots, replicated, rule)
        if rule.repair:
            _relieve_along_chains(plan.topology, table, ids, home, slots, replicated, rule.home_first)
    return slots


def live_replicas(plan: Plan, live_gpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`plan.logical_to_physical` and `plan.replica_count` with the replicas on dead GPUs left out.

    live_gpus: `[G]` bool.  Returns `[L, E, R]` int64 slots of the live replicas in slot order, -1
    padded, and `[L, E]` int64 their counts (0: no live replica).
    """
    table = plan.logical_to_physical
    live = (table >= 0) & np.asarray(live_gpus, dtype=bool)[plan.topology.gpu_of_slot[table]]  # [L, E, R]
    order = np.argsort(~live, axis=2, kind="stable")  # live replicas first, slot order kept
    return np.take_along_axis(np.where(live, table, -1), order, axis=2), live.sum(axis=2)


def first_occurrence(values: np.ndarray) -> np.ndarray:
    """`[T, L, k]` bool: True at the first pick of every distinct value within each token-layer.

    values: `[T, L, k]` int, e.g. the GPU or node of every pick. Summing the result over k counts the
    distinct GPUs (nodes) a token uses at a layer; masking with it counts one transfer per destination.
    """
    k = values.shape[2]
    earlier = np.tril(np.ones((k, k), dtype=bool), -1)  # [k, k] position i vs an earlier position j
    repeated = ((values[..., :, None] == values[..., None, :]) & earlier).any(axis=3)
    return ~repeated


def gpu_load(topology: Topology, slots: np.ndarray) -> np.ndarray:
    """`[L, G]` int64: picks served by every GPU at every layer, from `[T, L, k]` slot ids."""
    num_layers, num_gpus = slots.shape[1], topology.num_gpus
    layer = np.broadcast_to(np.arange(num_layers)[None, :, None], slots.shape)
    index = (layer * num_gpus + topology.gpu_of_slot[slots]).ravel()
    return np.bincount(index, minlength=num_layers * num_gpus).reshape(num_layers, num_gpus)


def _checked(plan: Plan, topk_ids: np.ndarray, home_node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(topk_ids)
    if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
        raise PlacementError(f"topk_ids must be integer [tokens, layers, k], got {ids.dtype} {ids.shape}")
    plan.check_matches(ids.shape[1], plan.num_logical_experts, "topk_ids")
    if ids.size and (ids.min() < 0 or ids.max() >= plan.num_logical_experts):
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise PlacementError(f"topk_ids holds expert id {bad}, outside [0, {plan.num_logical_experts})")
    home = np.asarray(home_node)
    if home.shape != ids.shape[:1] or not np.issubdtype(home.dtype, np.integer):
        raise PlacementError(f"home_node must be integer [{ids.shape[0]}], got {home.dtype} {home.shape}")
    num_nodes = plan.topology.num_nodes
    if home.size and (home.min() < 0 or home.max() >= num_nodes):
        bad = home.min() if home.min() < 0 else home.max()
        raise PlacementError(f"home_node holds node {bad}, outside [0, {num_nodes})")
    return ids.astype(np.int64, copy=False), home.astype(np.int64, copy=False)


def _resolve_replicated(plan: Plan, table: np.ndarray, ids: np.ndarray, home: np.ndarray, slots: np.ndarray,
                        replicated: np.ndarray, rule: ReplicaRule) -> None:
    """Overwrite `slots` at the `replicated` picks with the rule's choice (steps 2a-c) among the
    replicas in `table` (`[L, E, R]`, -1 padded: `plan.logical_to_physical` or its live part)."""
    topology = plan.topology
    num_tokens, num_layers, _ = ids.shape
    num_slots, num_gpus = topology.num_slots, topology.num_gpus
    # The picks to resolve, in the rule's order: layer by layer, then token, then top-k position.
    layer, token, position = np.nonzero(replicated.transpose(1, 0, 2))  # each [n]
    expert = ids[token, layer, position]
    candidates = table[layer, expert]  # [n, R] slots, -1 padded
    valid = candidates >= 0
    candidate_gpu = np.where(valid, topology.gpu_of_slot[candidates], -1)  # [n, R]
    single = ~replicated & (slots >= 0)  # [T, L, k] picks with one (live) replica
    single_gpu = np.where(single, topology.gpu_of_slot[slots], -2)  # [T, L, k], -2 elsewhere
    on_used_gpu = (candidate_gpu[:, :, None] == single_gpu[token, layer][:, None, :]).any(axis=2)
    on_home = (topology.node_of_slot[candidates] == home[token][:, None]) & rule.home_first
    static_tier = np.where(on_used_gpu, _SAME_GPU, np.where(on_home, _HOME_NODE, _ELSEWHERE))  # [n, R]

    # Load counters are indexed by layer * P + slot ("replica") or layer * G + GPU ("gpu") so one
    # flat list serves every layer, and hold load * slot_bound. A candidate's sort key (tier, load,
    # slot) is packed into one int, (tier * load_bound + load) * slot_bound + slot; `base` is that key
    # at load 0 and the static tier. Candidates are flattened row-major (padding dropped): pick i owns
    # [start[i], start[i] + count[i]).
    load_bound = num_tokens * ids.shape[2] + 1
    slot_bound = num_layers * num_slots
    flat_slot = (candidates + (layer * num_slots)[:, None])[valid]
    base = (static_tier[valid] * load_bound) * slot_bound + flat_slot
    count = valid.sum(axis=1)
    start = np.cumsum(count) - count
    if rule.balance == "gpu":
        counter = (candidate_gpu + (layer * num_gpus)[:, None])[valid]
        picks_layer = np.broadcast_to(np.arange(num_layers)[None, :, None], ids.shape)[single]
        load = (np.bincount(picks_layer * num_gpus + single_gpu[single], minlength=num_layers * num_gpus)
                * slot_bound).tolist()
    else:
        counter = flat_slot
        load = [0] * slot_bound
    flat_slot, flat_gpu, base, counter = (flat_slot.tolist(), candidate_gpu[valid].tolist(), base.tolist(),
                                          counter.tolist())
    chosen: list[int] = []
    current_row = -1
    for row, first, stop in zip((layer * num_tokens + token).tolist(), start.tolist(),
                                (start + count).tolist()):
        if row != current_row:  # a new token-layer: no replicated pick resolved yet
            current_row, used_gpus = row, set()
        best_key = best_index = -1
        for index in range(first, stop):
            key = (flat_slot[index] if flat_gpu[index] in used_gpus else base[index]) + load[counter[index]]
            if best_key < 0 or key < best_key:
                best_key, best_index = key, index
        load[counter[best_index]] += slot_bound
        used_gpus.add(flat_gpu[best_index])
        chosen.append(flat_slot[best_index])
    slots[token, layer, position] = np.asarray(chosen, dtype=np.int64) - layer * num_slots


def _relieve_along_chains(topology: Topology, table: np.ndarray, ids: np.ndarray, home: np.ndarray,
                          slots: np.ndarray, replicated: np.ndarray, home_first: bool) -> None:
    """Step 3 of the rule (module docstring), in place on `slots`, layer by layer.

    A layer's replicated picks are its candidates to move, each to any other replica of its expert
    (with `home_first`, to one on the home node where step 2 left it there). A shortest chain is found
    breadth first over GPUs, all GPUs one move away before those two away; a GPU is reached by the
    best move onto it from the GPUs reached before (fewest added transfers, then slot, then pick), and
    the chain ends at the best move, by the same keys after the target GPU's load, onto a GPU at least
    two picks lighter than the busiest.
    """
    gpu_of_slot, node_of_gpu, num_gpus = topology.gpu_of_slot, topology.node_of_gpu, topology.num_gpus
    for layer in np.flatnonzero(replicated.any(axis=(0, 2))).tolist():
        token, position = np.nonzero(replicated[:, layer])  # the rule's pick order
        target = table[layer, ids[token, layer, position]]  # [n, R] the replicas of each pick's expert, -1 pad
        picked = slots[token, layer, position]  # [n] each candidate pick's slot, written back at the end
        now = gpu_of_slot[picked]  # [n] its GPU
        if home_first:  # a pick step 2 left on its home node keeps to it
            at_home = node_of_gpu[now] == home[token]
            elsewhere = topology.node_of_slot[target] != home[token][:, None]
            target = np.where(at_home[:, None] & elsewhere, -1, target)
        target_gpu = np.where(target >= 0, gpu_of_slot[target], -1)
        served = slots[:, layer] >= 0  # [T, k] picks with no live replica (-1) load no GPU
        row, _ = np.nonzero(served)
        uses = np.zeros((slots.shape[0], num_gpus), dtype=np.int64)  # [T, G] each token's picks per GPU
        np.add.at(uses, (row, gpu_of_slot[slots[:, layer][served]]), 1)
        load = uses.sum(axis=0)
        moved: list[tuple[int, int]] = []  # (pick, old slot) since the highest load last dropped
        while True:
            top = int(load.max())
            stuck = False
            for busy in np.flatnonzero(load == top).tolist():
                chain = _shortest_chain(busy, top, now, target, target_gpu, token, uses, load)
                if chain is None:
                    stuck = True
                    break
                for pick, slot in chain:
                    moved.append((pick, int(picked[pick])))
                    _move(pick, slot, gpu_of_slot, picked, now, token, uses, load)
            if stuck:
                for pick, old in reversed(moved):  # they did not lower the highest load
                    _move(pick, old, gpu_of_slot, picked, now, token, uses, load)
                break
            moved = []
        slots[token, layer, position] = picked


def _shortest_chain(busy: int, top: int, now: np.ndarray, target: np.ndarray, target_gpu: np.ndarray,
                    token: np.ndarray, uses: np.ndarray, load: np.ndarray) -> list[tuple[int, int]] | None:
    """The moves `(pick, slot)` of the chain from GPU `busy` (`_relieve_along_chains`), first move first;
    None when no GPU at least two picks lighter than `top` can be reached."""
    reached_by: dict[int, tuple[int, int] | None] = {busy: None}  # GPU -> the move onto it
    reached = np.zeros(load.size, dtype=bool)
    reached[busy] = True
    frontier = reached.copy()
    while True:
        on_frontier = np.flatnonzero(frontier[now])
        row, column = np.nonzero(target_gpu[on_frontier] >= 0)
        pick = on_frontier[row]
        onto = target_gpu[pick, column]
        fresh = ~reached[onto]
        pick, column, onto = pick[fresh], column[fresh], onto[fresh]
        if pick.size == 0:
            return None
        slot = target[pick, column]
        owner = token[pick]
        added = (uses[owner, onto] == 0).astype(np.int64) - (uses[owner, now[pick]] == 1)
        lighter = load[onto] <= top - 2
        if lighter.any():
            pick, slot, onto, added = pick[lighter], slot[lighter], onto[lighter], added[lighter]
            best = np.lexsort((pick, slot, load[onto], added))[0]
            chain, gpu = [(int(pick[best]), int(slot[best]))], int(now[pick[best]])
            while (move := reached_by[gpu]) is not None:
                chain.append(move)
                gpu = int(now[move[0]])
            return chain[::-1]
        order = np.lexsort((pick, slot, added))
        first = order[np.unique(onto[order], return_index=True)[1]]  # the best move onto every GPU reached
        for index in first.tolist():
            reached_by[int(onto[index])] = (int(pick[index]), int(slot[index]))
        frontier[:] = False
        frontier[onto[first]] = True
        reached |= frontier


def _move(pick: int, slot: int, gpu_of_slot: np.ndarray, picked: np.ndarray, now: np.ndarray, token: np.ndarray,
          uses: np.ndarray, load: np.ndarray) -> None:
    """Candidate `pick` to `slot`, its GPU, its token's GPU counts and the loads following."""
    old, new = int(now[pick]), int(gpu_of_slot[slot])
    picked[pick] = slot
    uses[token[pick], old] -= 1
    load[old] -= 1
    uses[token[pick], new] += 1
    load[new] += 1
    now[pick] = new

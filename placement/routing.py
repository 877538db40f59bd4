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
3. With `repair` (the default rule), the busiest GPU is then relieved, layer by layer: while every GPU
   at the layer's highest load serves a pick of a replicated expert whose other replica sits on a GPU
   at least two picks lighter, one such pick moves there, the move adding the fewest hidden-state
   transfers first (+1 to a GPU the token does not use yet, -1 off its only pick on the busy GPU),
   then to the lightest GPU, the lowest slot, the earliest pick; with `home_first` a pick never leaves
   its home node. When a GPU at the highest load has no such move, the moves made since the highest
   load last dropped are undone: they did not lower it. So the repair lowers the busiest GPU's
   load, which sets the layer's compute time and vLLM's balancedness, and touches nothing else.

Why this order: the hidden state goes once to every distinct GPU a token uses, so reusing a GPU is free
and the home node is cheap. "replica" keeps an expert's replicas evenly busy; "gpu" lets replicas
even out the GPUs, which is what balancedness and the busiest GPU's compute measure. Step 2 decides
pick by pick, before it knows where the call's later picks go, so tier a can pile picks on a GPU
that ends up the busiest; the repair looks at the whole call, which a dispatcher has, and by the
cost model a pick off the busiest GPU is worth several transfers (`ClusterSpec.overload_weight`)
(docs/placement.md has the measured family; `DEFAULT_RULE` is the one the runtime uses).

Speed: picks of single-replica experts are one gather. Only picks of replicated experts are resolved
in a Python loop over plain lists (their tiers a/b against the single-replica GPUs are precomputed with
numpy). On half the ESFT trace (4k tokens x 26 layers x top-6) with 8 redundant slots per layer
holding second replicas of the 8 busiest experts, as EPLB would (~205k of 641k picks replicated), that
is ~0.25-0.6 s on one core. The repair makes numpy passes over the candidates on the busiest GPUs
only, as many as the layer that needs most levels: on that batch ~1.7 s more (~1000 moves in one
layer of that unbalanced plan), 0.1-0.4 s more on EPLB's and affinity's plans; a runtime batch of tens
of tokens moves a few picks.

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
            _relieve_busiest(plan.topology, table, counts, ids, home, slots, replicated, rule.home_first)
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


def _relieve_busiest(topology: Topology, table: np.ndarray, counts: np.ndarray, ids: np.ndarray, home: np.ndarray,
                     slots: np.ndarray, replicated: np.ndarray, home_first: bool) -> None:
    """Step 3 of the rule (module docstring), in place on `slots`, in numpy passes over all layers.

    Candidates are (pick, other replica) pairs of the `replicated` picks, in the rule's pick order. A
    pass reads only the candidates on GPUs at their layer's highest load: those of picks never moved
    are sorted by (layer, GPU) once and sliced, those of moved picks are kept aside, so a pass costs
    the busiest GPUs' picks, not the call's.
    """
    num_layers, num_gpus = slots.shape[1], topology.num_gpus
    layer, token, position = np.nonzero(replicated.transpose(1, 0, 2))  # each [n], in the rule's order
    expert = ids[token, layer, position]
    width = int(counts[layer, expert].max())
    replica = table[layer, expert, :width]  # [n, R] every replica of the pick's expert, -1 padded
    pick, _ = np.nonzero(replica >= 0)  # [C] each candidate's pick, candidates in pick order
    to_slot = replica[replica >= 0]
    to_gpu = topology.gpu_of_slot[to_slot]
    c_layer, c_token, c_position = layer[pick], token[pick], position[pick]
    leaves_home = np.zeros(pick.size, dtype=bool)
    if home_first:  # a pick never leaves its home node
        leaves_home = topology.node_of_gpu[to_gpu] != home[c_token]
    served = slots >= 0  # picks with no live replica (-1) load no GPU and are never moved
    gpu = np.where(served, topology.gpu_of_slot[np.maximum(slots, 0)], -1)  # [T, L, k]
    load = np.bincount((np.nonzero(served)[1] * num_gpus + gpu[served]),
                       minlength=num_layers * num_gpus).reshape(num_layers, num_gpus)
    # Candidates of unmoved picks by (layer, GPU they are on): `by_place[bounds[i]:bounds[i + 1]]`.
    start_gpu = gpu[c_token, c_layer, c_position]
    place = np.where(to_gpu == start_gpu, num_layers * num_gpus, c_layer * num_gpus + start_gpu)  # own GPU: never
    by_place = np.argsort(place, kind="stable")
    bounds = np.searchsorted(place[by_place], np.arange(num_layers * num_gpus + 1))
    first_of_pick = np.searchsorted(pick, np.arange(layer.size + 1))  # pick i's candidates: [first_of_pick[i], ...[i + 1])
    moved = np.zeros(layer.size, dtype=bool)  # per pick: moved at least once (its candidates kept aside)
    aside = np.zeros(0, dtype=np.int64)  # candidates of moved picks
    level = load.max(axis=1)  # [L] the highest load when the pending moves began
    pending: list[list[tuple[int, int, int]]] = [[] for _ in range(num_layers)]  # (token, position, old slot)
    active = np.ones(num_layers, dtype=bool)

    def put(t: int, at_layer: int, j: int, slot: int) -> None:
        """Pick (t, at_layer, j) to `slot`, its GPUs' loads following."""
        load[at_layer, gpu[t, at_layer, j]] -= 1
        slots[t, at_layer, j], gpu[t, at_layer, j] = slot, topology.gpu_of_slot[slot]
        load[at_layer, gpu[t, at_layer, j]] += 1

    while active.any():
        top = load.max(axis=1)  # [L]
        busy = np.flatnonzero(((load == top[:, None]) & active[:, None]).ravel())  # layer * G + GPU
        lengths = bounds[busy + 1] - bounds[busy]
        sliced = by_place[np.repeat(bounds[busy] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())]
        candidate = np.concatenate([sliced[~moved[pick[sliced]]], aside])
        from_gpu = gpu[c_token[candidate], c_layer[candidate], c_position[candidate]]
        at = c_layer[candidate]
        movable = (active[at] & (load[at, from_gpu] == top[at]) & (load[at, to_gpu[candidate]] <= top[at] - 2)
                   & ~(leaves_home[candidate] & (topology.node_of_gpu[from_gpu] == home[c_token[candidate]])))
        candidate, from_gpu, at = candidate[movable], from_gpu[movable], at[movable]
        relieved = np.zeros((num_layers, num_gpus), dtype=bool)
        relieved[at, from_gpu] = True
        stuck = active & ((load == top[:, None]) & ~relieved).any(axis=1)
        for stuck_layer in np.flatnonzero(stuck).tolist():  # undo what did not lower the highest load
            for t, j, old in reversed(pending[stuck_layer]):
                put(t, stuck_layer, j, old)
        active &= ~stuck
        keep = active[at]
        candidate, from_gpu, at = candidate[keep], from_gpu[keep], at[keep]
        if candidate.size == 0:
            break
        row_gpus = gpu[c_token[candidate], at]  # [m, k]
        added = (~(row_gpus == to_gpu[candidate, None]).any(axis=1)).astype(np.int64) \
            - ((row_gpus == from_gpu[:, None]).sum(axis=1) == 1)
        order = np.lexsort((candidate, to_slot[candidate], load[at, to_gpu[candidate]], added, at))
        ranked, ranked_from = candidate[order], from_gpu[order]
        # The sequential rule's next moves, several per pass: after a move off GPU g the rest of g's
        # candidates wait for the next level, so only each busy GPU's best counts, in rank order. A
        # move changes the keys of the candidates to its target GPU (worse) and of its token's other
        # picks (`added`, either way); so each best is the next move while no move of this pass
        # shares its target or token, and a move whose token has candidates on another busy GPU, or
        # the first best that conflicts, ends the layer's pass.
        _, best = np.unique(c_layer[ranked] * num_gpus + ranked_from, return_index=True)
        best = ranked[np.sort(best)]
        token_row = at * slots.shape[0] + c_token[candidate]
        rows, gpus_of_row = np.unique(np.unique(token_row * num_gpus + from_gpu) // num_gpus, return_counts=True)
        spread = set(rows[gpus_of_row > 1].tolist())  # (layer, token) rows with candidates on two busy GPUs
        first, current_layer, targets, closed = [], -1, set(), False
        for c, at_layer, t, target in zip(best.tolist(), c_layer[best].tolist(), c_token[best].tolist(),
                                          to_gpu[best].tolist()):
            if at_layer != current_layer:
                current_layer, targets, closed = at_layer, set(), False
            if closed or target in targets:
                closed = True
                continue
            targets.add(target)
            closed = at_layer * slots.shape[0] + t in spread
            first.append(c)
            j = int(c_position[c])
            pending[at_layer].append((t, j, int(slots[t, at_layer, j])))
            put(t, at_layer, j, int(to_slot[c]))
        first = np.asarray(first, dtype=np.int64)
        newly = np.unique(pick[first][~moved[pick[first]]])
        moved[newly] = True
        aside = np.concatenate([aside, *(np.arange(first_of_pick[i], first_of_pick[i + 1]) for i in newly.tolist())])
        highest = load.max(axis=1)
        for done_layer in np.flatnonzero(highest < level).tolist():
            pending[done_layer] = []
        level = np.minimum(highest, level)

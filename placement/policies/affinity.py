"""The affinity policy: experts picked together share a GPU and a node, at EPLB's load balance.

EPLB balances load and ignores which experts a token picks together, so a token's k experts land on
almost as many GPUs as a random layout gives. This policy places, per layer, the replicas that
`seeding.replica_counts` asks for (EPLB's rule: spare slots to the busiest experts) so that:

- no GPU serves more than `(1 + max_imbalance)` times the mean load, on each window the statistics
  were merged from (`RoutingStats.window_load`; one window when they were not; each batch of a
  window when the statistics keep them, `RoutingStats.from_trace(window_tokens=...)`): the plan serves
  the next window, and a layout balanced on each past window, not only on their sum, has not fitted
  the noise of one sample of traffic (`partition.LoadCap`). Given the cluster, load above the cap is
  priced instead of coming first: a pick above it costs `ClusterSpec.overload_weight` GPUs per
  token, the model's compute time of a pick over the NVLink time of a GPU per token, so the plan
  minimises the modelled layer time;
- within that, a token's picks touch as few GPUs, and nodes other than its home node, as possible:
  the cost `distinct GPUs + node_weight * remote nodes`, summed over the window's top-k sets, with
  each pick routed to a replica by the runtime's own rule (`set_routing`). Given the cluster
  (`cluster`), node_weight is the cost model's price of a remote node in GPUs
  (`ClusterSpec.remote_node_weight`), so the cost is the dispatch time the model charges and a
  slower network makes the plan keep more tokens on their node;
- every GPU holds exactly `slots_per_gpu` slots and never one expert twice.

Per layer: METIS on the co-activation graph, nodes first and then the GPUs of each node, gives every
expert a GPU; the replicas are seeded there one by one (`seeding`); the replica graph, where the
replicas of a replicated expert link their GPUs, is joined into as few components as swaps can make
it (`partition.connect_replicas`: the runtime's repair moves load along chains of replicas, so only
within a component); swap refinement (`partition`) then brings load under the cap and lowers the
cost, never taking a GPU's last replica of a replicated expert. That runs from `starts` different
METIS partitions (`distinct_partitions`), and each layer keeps the refined layout that scores best (a
local search ends where its start leads it); with `perturbations`, an iterated local search then
kicks that layout by a few random swaps and refines it again, as often, keeping what scores better. A
refinement round builds `[rows, GPUs]` and `[slots, slots]` tables, so its cost grows with rows x
slots: layers where that exceeds `_REFINED_WORK` (every DeepSeek-V3-sized case: 4096 rows on 288
slots already needs ~1.2 s per layer refined in full) are planned by the seeding alone, under the
cap, or, with `sampled_rounds`, refined for that many rounds at most on a sample of their rows that
fits the bound, each round among `_SWAP_VERTICES` vertices (docs/placement.md, "DeepSeek-V3 scale",
for what it costs and buys).
Replicas of hot experts spread over nodes, and their picks go to the replica on a GPU the token
already uses, so replication serves locality as well as balance.

Nothing couples the layers before the migration budget: with `processes`, layers are planned in
processes forked from this one (`forked`), every n-th layer in one, and the plan is the same. A
process refines its layers in lockstep (`partition.refine_layers`): each step scores the layout every
layer's search tries next in one routing call, which pays numpy's per-call cost once for all of them
(docs/placement.md, "Layers refined together": ESFT's layers, refined in full, plan a fifth faster).

Migration-aware: with `max_moves` and the plan in service, each layer offers the layouts on the
path of refinement started from the current layout, and the fresh plan renumbered to keep what it
can; `budget.allocate` spends at most `max_moves` copies across layers where they gain the most.
Budget 0 returns the current plan; a larger budget never scores worse on the window.

Statistics without co-activation (load only, e.g. from vLLM) give every expert a row of its own: the
policy then balances load, and spreads replicas over nodes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from switchyard.placement.budget import allocate, copies_needed, relabel_gpus
from switchyard.placement.cost import ClusterSpec
from switchyard.placement.errors import PlacementError
from switchyard.placement.forked import can_fork, map_forked, usable_cpus
from switchyard.placement.migration import plan_migration
from switchyard.placement.partition import (Layout, LayerRows, LoadCap, Refinement, Score, connect_replicas,
                                            expert_vertices, perturbed, refine_layers, score_layers)
from switchyard.placement.plan import Plan
from switchyard.placement.policies.base import check_capacity
from switchyard.placement.seeding import graph_partition, initial_layouts, replica_counts
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology

# Layers with more rows x slots are seeded only, unless `sampled_rounds` is set. ESFT's largest layer has
# ~3100 rows on 72 slots (225K); 4096 synthetic DeepSeek-V3 rows on 288 slots are 1.2M.
_REFINED_WORK = 1 << 19
_MAX_ROUNDS = 64  # refinement batches per layer at most; ESFT-sized layers settle in ~15
# Larger layers are refined (option `sampled_rounds`) on a sample of rows that brings them to
# _REFINED_WORK (at least _SAMPLED_MIN_ROWS), among _SWAP_VERTICES vertices a round: every slot of
# DeepSeek-V3's 288-slot prefill layout; at 2304 slots, 512 planned as well as 288 (docs/placement.md,
# "Fewer swap candidates") with a swap table 3x as dear.
_SAMPLED_MIN_ROWS = 256
_SWAP_VERTICES = 288
_ROW_PIECES = 512  # rows heavier than 1/512 of a layer's tokens are split, as the rule splits tokens
# `processes=None` forks from this much work (`_planning_work`, rows x slots), a layer seeded only counting
# _SEEDED_ROWS rows. Measured on 2 cores, 2 processes against 1 (docs/placement.md, "Layers in parallel"):
# 0.53-0.78x the time from 1M (0.4-1.3 s in one), 0.6-1.1x at 0.15M (0.1 s), 1.17x for 8 layers seeded only.
_FORKED_WORK = 1 << 19
_SEEDED_ROWS = 64
_OVERLOAD_VALUE = 1e6  # a token of overload weighs this much cost when steps are compared
# Random swaps that kick a layout before it is refined again (option `perturbations`): 2 and 5 did no
# better than 3 on the half/half splits of the four 9-slot ESFT cells short of the GPU cut
# (docs/placement.md, "Iterated local search").
_KICK_SWAPS = 3


@dataclass(frozen=True)
class AffinityPolicy:
    """Co-activation-aware placement (module docstring).

    max_imbalance: the busiest GPU may carry up to this fraction above the mean load.
    node_weight: what one remote node per token costs, in distinct GPUs per token; None: the
        cluster's price (`ClusterSpec.remote_node_weight`), or 1 without a cluster.
    cluster: the hardware the plan is for; it prices remote nodes (give it or node_weight, not both).
    overload_factor: a pick above the cap costs this many times the cluster's price (1, default: the
        model's exchange rate); the live rebalancer raises it while its plans serve the next window
        less balanced than EPLB's (`placement.feedback`). Without a cluster the cap comes first anyway.
    max_moves: with a current plan, the most expert copies the new plan may need (None: plan afresh).
    seed: METIS's seed and the model's random top-k order and home nodes.
    starts: different METIS partitions per refined layer (`distinct_partitions`: seeds `seed`,
        `seed + 1`, ..., a repeated partition skipped), each seeded and refined on the same rows;
        the layout that scores best is the plan. Swap refinement ends in a local optimum that
        depends on where it starts, so more starts find better ones, for as many times the
        refinement's time (3: on ESFT's half/half splits 0.005x fewer of EPLB's GPUs per token than
        1 on average). 1 (default): the kicks below buy more for the time (docs/placement.md,
        "Iterated local search"). Layers sampled or seeded only take the first.
    perturbations: kicks of an iterated local search per refined layer, after the starts: the best
        layout so far takes `_KICK_SWAPS` random allowed swaps (`partition.perturbed`, drawn from the
        seed and the layer) and is refined again, and the result replaces it where it scores better.
        A kick leaves the local optimum the swaps cannot, and lands near it, where the next one often
        scores better; each costs about half a start's time. 8 (default): one start and 8 kicks put
        tokens on fewer GPUs than three starts in every cell of the ESFT benchmark, for 1.7-1.9x
        three starts' time (docs/placement.md, "Iterated local search"); 0: none.
    sampled_rounds: refinement batches, at most, for layers above the work bound (`_REFINED_WORK`),
        on a sample of their rows; 0 (default): those layers are seeded only, under the cap.
    processes: how many processes plan the layers (`forked`: this one and forked children), with
        the same plan as one; None: one per CPU this process may use (`forked.usable_cpus`: its
        affinity mask and its container's CPU quota), at most one per layer, where the plan is large
        enough to pay for the forks (`_FORKED_WORK`), else one; 1 (default): no fork.
    """

    max_imbalance: float = 0.02
    node_weight: float | None = None
    cluster: ClusterSpec | None = None
    overload_factor: float = 1.0
    max_moves: int | None = None
    seed: int = 0
    starts: int = 1
    perturbations: int = 8
    sampled_rounds: int = 0
    processes: int | None = 1
    name: ClassVar[str] = "affinity"

    def __post_init__(self) -> None:
        for option in ("max_imbalance", "node_weight"):
            value = getattr(self, option)
            if value is None and option == "node_weight":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise PlacementError(f"{option} must be a non-negative number, got {value!r}")
        if isinstance(self.overload_factor, bool) or not isinstance(self.overload_factor, (int, float)) \
                or not self.overload_factor > 0:
            raise PlacementError(f"overload_factor must be a positive number, got {self.overload_factor!r}")
        if self.cluster is not None and not isinstance(self.cluster, ClusterSpec):
            raise PlacementError(f"cluster must be a ClusterSpec, got {self.cluster!r}")
        if self.cluster is not None and self.node_weight is not None:
            raise PlacementError("give node_weight or cluster (which prices remote nodes), not both")
        for option in ("max_moves", "seed", "perturbations", "sampled_rounds"):
            value = getattr(self, option)
            if value is None and option == "max_moves":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise PlacementError(f"{option} must be a non-negative integer, got {value!r}")
        if isinstance(self.starts, bool) or not isinstance(self.starts, (int, np.integer)) or self.starts < 1:
            raise PlacementError(f"starts must be a positive integer, got {self.starts!r}")
        if self.processes is not None and (isinstance(self.processes, bool)
                                           or not isinstance(self.processes, (int, np.integer)) or self.processes < 1):
            raise PlacementError(f"processes must be a positive integer or None, got {self.processes!r}")

    @property
    def remote_node_weight(self) -> float:
        """The node_weight the cost uses: given, priced by the cluster, or 1."""
        if self.node_weight is not None:
            return float(self.node_weight)
        return self.cluster.remote_node_weight if self.cluster is not None else 1.0

    def overload_price(self, topology: Topology) -> float:
        """What a pick above the cap costs against the cost (distinct GPUs per token): the cluster's
        exchange rate (`ClusterSpec.overload_weight`), so the plan minimises the modelled layer time,
        times `overload_factor`; without a cluster, infinite: the cap comes first."""
        return np.inf if self.cluster is None else self.cluster.overload_weight(topology.num_gpus) * self.overload_factor

    def process_count(self, stats: RoutingStats, topology: Topology) -> int:
        """How many processes plan `stats`' layers (option `processes`): never more than the layers,
        one where this platform cannot fork."""
        if not can_fork():
            return 1
        if self.processes is not None:
            return max(1, min(int(self.processes), stats.num_layers))
        if self._planning_work(stats, topology) < _FORKED_WORK:
            return 1
        return max(1, min(usable_cpus(), stats.num_layers))

    def _planning_work(self, stats: RoutingStats, topology: Topology) -> int:
        """Rows x slots over the layers, an estimate of what planning costs: a refined layer's distinct
        top-k sets (experts for load-only stats) once per start and half a time per kick, a sampled
        one's sample, `_SEEDED_ROWS` for a layer seeded only."""
        bound = _sampled_row_count(topology)
        work = 0
        for layer in range(stats.num_layers):
            rows = stats.num_experts if stats.topk_sets is None else len(stats.topk_sets[layer])
            if rows > bound:
                rows = bound if self.sampled_rounds else _SEEDED_ROWS
            else:
                rows *= self.starts + self.perturbations / 2  # a kick refines about half as long as a start
            work += int(rows * topology.num_slots)
        return work

    def place(self, stats: RoutingStats, topology: Topology, current: Plan | None = None) -> Plan:
        """A plan for `stats`; with `max_moves` set and `current` given, one reachable from `current`
        with at most `max_moves` expert copies."""
        check_capacity(stats.num_experts, topology)
        budgeted = current is not None and self.max_moves is not None
        if budgeted:
            current.check_matches(stats.num_layers, stats.num_experts, "the statistics")
            topology.check_same(current.topology, "the current plan")
        layers = self._candidates(stats, topology, current if budgeted else None)
        if not budgeted:
            table = np.stack([candidates[-1][0] for candidates in layers])
            return Plan(table, topology, stats.num_experts)
        current_gpu_experts = current.gpu_experts
        moves = [np.array([copies_needed(current_gpu_experts[layer], table.reshape(topology.num_gpus, -1),
                                         stats.num_experts) for table, _ in candidates])
                 for layer, candidates in enumerate(layers)]
        price = self.overload_price(topology)
        values = [np.array([_value(result, price) for _, result in candidates]) for candidates in layers]
        chosen = allocate(moves, values, self.max_moves)
        table = np.stack([candidates[index][0] for candidates, index in zip(layers, chosen)])
        return plan_migration(current, Plan(table, topology, stats.num_experts)).aligned

    def _candidates(self, stats: RoutingStats, topology: Topology, current: Plan | None
                    ) -> list[list[tuple[np.ndarray, Score | None]]]:
        """Per layer, `[P]` tables (slot -> expert) with their scores: the fresh plan last; with
        `current`, the current table first and the path refined from it before the fresh one. The
        layers are independent: with more than one process, every `processes`-th layer goes to the
        same one (`forked.map_forked`), and the result is the same."""
        count = self.process_count(stats, topology)
        pieces = [range(first, stats.num_layers, count) for first in range(count)]
        layers: list[list[tuple[np.ndarray, Score | None]]] = [[] for _ in range(stats.num_layers)]
        for piece, candidates in zip(pieces, map_forked(
                functools.partial(self._piece_candidates, stats, topology, current), pieces)):
            for layer, one in zip(piece, candidates):
                layers[layer] = one
        return layers

    def _piece_candidates(self, stats: RoutingStats, topology: Topology, current: Plan | None, piece: range
                          ) -> list[list[tuple[np.ndarray, Score | None]]]:
        """`_candidates` of the layers in `piece`, in its order; they are seeded in lockstep, once per
        start (option `starts`) while a layer is refined."""
        index = slice(piece.start, piece.stop, piece.step)
        rows = []
        for layer in piece:
            rng = np.random.default_rng([self.seed, layer])
            rows.append(sampled_rows(layer_rows(stats, layer, topology, self.remote_node_weight, rng),
                                     _sampled_row_count(topology), rng))
        load = stats.load[index]
        caps = load.sum(axis=1) / topology.num_gpus * (1 + self.max_imbalance)
        refined = np.array([not one.sampled for one in rows])
        pairs = stats.pair_counts[index] if stats.pair_counts is not None else np.zeros(
            (len(piece), stats.num_experts, stats.num_experts))
        replicas = np.stack([replica_counts(one, topology.num_slots, topology.num_gpus) for one in load])
        price = self.overload_price(topology)
        load_caps = [LoadCap.per_window(stats.windows[:, layer], topology.num_gpus, self.max_imbalance, price)
                     for layer in piece]
        partitions = [distinct_partitions(pairs[at], load[at], topology, self.seed, self.starts if refined[at] else 1)
                      for at in range(len(piece))]
        fresh: list[tuple[np.ndarray, Score | None] | None] = [None] * len(piece)
        for start in range(max(len(one) for one in partitions)):
            preferred = np.stack([one[min(start, len(one) - 1)] for one in partitions])
            # Refinement balances load itself, better from a start that follows co-activation alone.
            experts, gpus = initial_layouts(pairs, load, replicas, preferred, topology, np.where(refined, np.inf, caps))
            seeded = [at for at, one in enumerate(partitions) if start < len(one)]
            layouts = self._fresh_layouts([rows[at] for at in seeded], [experts[at] for at in seeded],
                                          [gpus[at] for at in seeded], [load_caps[at] for at in seeded], topology)
            for at, layout in zip(seeded, layouts):
                if fresh[at] is None or layout[1].better_than(fresh[at][1], price):
                    fresh[at] = layout
        self._kick(rows, fresh, load_caps, topology, piece, refined)
        if current is None:
            return [[one] for one in fresh]
        return self._budget_candidates(rows, fresh, load_caps, topology,
                                       [current.physical_to_logical[layer] for layer in piece],
                                       [current.gpu_experts[layer] for layer in piece], stats.num_experts)

    def _fresh_layouts(self, rows: list[LayerRows], experts: list[np.ndarray], gpus: list[np.ndarray],
                       caps: list[LoadCap], topology: Topology) -> list[tuple[np.ndarray, Score | None]]:
        """Layers' plans from one seeding each (`experts`, `gpus`: `[V]` vertex -> expert, GPU): their
        tables and scores, refined together (`refine_layers`; no score where a layer is seeded only). A
        layer refined in full starts from its replica graph joined (`connect_replicas`); one refined on
        sampled rows starts from the seeding, since its few rounds do not win back the joins' cost in
        GPUs per token (on the tests' synthetic stats, spreading a replica to every GPU first gave 1.914
        against 1.896)."""
        refinements = {}
        for at, (one_rows, one_experts, one_gpus, cap) in enumerate(zip(rows, experts, gpus, caps)):
            rounds, swap_vertices = self._rounds(one_rows)
            if rounds:
                start = one_gpus if one_rows.sampled else connect_replicas(one_rows, one_experts, one_gpus, topology, cap)
                refinements[at] = Refinement(one_rows, one_experts, start, cap, rounds, swap_vertices)
        paths = dict(zip(refinements, refine_layers(list(refinements.values()), topology)))
        layouts: list[tuple[np.ndarray, Score | None]] = []
        for at, (one_experts, one_gpus) in enumerate(zip(experts, gpus)):
            layout, result = paths[at][-1] if at in paths else (one_gpus, None)
            layouts.append((_table(one_experts, layout), result))
        return layouts

    def _kick(self, rows: list[LayerRows], fresh: list[tuple[np.ndarray, Score | None]], caps: list[LoadCap],
              topology: Topology, piece: range, refined: np.ndarray) -> None:
        """Option `perturbations`' iterated local search on the `refined` layers of `piece`, in place
        of `fresh`: each kick swaps `_KICK_SWAPS` random pairs of slots of a layer's best table so far,
        refines the result (the layers together, as the starts are) and keeps it where it scores
        better."""
        price = self.overload_price(topology)
        kicked = np.flatnonzero(refined).tolist()
        # Each layer's kicks are drawn from [seed, layer, 1], a stream apart from its rows' [seed, layer].
        rngs = [np.random.default_rng([self.seed, piece[at], 1]) for at in kicked]
        for _ in range(self.perturbations if kicked else 0):
            refinements = [Refinement(rows[at], fresh[at][0], perturbed(fresh[at][0], topology.gpu_of_slot,
                                                                        topology.num_gpus, _KICK_SWAPS, rng),
                                      caps[at], _MAX_ROUNDS) for at, rng in zip(kicked, rngs)]
            for at, path in zip(kicked, refine_layers(refinements, topology)):
                layout, result = path[-1]
                if result.better_than(fresh[at][1], price):
                    fresh[at] = (_table(fresh[at][0], layout), result)

    def _rounds(self, rows: LayerRows) -> tuple[int, int | None]:
        """Refinement rounds and swap candidates per round of a layer: refined in full, or, where its
        rows are a sample (`sampled_rows`), for `sampled_rounds` at most (0: seeded only)."""
        return (self.sampled_rounds, _SWAP_VERTICES) if rows.sampled else (_MAX_ROUNDS, None)

    def _budget_candidates(self, rows: list[LayerRows], fresh: list[tuple[np.ndarray, Score | None]],
                           caps: list[LoadCap], topology: Topology, current_tables: list[np.ndarray],
                           current_gpu_experts: list[np.ndarray], num_experts: int
                           ) -> list[list[tuple[np.ndarray, Score | None]]]:
        """Layers' candidates under a migration budget: the path refined from each current table, then
        the fresh plan renumbered to keep what it can of the current one (`relabel_gpus`); the paths
        refined together, the renumbered plans scored together."""
        refinements = [Refinement(one_rows, table, topology.gpu_of_slot, cap, *self._rounds(one_rows))
                       for one_rows, table, cap in zip(rows, current_tables, caps)]
        paths = refine_layers(refinements, topology)
        relabelled = [relabel_gpus(gpu_experts, plan[0].reshape(topology.num_gpus, -1), topology).reshape(-1)
                      for gpu_experts, plan in zip(current_gpu_experts, fresh)]
        scores = score_layers([Layout(one_rows, expert_vertices(table, num_experts), topology.gpu_of_slot, cap)
                               for one_rows, table, cap in zip(rows, relabelled, caps)], topology)
        return [[(_table(table, gpus), result) for gpus, result in path] + [(gpu_experts, relabelled_score)]
                for path, table, gpu_experts, relabelled_score in zip(paths, current_tables, relabelled, scores)]


def distinct_partitions(pair_counts: np.ndarray, load: np.ndarray, topology: Topology, seed: int, count: int
                        ) -> list[np.ndarray]:
    """Up to `count` different METIS partitions of one layer (`graph_partition`, `[E]` GPU of each
    expert), from seeds `seed`, `seed + 1`, ...: a seed whose partition repeats an earlier one is
    skipped (METIS gives seeds 0 and 1 the same partition), and at most `2 * count` seeds are tried,
    so a layer whose graph has fewer partitions gets fewer starts."""
    found: list[np.ndarray] = []
    for one_seed in range(seed, seed + 2 * count):
        partition = graph_partition(pair_counts, load, topology, one_seed)
        if not any(np.array_equal(partition, earlier) for earlier in found):
            found.append(partition)
        if len(found) == count:
            break
    return found


def layer_rows(stats: RoutingStats, layer: int, topology: Topology, node_weight: float,
               rng: np.random.Generator) -> LayerRows:
    """One layer's top-k sets as rows for the optimiser (load-only stats: one row per expert).

    Rows heavier than 1/_ROW_PIECES of the layer are split into equal pieces, the picks of each row
    are put in a random order (the rule resolves picks in top-k order, which ids do not give) and
    every row gets a random home node (a token's home is its sequence's, unrelated to its picks);
    rows of load-only stats get none, so replicas share their expert's load evenly.
    """
    if stats.topk_sets is None:
        sets = np.arange(stats.num_experts)[:, None]
        weight = stats.load[layer].astype(np.float64)
    else:
        sets, weight = stats.topk_sets[layer], stats.set_counts[layer]
    keep = weight > 0
    sets, weight = sets[keep], weight[keep]
    piece = weight.sum() / _ROW_PIECES
    if piece > 0:
        pieces = np.ceil(weight / piece).astype(np.int64)
        sets, weight = np.repeat(sets, pieces, axis=0), np.repeat(weight / pieces, pieces)
    sets = np.take_along_axis(sets, np.argsort(rng.random(sets.shape), axis=1), axis=1)
    home = rng.integers(topology.num_nodes, size=len(sets))
    if stats.topk_sets is None:
        home[:] = -1  # one row per expert says nothing about homes: replicas share its load evenly
    return LayerRows(sets, weight, home, node_weight * weight * (topology.num_nodes > 1))


def _sampled_row_count(topology: Topology) -> int:
    """Rows a layer keeps (`sampled_rows`) on `topology`: those that bring it to `_REFINED_WORK`, at
    least `_SAMPLED_MIN_ROWS`; a layer with more is sampled."""
    return max(_REFINED_WORK // topology.num_slots, _SAMPLED_MIN_ROWS)


def sampled_rows(rows: LayerRows, count: int, rng: np.random.Generator) -> LayerRows:
    """`rows` if there are at most `count`, else a sample of about `count` of them in proportion to
    weight (systematic, over a random order), each weighing its share of the total: the sample's
    cost and load estimate the layer's, and it is marked `sampled`."""
    if len(rows.sets) <= count:
        return rows
    order = rng.permutation(len(rows.sets))
    total = rows.weight.sum()
    points = (rng.random() + np.arange(count)) * (total / count)
    picked = order[np.minimum(np.searchsorted(np.cumsum(rows.weight[order]), points, side="right"), len(order) - 1)]
    picked, times = np.unique(picked, return_counts=True)
    weight = times * (total / count)
    return LayerRows(rows.sets[picked], weight, rows.home[picked],
                     rows.node_weight[picked] / rows.weight[picked] * weight, sampled=True)


def _table(expert_of_vertex: np.ndarray, gpu_of_vertex: np.ndarray) -> np.ndarray:
    """`[P]` the expert of every slot: each GPU's vertices in vertex order fill its slots."""
    return expert_of_vertex[np.lexsort((np.arange(len(gpu_of_vertex)), gpu_of_vertex))]


def _value(result: Score | None, price: float) -> float:
    """A layout's worth for the budget (higher is better): the cost with overload at `price` (at most
    `_OVERLOAD_VALUE`: overload first)."""
    return -(result.overload * min(price, _OVERLOAD_VALUE) + result.cost)

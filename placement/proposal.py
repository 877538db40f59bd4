"""A rebalance proposal: the plan a policy would serve next, what it costs to move, what it gains.

`propose(stats, current, policy_name, max_moves, cluster)` plans on a statistics window;
`evaluate_proposal(stats, current, proposed_plan, cluster)` takes a plan from elsewhere instead. Both align the new
plan to the one in service (`migration.plan_migration`: replicas already in place stay in their
slots), and predict both plans' figures on the same window, so the gain is like for like.

Migration-aware policies (those with a `max_moves` option, e.g. affinity) get the current plan and
the budget; the others plan afresh, and a `max_moves` for them is refused rather than ignored.

The window has no token-by-token trace, only each layer's sampled top-k sets and their counts
(`RoutingStats.topk_sets`, `set_counts`). The figures are measured on a trace rebuilt from them, per
layer: every distinct set repeated by its count (rounded by largest remainder), each repetition a one-token sequence (so home
nodes go round the nodes, `RoutingTrace.home_node_of_token`), at most `MAX_EVALUATED_TOKENS` per layer
(counts scaled down beyond that). This keeps which experts are picked together, which is what GPUs
and remote nodes per token depend on, and drops what a set-level view cannot hold: which sets follow
which from one layer to the next, and how tokens group into sequences. Layers without sets
(load-only statistics) contribute only a load-based balancedness: each expert's load split evenly
over its replicas, as vLLM EPLB reports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from switchyard.placement.cost import ClusterSpec
from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import balancedness, evaluate
from switchyard.placement.migration import Migration, plan_migration
from switchyard.placement.plan import Plan
from switchyard.placement.policies import DEFAULT_POLICY, POLICIES, get_policy, planning_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.trace import RoutingTrace
from switchyard.placement.windows import Memory, Resampling

__all__ = [
    "MAX_EVALUATED_TOKENS", "PlanMetrics", "Proposal", "evaluate_proposal", "expected_gpu_load", "propose", "served_gap",
    "set_traces",
]

MAX_EVALUATED_TOKENS = 50_000
"""One-token sequences rebuilt per layer at most; larger windows are scaled down to this."""


@dataclass(frozen=True)
class PlanMetrics:
    """One plan's predicted figures on a window (`evaluate`'s definitions).

    balancedness: vLLM's `sum_l mean_g / sum_l max_g` over every layer: measured GPU loads where the
      layer has sets, load split over replicas where it has none.
    gpus_per_token, remote_nodes_per_token: means over the layers with sets; None without any.
    layer_time_s: simulated seconds of the rebuilt tokens through those layers; None without any.
    """

    balancedness: float
    gpus_per_token: float | None
    remote_nodes_per_token: float | None
    layer_time_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"balancedness": self.balancedness, "gpus_per_token": self.gpus_per_token,
                "remote_nodes_per_token": self.remote_nodes_per_token, "layer_time_s": self.layer_time_s}


@dataclass(frozen=True, eq=False)
class Proposal:
    """What a rebalance would do.

    current: the plan in service.  proposed: the new plan, aligned to `current` (`Migration.aligned`).
    migration: the copies from `current` to `proposed`.  bytes_moved: their bytes at the cluster's
    expert size.  before / after: the figures of `current` / `proposed` on the window.
    evaluated_tokens: one-token sequences rebuilt from the window's sets, over all layers.
    memory: `(windows, decay)`, where the caller knows it: the statistics merge the last `windows`
    windows, each older one weighted `decay` (`placement.windows.planning_stats`).
    resampled: `(windows, run_tokens)` where the plan was made on windows drawn from those windows'
    runs (`planning_stats`' `resampled_windows`); None where it was made on the windows themselves.
    feedback_level: the balance feedback's level affinity's overload was priced at (`placement.feedback`:
    the model's price times `step ** level`); None where no feedback priced the plan.
    """

    policy: str
    current: Plan
    proposed: Plan
    migration: Migration
    bytes_moved: int
    before: PlanMetrics
    after: PlanMetrics
    window_tokens: float
    evaluated_tokens: int
    memory: Memory | None = None
    resampled: Resampling | None = None
    feedback_level: int | None = None

    @property
    def copies_per_layer(self) -> np.ndarray:
        """`[L]` int64: replicas copied into each layer."""
        return np.bincount(self.migration.copies["layer"], minlength=self.current.num_layers)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "replicas_moved": self.migration.num_copies,
                "replicas_moved_per_layer": self.copies_per_layer.tolist(), "bytes_to_copy": self.bytes_moved,
                "current": self.before.to_dict(), "proposed": self.after.to_dict(),
                "window_tokens": self.window_tokens, "evaluated_tokens": self.evaluated_tokens,
                "memory": memory_dict(self.memory, self.resampled), "feedback_level": self.feedback_level}


def memory_dict(memory: Memory | None, resampled: Resampling | None = None) -> dict[str, Any] | None:
    """What a proposal was planned on as JSON, wherever a proposal is shown: its `memory` as `{"windows",
    "decay"}` and `"resampled"`, `{"windows", "run_tokens"}` of its `resampled` draws or None. No memory:
    None."""
    if memory is None:
        return None
    drawn = None if resampled is None else {"windows": resampled[0], "run_tokens": resampled[1]}
    return {"windows": memory[0], "decay": memory[1], "resampled": drawn}


def memory_text(memory: dict[str, Any]) -> str:
    """`memory_dict`'s JSON in words, as the CLI shows a proposal (the dashboard writes the same)."""
    text = f"the last {memory['windows']} window(s), each older one weighted {memory['decay']:g} of the next"
    drawn = memory.get("resampled")  # events recorded before resampled draws were reported lack the key
    if drawn:
        text += f", as {drawn['windows']} windows drawn from their runs of {drawn['run_tokens']:g} tokens"
    return text


def propose(stats: RoutingStats, current: Plan, policy_name: str = DEFAULT_POLICY, max_moves: int | None = None,
            cluster: ClusterSpec | None = None, options: Mapping[str, object] | None = None) -> Proposal:
    """Plan with `policy_name` on `stats` and compare the aligned result with `current` (module doc).

    stats: the window, `[L, E]` like `current`.  max_moves: the most copies (migration-aware policies
    only); None: no bound.  cluster: hardware and model sizes for the layer time and the copy bytes,
    and the cluster a policy that plans for one (affinity) plans for; None: neither (bytes 0,
    layer_time_s None, affinity's load cap first).  options: more of the policy's options (the balance
    feedback's `overload_factor`).
    Raises `PlacementError` for an unknown policy, a bad `max_moves`, statistics that do not match the
    plan or hold no tokens.
    """
    current.check_matches(stats.num_layers, stats.num_experts, "the statistics")
    if not stats.num_tokens > 0:
        raise PlacementError("the statistics window holds no tokens: serve some requests first")
    if policy_name not in POLICIES:
        get_policy(policy_name)  # raises, naming the choices
    migration_aware = "max_moves" in inspect.signature(POLICIES[policy_name]).parameters
    if max_moves is not None and not migration_aware:
        raise PlacementError(f"policy {policy_name!r} plans afresh and cannot bound the moves; leave max_moves "
                             "unset or use a migration-aware policy (affinity)")
    policy = planning_policy(policy_name, cluster, **({"max_moves": max_moves} if migration_aware else {}),
                             **(options or {}))
    return evaluate_proposal(stats, current, policy.place(stats, current.topology, current=current), cluster,
                             policy_name)


def evaluate_proposal(stats: RoutingStats, current: Plan, proposed_plan: Plan, cluster: ClusterSpec | None = None,
                      policy: str = "given") -> Proposal:
    """Compare `proposed_plan`, aligned to `current`, with `current` on `stats` (module doc).

    What `propose` does once its policy has planned, for a plan from elsewhere (one an operator
    reviewed, or an earlier plan to roll back to), so both are judged alike. policy: the name the
    proposal reports. A window without tokens is allowed here: the figures are then those of no load
    (balancedness 1, per-token figures None), since applying a known plan needs no statistics.
    Raises `PlacementError` when `proposed_plan` or `stats` do not match `current`.
    """
    current.check_matches(stats.num_layers, stats.num_experts, "the statistics")
    migration = plan_migration(current, proposed_plan)
    traces = set_traces(stats)
    before = _metrics(current, stats, traces, cluster)
    after = _metrics(migration.aligned, stats, traces, cluster)
    bytes_moved = migration.bytes_moved(cluster.expert_bytes) if cluster is not None else 0
    evaluated = sum(trace.num_tokens for trace in traces if trace is not None)
    return Proposal(policy, current, migration.aligned, migration, bytes_moved, before, after,
                    float(stats.num_tokens), evaluated)


def served_gap(stats: RoutingStats, served: Plan, baseline: Plan, cluster: ClusterSpec | None = None) -> float:
    """`served`'s balancedness on `stats` minus `baseline`'s, each measured as a proposal measures a plan
    (on the sets of the window): what the balance feedback reads from the newest window."""
    traces = set_traces(stats)
    return _metrics(served, stats, traces, cluster).balancedness - _metrics(baseline, stats, traces, cluster).balancedness


def set_traces(stats: RoutingStats, max_tokens: int = MAX_EVALUATED_TOKENS) -> list[RoutingTrace | None]:
    """Per layer, a one-layer trace of one-token sequences rebuilt from the sampled top-k sets.

    Each distinct set is repeated about `count` times: counts scaled so a layer has at most
    `max_tokens`, then rounded by largest remainder so the layer keeps its rounded total; None for a
    layer without sets or whose counts round to nothing.
    """
    if stats.topk_sets is None:
        return [None] * stats.num_layers
    traces: list[RoutingTrace | None] = []
    for sets, counts in zip(stats.topk_sets, stats.set_counts):  # [U, k] int64, [U] float64
        total = counts.sum()
        scale = min(1.0, max_tokens / total) if total > 0 else 0.0
        scaled = counts * scale  # [U]
        repeats = np.floor(scaled).astype(np.int64)  # [U]; the remainder goes to the largest fractions
        short = int(round(scaled.sum())) - int(repeats.sum())
        repeats[np.argsort(repeats - scaled, kind="stable")[:short]] += 1
        if repeats.sum() == 0:
            traces.append(None)
            continue
        topk_ids = np.repeat(sets, repeats, axis=0)[:, None, :]  # [T, 1, k]
        traces.append(RoutingTrace(topk_ids, np.ones(len(topk_ids), dtype=np.int64), stats.num_experts))
    return traces


def expected_gpu_load(plan: Plan, load: np.ndarray) -> np.ndarray:
    """`[L, G]` float64: each GPU's load with every expert's load `[L, E]` split evenly over its replicas."""
    physical_to_logical = plan.physical_to_logical  # [L, P]
    per_slot = np.take_along_axis(load, physical_to_logical, axis=1) / np.take_along_axis(
        plan.replica_count, physical_to_logical, axis=1)  # [L, P]
    return per_slot.reshape(plan.num_layers, plan.topology.num_gpus, -1).sum(axis=2)


def expected_balancedness(plan: Plan, load: np.ndarray) -> float:
    """The balancedness of `plan` on `load` `[L, E]`, each expert's load split evenly over its replicas."""
    return balancedness(expected_gpu_load(plan, load))


def _metrics(plan: Plan, stats: RoutingStats, traces: list[RoutingTrace | None],
             cluster: ClusterSpec | None) -> PlanMetrics:
    gpu_load = expected_gpu_load(plan, stats.load)  # [L, G], replaced below where sets are known
    gpus, remote, times = [], [], []
    for layer, trace in enumerate(traces):
        if trace is None:
            continue
        layer_plan = Plan(plan.physical_to_logical[layer:layer + 1], plan.topology, plan.num_logical_experts)
        evaluation = evaluate(layer_plan, trace, cluster)
        gpu_load[layer] = evaluation.gpu_load[0]
        gpus.append(evaluation.gpus_per_token)
        remote.append(evaluation.remote_nodes_per_token)
        if evaluation.layer_time_s is not None:
            times.append(evaluation.layer_time_s)
    return PlanMetrics(
        balancedness=balancedness(gpu_load),
        gpus_per_token=float(np.mean(gpus)) if gpus else None,
        remote_nodes_per_token=float(np.mean(remote)) if remote else None,
        layer_time_s=float(np.sum(times)) if times else None,
    )

"""Plan on the past window, serve the next: how placements hold on traffic they have not seen.

A live cluster plans on the routing it has observed and serves the traffic that comes next with that
plan, until the next rebalance. `serve_windows` replays a trace that way: it cuts the trace into
windows of `window_tokens` consecutive tokens; before window i + 1 every policy plans on the
statistics of windows 0..i, window j weighted `decay ** (i - j)` (`decay` 0: window i alone, the
default), and the plan is evaluated on window i + 1. One plan per window and policy, so the result is
a distribution over windows, not the single number of one half/half split. With `balance_tokens`,
each window's statistics keep the load of every run of that many tokens in it
(`RoutingStats.from_trace`), so a policy that holds its plan on each window's load (affinity) holds
it on each such batch of the past instead (docs/placement.md, "Balance per batch"); with
`resampled_windows` as well, on windows drawn from those batches (`resampled_stats`).
With `feedback`, affinity's price of overload before each window is set by how its plan served the
window before against EPLB's (`placement.feedback`), as the live rebalancer sets it.

Windows are cut at token boundaries, not sequence boundaries (a sequence may straddle two windows, as
traffic does in a live window); a last window shorter than `window_tokens` is dropped.

`PLANNING_HISTORY`, `PLANNING_DECAY` and `ADAPTIVE_MEMORY` are what the live rebalancer plans on (the
state store's last windows, `switchyard serve --stats-history / --stats-decay / --adaptive-memory`,
through `planning_stats`) and what `bench.placement` measures.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from switchyard.placement.cost import ClusterSpec
from switchyard.placement.errors import PlacementError, SwitchyardError, positive_int, unit_interval
from switchyard.placement.evaluate import Evaluation, evaluate
from switchyard.placement.feedback import BASELINE, BalanceFeedback, applies_to, at_level
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.policies.base import Policy
from switchyard.placement.routing import DEFAULT_RULE, ReplicaRule
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace


WINDOW_TOKENS = 1000
"""Tokens per window where no size is given: the benchmark's (an ESFT window then holds parts of 16
sequences on intent, of 5 on law)."""
PLANNING_HISTORY = 3
"""Windows a plan is made on: the last one and the two before it."""
PLANNING_DECAY = 0.5
"""Each older window weighs half the next: a round value, not fitted to any trace. On the benchmark's
served windows it raised affinity's balance in 13 of 14 cells over planning on the last window alone
(docs/placement.md, "The live rebalancer plans the same way")."""
Memory = tuple[int, float]
"""`(history, decay)`: how many windows a plan is made on, and the weight of each older one."""
Resampling = tuple[int, float]
"""`(windows, run_tokens)`: a plan made on that many windows drawn from the runs of `run_tokens` tokens
of the windows of its memory (`planning_stats`' `resampled_windows`)."""
LONGER_MEMORIES: tuple[Memory, ...] = ((6, 0.75), (6, 1.0))
"""What `chosen_memory` may pick besides the memory given: the last 6 windows, decayed by 0.75 or
weighted alike (round values, not fitted). Longer memory forecasts a stationary mix of traffic better,
a drifting one worse (docs/placement.md, "Memory chosen by forecast")."""
ADAPTIVE_MEMORY = True
"""Whether each plan chooses its memory by forecast (`planning_stats`): the live rebalancer's default
(`switchyard serve --adaptive-memory`) and what `bench.placement` measures. On the benchmark's served
windows it narrowed affinity's balance gap to EPLB in 8 of 12 ESFT cells and on 5 of 6 synthetic ones
(docs/placement.md, "Memory chosen by forecast")."""
BALANCE_FEEDBACK = True
"""Whether plans are made at the overload price the balance feedback sets (`placement.feedback`): the
live rebalancer's default (`switchyard serve --balance-feedback`), what `placement windows` and
`bench.placement` serve with."""
FORECAST_WINDOWS = 12
"""The most past windows, the newest, that `planning_stats` scores memories on: six served windows for
the longest of `LONGER_MEMORIES` to forecast; what the live rebalancer reads from the state store."""


@dataclass(frozen=True, eq=False)
class ServedWindow:
    """Every policy's plan (`plans`), made on the windows up to `window - 1` with `memory`, and its
    evaluation on window `window` (`evaluations`); `levels`: the balance feedback's level each policy
    it moves was planned at (`placement.feedback`; empty without feedback)."""

    window: int
    evaluations: dict[str, Evaluation]
    memory: Memory
    plans: dict[str, Plan]
    levels: dict[str, int] = dataclasses.field(default_factory=dict)


def split_windows(trace: RoutingTrace, window_tokens: int) -> list[RoutingTrace]:
    """The trace's full windows of `window_tokens` consecutive tokens, in order."""
    count = trace.num_tokens // positive_int("window_tokens", window_tokens)
    return [trace.slice_tokens(i * window_tokens, (i + 1) * window_tokens) for i in range(count)]


def decayed_stats(window_stats: list[RoutingStats], decay: float) -> RoutingStats:
    """The statistics of all windows, window j of n weighted `decay ** (n - 1 - j)` (the last one 1),
    with each kept window's weighted load in `window_load` (a plan can then be held on each); a
    window that keeps the load of its own pieces (`RoutingStats.windows`) contributes each piece.

    decay: in [0, 1]; 0 keeps only the last window, 1 weighs every window alike.
    """
    if not window_stats:
        raise PlacementError("no windows to merge")
    if unit_interval("decay", decay) == 0 or len(window_stats) == 1:
        return window_stats[-1]
    merged = window_stats[0]
    for stats in window_stats[1:]:
        merged = merged.decayed(decay).merge(stats)
    return dataclasses.replace(merged, window_load=np.concatenate(
        [stats.windows * weight for stats, weight in zip(window_stats, window_weights(len(window_stats), decay))]))


def window_weights(count: int, decay: float) -> np.ndarray:
    """`[count]` the weight of each of `count` windows, oldest first: `decay ** age`, the last one 1."""
    return decay ** np.arange(count - 1, -1, -1.0)


def resampled_stats(stats: RoutingStats, runs_per_window: int, draws: int, seed: int = 0) -> RoutingStats:
    """`stats` with its windows (`RoutingStats.windows`: the runs of tokens it keeps the load of) replaced
    by `draws` windows, each the load of `runs_per_window` runs drawn with replacement, scaled so that
    on every layer the draws add up to the runs' load (as windows merged into stats do).

    A plan held on each past window (affinity's `LoadCap`) has balanced those windows, not the next
    one, which is another draw of the same sequences and topics; held on windows resampled from the
    traffic it is made on, it needs headroom where the load varies between draws: a bootstrap of the
    served window (docs/placement-experiments.md, "The cap on resampled windows"). The same draws on
    every layer, as a window of traffic spans them all.
    """
    positive_int("runs_per_window", runs_per_window)
    positive_int("draws", draws)
    runs = stats.windows
    picked = np.random.default_rng(seed).integers(len(runs), size=(draws, runs_per_window))
    drawn = runs[picked].sum(axis=1)  # [draws, L, E]
    drawn_total = drawn.sum(axis=(0, 2))  # [L]
    scale = np.divide(runs.sum(axis=(0, 2)), drawn_total, out=np.zeros(runs.shape[1]), where=drawn_total > 0)
    return dataclasses.replace(stats, window_load=drawn * scale[None, :, None])


def check_resampled(resampled_windows: object, balance_tokens: float | None, window_tokens: float | None = None,
                    error: type[SwitchyardError] = PlacementError, name: str = "resampled_windows",
                    runs_name: str = "balance_tokens") -> None:
    """`error` unless `resampled_windows` is None, or a positive integer with runs of `balance_tokens`
    tokens to draw its windows from, runs no longer than a window (`window_tokens`, where given).
    `name` and `runs_name`: what the message calls the two (a CLI's options, a Serve application's
    arguments; the cluster passes its `InvalidSetting` for settings)."""
    if resampled_windows is None:
        return
    positive_int(name, resampled_windows, error)
    if balance_tokens is None:
        raise error(f"{name} draws windows from the runs of {runs_name} tokens: give {runs_name} too")
    if window_tokens is not None and balance_tokens > window_tokens:
        raise error(f"{name} draws windows from the runs of {runs_name} tokens in each window: {runs_name} must be "
                    f"at most the window's {window_tokens:g} tokens, got {balance_tokens:g}")


def _runs_per_draw(windows: Sequence[RoutingStats]) -> int:
    """How many runs a resampled window draws: as many as the windows planned on hold, on average."""
    return max(1, round(statistics.fmean(len(window.windows) for window in windows)))


def resampled_window(stats: RoutingStats, draws: int | None) -> RoutingStats:
    """`stats` (one planning window, or a trace planned on once) with `draws` windows drawn from its runs,
    each as many runs as it keeps: a bootstrap of the whole window (`resampled_stats`); None: `stats`."""
    return stats if draws is None else resampled_stats(stats, _runs_per_draw([stats]), draws)


def forecast_error(window_stats: Sequence[RoutingStats], memory: Memory) -> float | None:
    """How far the load a plan with `memory` is made on falls from the load of the window it serves:
    for every window after the first, the expert load of the windows before it (the last `history`,
    decayed) against its own, each as shares of its layer's load, their L1 distance averaged over
    layers; the mean over those windows. None with fewer than two windows."""
    history, decay = positive_int("history", memory[0]), unit_interval("decay", memory[1])
    errors = []
    for served in range(1, len(window_stats)):
        past = window_stats[max(0, served - history):served]
        load = sum(weight * stats.load for weight, stats in zip(window_weights(len(past), decay), past))
        errors.append(np.abs(_shares(window_stats[served].load) - _shares(load)).sum(axis=1).mean())
    return float(np.mean(errors)) if errors else None


def _shares(load: np.ndarray) -> np.ndarray:
    """`[L, E]` each expert's share of its layer's load (0 where a layer has none)."""
    total = load.sum(axis=1, keepdims=True)
    return np.divide(load, total, out=np.zeros_like(load, dtype=np.float64), where=total > 0)


def chosen_memory(window_stats: Sequence[RoutingStats], memories: Sequence[Memory]) -> Memory:
    """The memory among `memories` whose load forecasts `window_stats` (oldest first) best
    (`forecast_error`): the one a plan on these windows should use for the next. The first where the
    windows cannot tell (fewer than two) and on a tie.

    Load that the past forecasts well is load a plan balanced on the past keeps balanced: on traffic
    whose mix of topics is stationary, longer memory averages the noise of single windows out; on
    traffic that drifts, it plans on a mix that has gone.
    """
    errors = [forecast_error(window_stats, memory) for memory in memories]
    if errors[0] is None:
        return memories[0]
    return memories[int(np.argmin(errors))]


def planning_windows(memory: Memory, adaptive: bool) -> int:
    """How many of the newest past windows `planning_stats` reads with `memory` and `adaptive`."""
    return max(memory[0], FORECAST_WINDOWS) if adaptive else memory[0]


def planning_stats(past: Sequence[RoutingStats], memory: Memory, adaptive: bool,
                   resampled_windows: int | None = None) -> tuple[RoutingStats, Memory]:
    """What the plan for the next window is made on, from the windows before it (oldest first), and the
    memory used: their last `history` decayed (`decayed_stats`) by `memory`, or with `adaptive` by the
    memory `chosen_memory` picks from `memory` and `LONGER_MEMORIES` on the last `planning_windows`.
    The memory returned counts the windows merged: fewer than `history` while fewer have passed.

    resampled_windows: instead of those windows' own runs (`RoutingStats.windows`), this many windows
    drawn from them (`resampled_stats`), each of as many runs as a merged window holds on average.
    """
    past = list(past[-planning_windows(memory, adaptive):])
    if adaptive:
        memory = chosen_memory(past, (memory, *LONGER_MEMORIES))
    history, decay = memory
    merged = past[-history:]
    stats = decayed_stats(merged, decay)
    if resampled_windows is not None:
        stats = resampled_stats(stats, _runs_per_draw(merged), resampled_windows)
    return stats, (min(history, len(past)), decay)


def serve_windows(trace: RoutingTrace, topology: Topology, policies: Mapping[str, Policy],
                  window_tokens: int = WINDOW_TOKENS, decay: float = 0.0, history: int = 4,
                  cluster: ClusterSpec | None = None, rule: ReplicaRule = DEFAULT_RULE,
                  balance_tokens: int | None = None, adaptive_memory: bool = False,
                  on_window: Callable[[int, int], None] | None = None,
                  resampled_windows: int | None = None, feedback: BalanceFeedback | None = None
                  ) -> list[ServedWindow]:
    """Plan on windows i - history + 1 .. i (decayed), evaluate on window i + 1, for every i and policy.

    policies: name -> policy; each plans afresh (no current plan) before every served window.
    balance_tokens: the planning statistics keep the load of every run of this many tokens of each
        window (module docstring); None: of each window.
    adaptive_memory: before each served window, choose `(history, decay)` or one of
        `LONGER_MEMORIES` by `chosen_memory` on the windows before it (`planning_stats`).
    on_window: called with `(i, n)` before the i-th of the n served windows is planned and served
        (progress on a long trace).
    resampled_windows: plan on this many windows drawn from the planning windows' runs of
        `balance_tokens` (`planning_stats`, as many runs a draw as a window holds) instead of on the
        planning windows themselves; needs `balance_tokens`.
    Returns one `ServedWindow` per window from 1 on; `PlacementError` when the trace has fewer than
    two full windows.
    """
    windows = split_windows(trace, window_tokens)
    positive_int("history", history)
    check_resampled(resampled_windows, balance_tokens, window_tokens)
    if len(windows) < 2:
        raise PlacementError(
            f"the trace's {trace.num_tokens} tokens make {len(windows)} window(s) of {window_tokens}; "
            "serving needs at least two"
        )
    levels = {} if feedback is None else {name: 0 for name, policy in policies.items() if applies_to(policy.name)}
    # The feedback's reference, planned and served beside the policies where they do not include it.
    reference = {BASELINE: get_policy(BASELINE)} if levels and BASELINE not in policies else {}
    window_stats = [RoutingStats.from_trace(window, window_tokens=balance_tokens) for window in windows]
    served = []
    for index in range(1, len(windows)):
        if on_window is not None:
            on_window(index, len(windows) - 1)
        stats, memory = planning_stats(window_stats[:index], (history, decay), adaptive_memory, resampled_windows)
        planners = {name: at_level(policy, feedback, levels[name]) if name in levels else policy
                    for name, policy in {**policies, **reference}.items()}
        plans = {name: policy.place(stats, topology) for name, policy in planners.items()}
        evaluations = {name: evaluate(plan, windows[index], cluster, rule) for name, plan in plans.items()}
        served.append(ServedWindow(index, {name: evaluations[name] for name in policies}, memory,
                                   {name: plans[name] for name in policies}, dict(levels)))
        for name in levels:  # the served balance sets the next plan's level
            gap = evaluations[name].balancedness - evaluations[BASELINE].balancedness
            levels[name] = feedback.next_level(levels[name], gap)
    return served


@dataclass(frozen=True)
class ServedSummary:
    """One policy over the served windows: the medians of its figures, and of each against the
    baseline's in the same window (how `bench.placement` judges issue 17's targets).

    balance_gap: the median of its balancedness minus the baseline's. gpus_ratio, remote_ratio,
    time_ratio: the medians of its value over the baseline's, over the windows where the baseline's is
    above 0. faster: the share of windows where its MoE time is below the baseline's. Each is None
    without a baseline, and the time figures without a cluster; a ratio also where the baseline's value
    is 0 in every window (remote nodes on one node).
    """

    policy: str
    balancedness: float
    gpus_per_token: float
    remote_nodes_per_token: float
    layer_time_s: float | None
    balance_gap: float | None
    gpus_ratio: float | None
    remote_ratio: float | None
    time_ratio: float | None
    faster: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize_served(served: Sequence[ServedWindow], baseline: str | None = None) -> list[ServedSummary]:
    """A `ServedSummary` per policy of `served` (in its order), against `baseline` where it is one of them."""
    names = list(served[0].evaluations)
    base = [item.evaluations[baseline] for item in served] if baseline in names else None

    def against(ours: list[Evaluation], figure: Callable[[Evaluation, Evaluation], float | None],
                aggregate: Callable[[list[float]], float] = statistics.median) -> float | None:
        """`aggregate` of `figure` over the windows where it is defined; None where it never is."""
        if base is None:
            return None
        known = [value for mine, theirs in zip(ours, base) if (value := figure(mine, theirs)) is not None]
        return aggregate(known) if known else None

    def ratio(attribute: str) -> Callable[[Evaluation, Evaluation], float | None]:
        def figure(mine: Evaluation, theirs: Evaluation) -> float | None:
            value, reference = getattr(mine, attribute), getattr(theirs, attribute)
            return None if value is None or not reference else value / reference
        return figure

    summaries = []
    for name in names:
        ours = [item.evaluations[name] for item in served]
        timed = all(evaluation.layer_time_s is not None for evaluation in ours)
        summaries.append(ServedSummary(
            policy=name,
            balancedness=statistics.median(e.balancedness for e in ours),
            gpus_per_token=statistics.median(e.gpus_per_token for e in ours),
            remote_nodes_per_token=statistics.median(e.remote_nodes_per_token for e in ours),
            layer_time_s=statistics.median(e.layer_time_s for e in ours) if timed else None,
            balance_gap=against(ours, lambda mine, theirs: mine.balancedness - theirs.balancedness),
            gpus_ratio=against(ours, ratio("gpus_per_token")),
            remote_ratio=against(ours, ratio("remote_nodes_per_token")),
            time_ratio=against(ours, ratio("layer_time_s")) if timed else None,
            faster=(against(ours, lambda mine, theirs: float(mine.layer_time_s < theirs.layer_time_s),
                            statistics.fmean) if timed else None),
        ))
    return summaries

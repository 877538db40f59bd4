"""Plan on the past window, serve the next: how placements hold on traffic they have not seen.

A live cluster plans on the routing it has observed and serves the traffic that comes next with that
plan, until the next rebalance. `serve_windows` replays a trace that way: it cuts the trace into
windows of `window_tokens` consecutive tokens; before window i + 1 every policy plans on the
statistics of windows 0..i, window j weighted `decay ** (i - j)` (`decay` 0: window i alone, the
default), and the plan is evaluated on window i + 1. One plan per window and policy, so the result is
a distribution over windows, not the single number of one half/half split. With `balance_tokens`,
each window's statistics keep the load of every run of that many tokens in it
(`RoutingStats.from_trace`), so a policy that holds its plan on each window's load (affinity) holds
it on each such batch of the past instead (docs/placement.md, "Balance per batch").

Windows are cut at token boundaries, not sequence boundaries (a sequence may straddle two windows, as
traffic does in a live window); a last window shorter than `window_tokens` is dropped.

`PLANNING_HISTORY` and `PLANNING_DECAY` are what the live rebalancer plans on (the state store's last
windows, `switchyard serve --stats-history / --stats-decay`) and what `bench.placement` measures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from switchyard.placement.cost import ClusterSpec
from switchyard.placement.errors import PlacementError, positive_int, unit_interval
from switchyard.placement.evaluate import Evaluation, evaluate
from switchyard.placement.policies.base import Policy
from switchyard.placement.routing import DEFAULT_RULE, ReplicaRule
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace


PLANNING_HISTORY = 3
"""Windows a plan is made on: the last one and the two before it."""
PLANNING_DECAY = 0.5
"""Each older window weighs half the next: a round value, not fitted to any trace. On the benchmark's
served windows it raised affinity's balance in 13 of 14 cells over planning on the last window alone
(docs/placement.md, "The live rebalancer plans the same way")."""


@dataclass(frozen=True, eq=False)
class ServedWindow:
    """Every policy's plan, made on the windows up to `window - 1`, evaluated on window `window`."""

    window: int
    evaluations: dict[str, Evaluation]


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
    weights = decay ** np.arange(len(window_stats) - 1, -1, -1.0)
    return dataclasses.replace(merged, window_load=np.concatenate(
        [stats.windows * weight for stats, weight in zip(window_stats, weights)]))


def serve_windows(trace: RoutingTrace, topology: Topology, policies: Mapping[str, Policy],
                  window_tokens: int = 1000, decay: float = 0.0, history: int = 4,
                  cluster: ClusterSpec | None = None, rule: ReplicaRule = DEFAULT_RULE,
                  balance_tokens: int | None = None) -> list[ServedWindow]:
    """Plan on windows i - history + 1 .. i (decayed), evaluate on window i + 1, for every i and policy.

    policies: name -> policy; each plans afresh (no current plan) before every served window.
    balance_tokens: the planning statistics keep the load of every run of this many tokens of each
        window (module docstring); None: of each window.
    Returns one `ServedWindow` per window from 1 on; `PlacementError` when the trace has fewer than
    two full windows.
    """
    windows = split_windows(trace, window_tokens)
    positive_int("history", history)
    if len(windows) < 2:
        raise PlacementError(
            f"the trace's {trace.num_tokens} tokens make {len(windows)} window(s) of {window_tokens}; "
            "serving needs at least two"
        )
    window_stats = [RoutingStats.from_trace(window, window_tokens=balance_tokens) for window in windows]
    served = []
    for index in range(1, len(windows)):
        stats = decayed_stats(window_stats[max(0, index - history):index], decay)
        evaluations = {name: evaluate(policy.place(stats, topology), windows[index], cluster, rule)
                       for name, policy in policies.items()}
        served.append(ServedWindow(index, evaluations))
    return served

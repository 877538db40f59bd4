"""Side-by-side comparison of placement policies: plan on one token window, evaluate on another.

Planning and evaluating on the same tokens flatters every policy that learns from the trace, so the
comparison plans on a training window (by default the first half of the trace) and measures the plans
on a test window (by default the second half), the way a rebalancer would use yesterday's routing for
today's traffic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from switchyard.placement.cost import ClusterSpec
from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import Evaluation, evaluate
from switchyard.placement.plan import Plan
from switchyard.placement.policies import planning_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from switchyard.placement.windows import check_resampled, resampled_window

TokenWindow = tuple[int | None, int | None]
"""`(start, stop)` token indices of a trace, Python slice rules; None is an open end."""


@dataclass(frozen=True, eq=False)
class PolicyResult:
    """One policy's plan (made on the training window) and its evaluation on the test window."""

    policy: str
    plan: Plan
    evaluation: Evaluation
    planning_time_s: float


def token_window(trace: RoutingTrace, window: TokenWindow | None, what: str) -> RoutingTrace:
    """The tokens of `window`, or `PlacementError` naming `what` when the window selects none."""
    if window is None:
        return trace
    start, stop = window
    part = trace.slice_tokens(start, stop)
    if part.num_tokens == 0:
        shown = f"{'' if start is None else start}:{'' if stop is None else stop}"
        raise PlacementError(
            f"{what} {shown} selects no tokens of a trace with {trace.num_tokens} tokens"
        )
    return part


def default_windows(trace: RoutingTrace) -> tuple[TokenWindow, TokenWindow]:
    """Train on the first half of the tokens, test on the second half."""
    half = trace.num_tokens // 2
    return (0, half), (half, None)


def compare_policies(
    trace: RoutingTrace,
    topology: Topology,
    policy_names: Sequence[str],
    train: TokenWindow | None = None,
    test: TokenWindow | None = None,
    cluster: ClusterSpec | None = None,
    on_policy: Callable[[str], None] | None = None,
    balance_tokens: int | None = None,
    resampled_windows: int | None = None,
) -> list[PolicyResult]:
    """Plan with every policy on the `train` tokens and evaluate each plan on the `test` tokens.

    train, test: token windows; None takes the default of `default_windows` (first half / second half).
    cluster: when given, every evaluation includes the simulated MoE layer time on it, and policies
        that weigh time (an option `cluster`) plan for it.
    on_policy: called with each policy's name before it plans (progress reporting for long runs).
    balance_tokens: the training statistics keep the load of every run of this many tokens, which a
        policy that hedges against drift (affinity) holds its plan on; None: of the whole window.
    resampled_windows: instead of those runs, this many windows drawn from them, each as many runs as
        the training window holds (`windows.resampled_window`); needs `balance_tokens`.
    Returns one `PolicyResult` per name, in the order given.
    """
    check_resampled(resampled_windows, balance_tokens)
    default_train, default_test = default_windows(trace)
    train_trace = token_window(trace, default_train if train is None else train, "the training window")
    test_trace = token_window(trace, default_test if test is None else test, "the test window")
    stats = resampled_window(RoutingStats.from_trace(train_trace, window_tokens=balance_tokens), resampled_windows)
    results = []
    for name in policy_names:
        if on_policy is not None:
            on_policy(name)
        policy = planning_policy(name, cluster)
        started = time.perf_counter()
        plan = policy.place(stats, topology)
        planning_time_s = time.perf_counter() - started
        results.append(PolicyResult(name, plan, evaluate(plan, test_trace, cluster), planning_time_s))
    return results

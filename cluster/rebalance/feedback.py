"""The balance feedback across live rebalances (`placement.feedback`, `switchyard serve --balance-feedback`).

A rebalance that plans with affinity prices its overload at a level. The next one reads how the plan
in service has served since, on the store's newest window, against EPLB's plan made on the same
statistics, and moves the level by that gap. So the gateway remembers, for the last `KEPT` plans the
feedback priced, their level and EPLB's plan beside them: dry runs too, since automatic mode applies
the very plan of its dry run; not a proposal that keeps the plan in service (a budget of 0 moves),
which the feedback did not choose. A plan in service that is none of them (the plan served at start, a
rollback, a plan given whole that no priced proposal proposed, or any plan after the gateway
restarted) is priced from level 0 again.
The memory is the gateway's, not the store's: a restarted gateway finds the level again within a
few rebalances, as the first rebalances of a cluster do.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchyard.placement.cost import ClusterSpec
from switchyard.placement.feedback import BalanceFeedback
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import served_gap
from switchyard.placement.stats import RoutingStats

KEPT = 8
"""Priced plans remembered: the proposals of a few dry runs, and the one applied."""


@dataclass(frozen=True)
class PricedPlan:
    """A plan the feedback priced: its `level`, and `baseline`, EPLB's plan on the same statistics."""

    plan: Plan
    level: int
    baseline: Plan


class FeedbackMemory:
    """The priced plans of the last rebalances, newest first, and the level they set for the next one."""

    def __init__(self, feedback: BalanceFeedback) -> None:
        self.feedback = feedback
        self._priced: list[PricedPlan] = []

    def priced(self, plan: Plan) -> PricedPlan | None:
        """The record of `plan` where the feedback priced it (the newest such), else None."""
        return next((record for record in self._priced if record.plan == plan), None)

    def next_level(self, served: PricedPlan | None, newest: RoutingStats | None, cluster: ClusterSpec) -> int:
        """The level of the next plan: `served`'s (the plan in service's record), moved by its served gap
        on `newest` (`placement.proposal.served_gap`); its own where there is no window or it is empty;
        0 without a record."""
        if served is None:
            return 0
        if newest is None or not newest.num_tokens > 0:
            return served.level
        return self.feedback.next_level(served.level, served_gap(newest, served.plan, served.baseline, cluster))

    def remember(self, record: PricedPlan) -> None:
        self._priced = [record, *self._priced][:KEPT]

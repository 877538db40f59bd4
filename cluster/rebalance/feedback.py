"""The balance feedback across live rebalances (`placement.feedback`, `switchyard serve --balance-feedback`).

A rebalance that plans with affinity prices its overload at a level. The next one reads how the plan
in service has served since its apply (the store's newest window less the entries from before it),
against EPLB's plan made on the same statistics, and moves the level by that gap. So the last `MAX_PRICED` plans the feedback priced are
kept with their level and EPLB's plan beside them (`PricedPlan`): dry runs too, since automatic mode
applies the very plan of its dry run; not a proposal that keeps the plan in service (a budget of 0
moves), which the feedback did not choose. A plan in service that is none of them (the plan served at
start, a rollback, a plan given whole that no priced proposal proposed) is priced from level 0 again.
They are kept in the state store, beside the plan in service, so every gateway replica over one store
reads the same record, and a gateway restarted over Redis goes on at the level it left; without a
store (statistics since loading), in the gateway's own memory.
"""

from __future__ import annotations

from switchyard.cluster.state.store import EmbeddedStateStore, PricedPlan, StateStore
from switchyard.placement.cost import ClusterSpec
from switchyard.placement.feedback import BalanceFeedback
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import served_gap
from switchyard.placement.stats import RoutingStats


class FeedbackMemory:
    """The priced plans of the last rebalances, in `store` (the gateway's own embedded one where None),
    and the level they set for the next plan. Calls the store: run it off the event loop."""

    def __init__(self, feedback: BalanceFeedback, store: StateStore | None = None) -> None:
        self.feedback = feedback
        self.store = EmbeddedStateStore() if store is None else store

    def priced(self, plan: Plan) -> PricedPlan | None:
        """The record of `plan` where the feedback priced it (the newest such), else None."""
        return next((record for record in self.store.priced_plans() if record.plan == plan), None)

    def next_level(self, served: Plan, window: RoutingStats | None, cluster: ClusterSpec) -> int:
        """The level of the next plan after `served`, the plan in service: its record's level moved by its
        served gap on `window`, the traffic it has served (`placement.proposal.served_gap`); the record's
        own where that is None or empty; 0 where the feedback did not price it."""
        record = self.priced(served)
        if record is None:
            return 0
        if window is None or not window.num_tokens > 0:
            return record.level
        return self.feedback.next_level(record.level, served_gap(window, record.plan, record.baseline, cluster))

    def remember(self, record: PricedPlan) -> None:
        self.store.remember_priced(record)

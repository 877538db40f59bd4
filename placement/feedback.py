"""Balance feedback: the overload price that keeps affinity's served balance near EPLB's.

Affinity trades balance for locality at a price: a pick above its load cap costs
`ClusterSpec.overload_weight` distinct GPUs per token, the model's exchange rate. The plan is made on
past windows and serves the next one, and on some layouts it serves that window less balanced than
EPLB's plan made on the same windows would, by more than the model's price accounts for: where no
expert is replicated (8 slots a GPU for 64 experts) routing cannot move load, and the experts one
sequence picks together, which affinity puts on one GPU, get hot together on a new draw of the
traffic (docs/placement.md, "Balance feedback"). How much dearer overload must be to hold balance
there depends on the traffic and the layout, and the served balance says it, one window later: a
live cluster sees it, so the rebalancer learns the price by feedback instead of by a constant tuned
to some traces.

After each served window the plan's balancedness on it is compared with that of EPLB's plan made on
the same statistics (`served gap`). Below `-tolerance`, the next plan is made one level dearer (the
model's price times `step ** level`, at most `max_level`); above `+tolerance`, one level cheaper, since
balance to spare buys locality back; in between, the level stays, so a plan that just holds does not
swing. Level 0 is the model's own price, where every rebalance starts.

Pure: the caller plans, serves and evaluates (`windows.serve_windows`, the gateway's rebalances).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from switchyard.placement.errors import PlacementError
from switchyard.placement.policies import POLICIES, Policy, policy_options
from switchyard.placement.policies.eplb import EplbPolicy

BASELINE = EplbPolicy.name
"""The policy whose served balance the feedback compares with: EPLB, the field's balance-first planner."""
FEEDBACK_OPTION = "overload_factor"
"""The policy option the feedback sets: what a pick above the load cap costs, times the model's price
(`AffinityPolicy.overload_factor`). Policies without it plan as they always do."""


@dataclass(frozen=True)
class BalanceFeedback:
    """How the served balance gap moves the price of overload (module docstring).

    tolerance: the gap to EPLB's served balancedness that is let be, either way (the issue's 0.01).
    step: each level multiplies the price by this (4: the price positions of the trade-off benchmark,
        `bench.placement_frontier`, a round value).
    max_level: the dearest level: the price times `step ** max_level` (2: 16x, where the frontier's
        8-slot cells reach EPLB's balance; dearer only gives up locality).
    """

    tolerance: float = 0.01
    step: float = 4.0
    max_level: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise PlacementError(f"tolerance must be in (0, 1), got {self.tolerance!r}")
        if not self.step > 1:
            raise PlacementError(f"step must be above 1, got {self.step!r}")
        if isinstance(self.max_level, bool) or not isinstance(self.max_level, int) or self.max_level < 0:
            raise PlacementError(f"max_level must be a non-negative integer, got {self.max_level!r}")

    def factor(self, level: int) -> float:
        """The price of overload at `level`, over the model's."""
        return self.step ** level

    def options(self, level: int) -> dict[str, float]:
        """The policy options that price overload at `level` (for a policy the feedback applies to)."""
        return {FEEDBACK_OPTION: self.factor(level)}

    def next_level(self, level: int, served_gap: float) -> int:
        """The level of the next plan, after a plan made at `level` served with balancedness
        `served_gap` above EPLB's (negative: below)."""
        if served_gap < -self.tolerance:
            return min(level + 1, self.max_level)
        if served_gap > self.tolerance:
            return max(level - 1, 0)
        return level


def applies_to(policy_name: str) -> bool:
    """Whether the feedback moves the policy registered as `policy_name` (it has the option the
    feedback sets); False for a name not registered."""
    return policy_name in POLICIES and FEEDBACK_OPTION in policy_options(policy_name)


def at_level(policy: Policy, feedback: BalanceFeedback, level: int) -> Policy:
    """`policy` (a frozen dataclass, as every registered policy) with its overload priced at `level`;
    unchanged where the feedback does not apply."""
    if not applies_to(policy.name):
        return policy
    return dataclasses.replace(policy, **feedback.options(level))

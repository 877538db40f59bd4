"""Automatic rebalance, off by default (`switchyard serve --auto-rebalance`).

Every `check_every_s` the gateway asks its backend for a dry run on the statistics a rebalance plans on
(the last `--stats-history` windows, decayed), and applies
that very proposal (pinned to the epoch it started from, so a manual rebalance in between wins) when
the served plan has fallen below `min_balancedness` on the window and the proposal is better balanced,
or when the proposal predicts at least `min_gain` less simulated MoE layer time. At most one attempt
per `interval_s`, successful or not, so a cluster whose traffic keeps shifting is not kept migrating.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from switchyard.cluster.errors import InvalidSetting, SwitchyardError
from switchyard.cluster.periodic import Periodic
from switchyard.cluster.rebalance.applier import RebalanceOutcome
from switchyard.cluster.settings import DEFAULTS
from switchyard.placement.policies import DEFAULT_POLICY
from switchyard.placement.proposal import PlanMetrics, Proposal

if TYPE_CHECKING:
    from switchyard.cluster.gateway.backend import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoRebalanceSettings:
    """When to rebalance on its own.

    min_balancedness: apply when the served plan's balancedness on the window is below this.
    min_gain: apply when the predicted MoE layer time falls by at least this fraction (0.1: 10%).
    interval_s: the least time between two attempts.  check_every_s: how often the window is looked at.
    """

    policy: str = DEFAULT_POLICY
    max_moves: int | None = None
    min_balancedness: float = DEFAULTS.auto_min_balancedness
    min_gain: float = DEFAULTS.auto_min_gain
    interval_s: float = DEFAULTS.auto_interval_s
    check_every_s: float = DEFAULTS.auto_check_every_s

    def __post_init__(self) -> None:
        if not 0 <= self.min_balancedness <= 1:
            raise InvalidSetting(f"min_balancedness must be in [0, 1], got {self.min_balancedness}")
        if not 0 < self.min_gain < 1:
            raise InvalidSetting(f"min_gain must be in (0, 1), got {self.min_gain}")
        if not (self.interval_s > 0 and self.check_every_s > 0):
            raise InvalidSetting(f"interval_s and check_every_s must be positive, got {self.interval_s}, "
                             f"{self.check_every_s}")


def predicted_gain(before: PlanMetrics, after: PlanMetrics) -> float | None:
    """The fraction of simulated MoE layer time the proposal saves; None where the window has no sets."""
    if before.layer_time_s is None or after.layer_time_s is None or not before.layer_time_s > 0:
        return None
    return 1.0 - after.layer_time_s / before.layer_time_s


def rebalance_reason(proposal: Proposal, settings: AutoRebalanceSettings) -> str | None:
    """Why `proposal` should be applied under `settings`, or None when it should not (module doc)."""
    if proposal.migration.num_copies == 0:
        return None
    before, after = proposal.before, proposal.after
    if before.balancedness < settings.min_balancedness and after.balancedness > before.balancedness:
        return (f"balancedness {before.balancedness:.3f} is below {settings.min_balancedness:g} "
                f"(proposed: {after.balancedness:.3f})")
    gain = predicted_gain(before, after)
    if gain is not None and gain >= settings.min_gain:
        return f"predicted MoE layer time {gain:.1%} lower (threshold {settings.min_gain:.0%})"
    return None


class AutoRebalancer:
    """Checks the window every `settings.check_every_s` and applies proposals worth it (module doc)."""

    def __init__(self, backend: Backend, settings: AutoRebalanceSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend, self.settings, self.clock = backend, settings, clock
        self.last_attempt: float | None = None
        self._loop = Periodic(self.check, settings.check_every_s, "automatic rebalance check",
                              first_after_s=settings.check_every_s)

    async def check(self) -> RebalanceOutcome | None:
        """One look at the window; the applied outcome, or None when nothing was applied."""
        settings = self.settings
        now = self.clock()
        if self.last_attempt is not None and now - self.last_attempt < settings.interval_s:
            return None
        try:
            dry = await self.backend.rebalance(True, settings.policy, settings.max_moves)
        except SwitchyardError as error:  # no statistics yet, store down: look again later
            log.info("automatic rebalance: no proposal (%s)", error)
            return None
        reason = rebalance_reason(dry.proposal, settings)
        if reason is None:
            return None
        self.last_attempt = now
        log.info("automatic rebalance from epoch %d: %s", dry.epoch, reason)
        try:
            outcome = await self.backend.rebalance(False, settings.policy, settings.max_moves,
                                                   plan=dry.proposal.proposed, expected_epoch=dry.epoch,
                                                   by=f"auto: {reason}")
        except SwitchyardError as error:  # the backend recorded and undid it
            log.warning("automatic rebalance from epoch %d failed: %s", dry.epoch, error)
            return None
        if outcome.applied is None:  # the proposal is the served plan: nothing to move (the applier logged it)
            return None
        log.info("automatic rebalance: epoch %d active, %d replica(s) copied in %.2f s", outcome.applied.epoch,
                 outcome.applied.copies, outcome.applied.total_seconds)
        return outcome

    def start(self) -> AutoRebalancer:
        """Check in an asyncio task of the running loop until `stop`."""
        self._loop.start()
        return self

    async def stop(self) -> None:
        await self._loop.stop()

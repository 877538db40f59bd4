"""Applying a proposal live from the gateway: one at a time, committed with the epoch's compare-and-set,
recorded as events, and its gain observed afterwards.

`PlanApplier` is what `RuntimeBackend.rebalance` and `rollback` apply through; planning stays in
`placement.proposal` (`rebalance.planner`), weight movement in `runtime.migration`. The order of one apply:

`run()` does all of it in a task of its own, which the caller awaits shielded: when the caller goes
away (an RPC deadline, a cancelled call) the migration thread cannot be stopped, so the task keeps the
lock until the thread ends and records the outcome either way.

1. the lock: a second rebalance while one runs gets `Conflict` at once instead of queueing behind a
   migration that may change the plan it planned on.
2. `active_epoch()`: the epoch E the proposal starts from, read from the store first (an outage ends
   the call before anything moves); without a store, the runtime's.
3. `apply()`, unless the proposed plan equals the served one (then nothing changes, no new epoch):
   `migrate` to epoch E + 1 in a thread; with a store, its commit is
   `set_active_plan(plan, E)`, so an outage or a lost race undoes the migration. Then a "rebalance"
   (or "rollback") event, and an observation task that records the measured gain; any failure is a
   "rebalance_failed" event.

Every apply, rollback and failed attempt is also a log line naming who asked (`by`), the epochs and
the replicas moved. Events (`StateStore.record_event`, fields in docs/state-store.md): "rebalance" /
"rollback" after an apply, "rebalance_failed" for an attempt that changed nothing, "observed"
`observe_after_s` later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from switchyard.cluster.runtime.migration import MigrationFailed, MigrationReport, migrate
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.settings import DEFAULTS
from switchyard.cluster.errors import Conflict, FailedPrecondition, InvalidRequest, InvalidSetting, MigrationAborted
from switchyard.cluster.state.store import PlanConflict, StateStore, StateStoreUnavailable
from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import Proposal, memory_dict

if TYPE_CHECKING:
    from switchyard.cluster.gateway.backend import Snapshot

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RebalanceOutcome:
    """What one Rebalance or Rollback did.

    epoch: the active epoch the proposal started from.  applied: the migration's report (its `epoch`
    is the new active one); None for a dry run, or when the plan was already served.
    """

    epoch: int
    proposal: Proposal
    applied: MigrationReport | None


class PlanApplier:
    """Moves one runtime to proposed plans, one at a time (module doc); belongs to one event loop.

    store: where the epoch is committed and events recorded; None: the runtime's epoch, and the plan
    before the last apply kept here for `previous_plan`.  snapshot: the backend's traffic and window
    balancedness, read for the "observed" event.  observe_after_s: how long after an apply the gain is
    measured.  migration_timeout_s: per migration phase.
    """

    def __init__(self, runtime: Runtime, store: StateStore | None, snapshot: Callable[[], Awaitable[Snapshot]],
                 observe_after_s: float = DEFAULTS.observe_after_s,
                 migration_timeout_s: float = DEFAULTS.migration_timeout_s) -> None:
        if not observe_after_s > 0:
            raise InvalidSetting(f"observe_after_s must be positive, got {observe_after_s!r}")
        self.runtime, self.store, self.snapshot = runtime, store, snapshot
        self.observe_after_s, self.migration_timeout_s = observe_after_s, migration_timeout_s
        self._lock = asyncio.Lock()
        self._previous: Plan | None = None  # without a store: the plan served before the last apply
        self._observer: asyncio.Task[None] | None = None
        self._running: asyncio.Task[RebalanceOutcome] | None = None  # the last `run`, kept until it ends

    async def run(self, kind: str, by: str, policy: str, expected_epoch: int | None,
                  proposal: Callable[[], Awaitable[Proposal]]) -> RebalanceOutcome:
        """Plan (`proposal()`) from the active epoch and apply, under the one-rebalance lock (module doc).

        `Conflict` at once when another rebalance runs, or when the active epoch is not
        `expected_epoch`. The work runs in its own task: cancelling the caller leaves it running to its
        end (holding the lock, recording its event), since the migration thread cannot be stopped.
        """
        if self._lock.locked():
            raise Conflict("another rebalance is in progress; retry when it is done")
        await self._lock.acquire()  # uncontended: taken before any other coroutine runs
        self._running = asyncio.get_running_loop().create_task(self._run(kind, by, policy, expected_epoch, proposal))
        return await asyncio.shield(self._running)

    async def _run(self, kind: str, by: str, policy: str, expected_epoch: int | None,
                   proposal: Callable[[], Awaitable[Proposal]]) -> RebalanceOutcome:
        epoch = None
        try:
            epoch = check_epoch(await self.active_epoch(), expected_epoch)
            planned = await proposal()
            if planned.proposed == self.runtime.plan:
                log.info("%s by %s: the plan equals the served one (epoch %d); nothing changed", kind, by, epoch)
                return RebalanceOutcome(epoch, planned, None)
            return RebalanceOutcome(epoch, planned, await self.apply(planned, epoch, kind, by))
        except Exception as error:  # noqa: BLE001 - every failed attempt is recorded, then raised
            log.warning("%s by %s failed from epoch %s: %s", kind, by, epoch, error)
            await self.record_failure(kind, by, epoch, policy, error)
            raise
        finally:
            self._lock.release()

    async def wait(self) -> None:
        """Until a running apply (possibly one whose caller went away) has ended."""
        if self._running is not None:
            await asyncio.wait([self._running])

    async def active_epoch(self) -> int:
        """The epoch an apply starts from: the store's active one, else the runtime's."""
        if self.store is None:
            return self.runtime.epoch
        active = await asyncio.to_thread(self.store.active_plan)
        if active is None:
            raise FailedPrecondition("the state store holds no active plan (it lost its state?); restart "
                                     "`switchyard serve` to record the served plan, then rebalance")
        return active[1]

    async def previous_plan(self) -> Plan:
        """The plan active before the current one (`FailedPrecondition` when there is none)."""
        if self.store is None:
            previous = self._previous
        else:
            history = await asyncio.to_thread(self.store.plan_history, 2)
            previous = history[1][1] if len(history) > 1 else None
        if previous is None:
            raise FailedPrecondition("no earlier plan to roll back to")
        return previous

    async def apply(self, proposal: Proposal, from_epoch: int, kind: str, by: str) -> MigrationReport:
        """Serve `proposal.proposed` at `from_epoch + 1`; called by `run`, under the lock (module doc).

        Raises `MigrationAborted` (the old plan stays), `Conflict` when another writer advanced the
        store's epoch meanwhile, `StateStoreUnavailable` when the commit could not reach the store.
        """
        self.stop_observing()
        previous, epoch = self.runtime.plan, from_epoch + 1
        commit = None if self.store is None else (lambda plan: self._commit(plan, from_epoch))
        try:
            report = await asyncio.to_thread(migrate, self.runtime, proposal.proposed, epoch, commit,
                                             self.migration_timeout_s)
        except PlacementError as error:
            raise InvalidRequest(str(error)) from None
        except MigrationFailed as error:
            cause = error.__cause__
            if isinstance(cause, PlanConflict):
                raise Conflict(f"{error}; nothing changed") from None
            if isinstance(cause, StateStoreUnavailable):
                raise StateStoreUnavailable(f"{error}; the migration was undone") from None
            raise MigrationAborted(f"{error}; the previous plan still serves") from None
        log.info("%s applied by %s: epoch %d -> %d, %d replica(s) moved (%d bytes) in %.2f s", kind, by, from_epoch,
                 report.epoch, report.copies, report.bytes_copied, report.total_seconds)
        at_switch = await asyncio.to_thread(self.runtime.traffic)
        if self.store is None:
            self._previous = previous
        await self.record({
            "kind": kind, "by": by, "from_epoch": from_epoch, "epoch": report.epoch, "policy": proposal.policy,
            "predicted_before": proposal.before.to_dict(), "predicted_after": proposal.after.to_dict(),
            "memory": memory_dict(proposal.memory, proposal.resampled), "feedback_level": proposal.feedback_level,
            "copies": report.copies, "bytes_copied": report.bytes_copied,
            "apply_seconds": report.total_seconds, "steps_during_switch": report.steps_during_switch})
        self._observer = asyncio.get_running_loop().create_task(self._observe(report.epoch, at_switch))
        return report

    async def record_failure(self, action: str, by: str, from_epoch: int | None, policy: str,
                             error: BaseException) -> None:
        """A "rebalance_failed" event for an attempt that failed (anything it moved was undone)."""
        await self.record({"kind": "rebalance_failed", "action": action, "by": by, "from_epoch": from_epoch,
                           "policy": policy, "error": f"{type(error).__name__}: {error}"})

    async def record(self, event: dict[str, Any]) -> None:
        """Record `event` in the store; an outage is logged, not raised (the plan change stands)."""
        if self.store is None:
            log.info("rebalance event: %s", event)
            return
        try:
            await asyncio.to_thread(self.store.record_event, event)
        except StateStoreUnavailable as error:
            log.warning("could not record the %s event: %s", event.get("kind"), error)

    def stop_observing(self) -> None:
        """Cancel a pending observation (a new rebalance starts, or the backend closes)."""
        if self._observer is not None:
            self._observer.cancel()
            self._observer = None

    def _commit(self, plan: Plan, from_epoch: int) -> None:
        self.store.set_active_plan(plan, from_epoch)

    async def _observe(self, epoch: int, at_switch: dict[str, Any]) -> None:
        """After `observe_after_s`, an "observed" event: cross-node bytes per token vector before the
        switch (since loading) and after it (since the switch), and the window's balancedness."""
        await asyncio.sleep(self.observe_after_s)
        try:
            snapshot = await self.snapshot()
        except Exception as error:  # noqa: BLE001 - an observation is a report, never a failure
            log.warning("could not observe epoch %d: %s", epoch, error)
            return
        now = snapshot.traffic
        tokens_before = at_switch["same_node_tokens"] + at_switch["cross_node_tokens"]
        tokens_after = now["same_node_tokens"] + now["cross_node_tokens"] - tokens_before
        bytes_after = now["cross_node_bytes"] - at_switch["cross_node_bytes"]
        await self.record({
            "kind": "observed", "epoch": epoch, "observed_seconds": self.observe_after_s,
            "cross_node_bytes_per_token_before": _per(at_switch["cross_node_bytes"], tokens_before),
            "cross_node_bytes_per_token_after": _per(bytes_after, tokens_after),
            "token_vectors_after": tokens_after, "balancedness": snapshot.balancedness,
            "window_seconds": snapshot.window_s})


def check_epoch(active_epoch: int, expected_epoch: int | None) -> int:
    """`active_epoch`, or `Conflict` when the caller planned from another one."""
    if expected_epoch is not None and expected_epoch != active_epoch:
        raise Conflict(f"the active plan is at epoch {active_epoch}, not {expected_epoch}: the placement "
                       "changed since it was read; read it again and re-plan")
    return active_epoch


def _per(total: int, count: int) -> float | None:
    return total / count if count > 0 else None

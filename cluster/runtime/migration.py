"""Live migration: a running `Runtime` moves to a new plan while requests keep flowing.

The order (DESIGN.md: copy in, switch the epoch, drop the old copies):

1. stage: every worker builds the new epoch's slots beside the old ones, in its migration thread
   (`actors.MIGRATION_GROUP`), so its `forward` calls go on meanwhile. Gained experts are copied
   from a worker that holds them (`migration.plan_migration` picks the nearest), worker to worker,
   never through the gateway or the driver: the coordinator passes only ObjectRefs of the exports to
   `stage`. A source on the target's machine writes the slots once into shared memory
   (`ExpertWorker.export_shared`, `workers.slot_transfer`) and the target maps them from there; a
   source on another machine exports numpy arrays that Ray's object store moves (`export_slots`).
2. switch: every engine moves to the new plan at its next step boundary (`Engine.switch_plan`). The
   step under way finishes on the old epoch, which the workers still hold, so no request fails and
   greedy outputs do not change.
3. commit: the caller's `commit(plan)`, e.g. the state store's compare-and-set of the new epoch.
4. drop: the workers drop the old epoch.

A failure before 4 (a worker or engine gone, a timeout, a rejected commit) undoes everything: engines
that switched go back (the old epoch is still held), staged epochs are discarded, the runtime serves
the old plan, and `MigrationFailed` names the cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from switchyard.cluster.runtime.actors import MIGRATION_GROUP
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.placement.errors import SwitchyardError
from switchyard.placement.migration import plan_migration
from switchyard.placement.plan import Plan

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


class MigrationFailed(SwitchyardError):
    """The migration was undone; the runtime serves the plan it served before. The message says why."""

    status = "ABORTED"


@dataclass(frozen=True)
class MigrationReport:
    """What one migration did.

    plan: the plan now served (the proposal aligned to the old plan: kept replicas stayed in their
    slots).  copies: replicas copied.  bytes_copied: their weights' bytes.  steps_during_switch: engine
    steps run while the engines switched (requests kept running).  *_seconds: wall time of each phase.
    """

    epoch: int
    plan: Plan
    copies: int
    bytes_copied: int
    stage_seconds: float
    switch_seconds: float
    drop_seconds: float
    steps_during_switch: int

    @property
    def total_seconds(self) -> float:
        return self.stage_seconds + self.switch_seconds + self.drop_seconds


def migrate(runtime: Runtime, proposed: Plan, epoch: int, commit: Callable[[Plan], None] | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> MigrationReport:
    """Serve `proposed` at `epoch` on `runtime` without stopping it (module doc); updates `runtime`.

    epoch: the new plan's version, other than `runtime.epoch`.  commit: called with the aligned plan
    once every engine serves it; raising undoes the migration.  timeout_s: per phase.
    Raises `MigrationFailed` (the old plan stays), or `PlacementError` for a plan that does not fit.
    """
    if epoch == runtime.epoch:
        raise MigrationFailed(f"the runtime already serves epoch {epoch}; a new plan needs a new epoch")
    if not runtime.migration_lock.acquire(blocking=False):
        raise MigrationFailed("another migration is in progress on this runtime; retry when it is done")
    try:
        return _migrate(runtime, proposed, epoch, commit, timeout_s)
    finally:
        runtime.migration_lock.release()


def _migrate(runtime: Runtime, proposed: Plan, epoch: int, commit: Callable[[Plan], None] | None,
             timeout_s: float) -> MigrationReport:
    old_plan, old_epoch = runtime.plan, runtime.epoch
    migration = plan_migration(old_plan, proposed)  # PlacementError: wrong topology or sizes
    plan = migration.aligned
    start = time.perf_counter()
    try:
        hosts = _call_all([_beside_serving(worker.host).remote() for worker in runtime.workers], timeout_s,
                          "reach")
        received = _call_all(_stage_calls(runtime.workers, hosts, migration.copies, plan, epoch), timeout_s,
                             "stage")
    except MigrationFailed:
        _discard(runtime.workers, epoch)
        raise
    staged = time.perf_counter()
    try:
        plan_dict = plan.to_dict()
        steps = _call_all([engine.switch_plan.remote(plan_dict, epoch, timeout_s) for engine in runtime.engines],
                          timeout_s, "switch engines to")
        if commit is not None:
            try:
                commit(plan)
            except Exception as error:
                raise MigrationFailed(f"the new plan was not committed: {error}") from error
    except MigrationFailed:
        if _switch_back(runtime.engines, old_plan, old_epoch, timeout_s):
            _discard(runtime.workers, epoch)
        else:  # an engine may still dispatch under the new epoch: its copies must stay
            log.warning("an engine did not confirm its return to epoch %d; epoch %d stays staged on the "
                        "workers", old_epoch, epoch)
        raise
    switched = time.perf_counter()
    runtime.plan, runtime.epoch = plan, epoch
    try:
        _call_all([_beside_serving(worker.commit).remote(epoch) for worker in runtime.workers], timeout_s,
                  "drop the old epoch on")
    except MigrationFailed as error:  # the new plan serves; a worker that missed the drop holds extra memory
        log.warning("epoch %d is active but %s", epoch, error)
    return MigrationReport(epoch, plan, migration.num_copies, int(sum(received)), staged - start,
                           switched - staged, time.perf_counter() - switched, int(sum(steps)))


def _stage_calls(workers: list[Any], hosts: list[str], copies: np.ndarray, plan: Plan, epoch: int) -> list[Any]:
    """One `stage` call per worker, fed by one export call per worker that holds some of its copies:
    `export_shared` where source and target share a machine (`hosts`: `ExpertWorker.host` of each
    worker), else `export_slots`.

    Every export is submitted before any stage: a worker runs its migration calls one at a time, in the
    order they were sent, so a stage sent first would hold back that worker's exports for the others
    until its own copies arrived, and the copies would go one worker after another instead of at once.
    """
    slots = plan.topology.slots_per_gpu
    target_worker, source_worker = copies["target_slot"] // slots, copies["source_slot"] // slots
    targets: list[list[list[tuple[int, int]]]] = [[] for _ in workers]
    exported: list[list[Any]] = [[] for _ in workers]
    for worker in range(len(workers)):
        for source in np.unique(source_worker[target_worker == worker]).tolist():
            rows = copies[(target_worker == worker) & (source_worker == source)]
            layers = rows["layer"].tolist()
            sources = list(zip(layers, (rows["source_slot"] % slots).tolist()))
            if hosts[source] == hosts[worker]:
                exported[worker].append(_beside_serving(workers[source].export_shared).remote(epoch, sources))
            else:
                exported[worker].append(_beside_serving(workers[source].export_slots).remote(sources))
            targets[worker].append(list(zip(layers, (rows["target_slot"] % slots).tolist())))
    return [_beside_serving(handle.stage).remote(epoch, plan.gpu_experts[:, worker], targets[worker],
                                                 *exported[worker])
            for worker, handle in enumerate(workers)]


def _beside_serving(method: Any) -> Any:
    """`method` of a worker, run in the worker's migration thread so its `forward` calls keep going."""
    return method.options(concurrency_group=MIGRATION_GROUP)


def _call_all(calls: list[Any], timeout_s: float, what: str) -> list[Any]:
    """The results of one call per actor; a failure or timeout of any becomes `MigrationFailed`.

    Every call is awaited and read, so a failed call's error is reported here, not again by Ray.
    """
    ready, _ = ray.wait(calls, num_returns=len(calls), timeout=timeout_s)
    if len(ready) < len(calls):
        raise MigrationFailed(f"could not {what} every actor within {timeout_s:g} s")
    results, failure = [], None
    for call in calls:
        try:
            results.append(ray.get(call))
        except ray.exceptions.RayActorError as error:
            failure = failure or f"an actor is gone ({_last_line(error)})"
        except ray.exceptions.RayTaskError as error:
            failure = failure or _last_line(error)
    if failure is not None:
        raise MigrationFailed(f"could not {what} every actor: {failure}")
    return results


def _switch_back(engines: list[Any], plan: Plan, epoch: int, timeout_s: float) -> bool:
    """Best effort: every engine that is still alive serves `plan` at `epoch` again. Returns whether
    every living engine confirmed it (a dead engine dispatches nothing)."""
    plan_dict = plan.to_dict()
    calls = [engine.switch_plan.remote(plan_dict, epoch, timeout_s) for engine in engines]
    confirmed = True
    for call in calls:
        try:
            ray.get(call, timeout=timeout_s)
        except ray.exceptions.RayActorError:
            continue
        except Exception as error:  # noqa: BLE001 - a timeout or error: the engine may still be on the new epoch
            log.warning("an engine did not confirm its return to epoch %d: %s", epoch, _last_line(error))
            confirmed = False
    return confirmed


def _discard(workers: list[Any], epoch: int) -> None:
    """Best effort: workers that are still alive drop a staged `epoch`."""
    calls = [_beside_serving(worker.discard).remote(epoch) for worker in workers]
    for call in calls:
        try:
            ray.get(call, timeout=30.0)
        except ray.exceptions.RayActorError:  # a dead worker holds nothing
            continue
        except Exception as error:  # noqa: BLE001 - best effort: the staged copies only cost memory
            log.warning("a worker did not drop staged epoch %d: %s", epoch, _last_line(error))


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__

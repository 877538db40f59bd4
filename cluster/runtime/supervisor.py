"""The supervisor: finds dead or hung actors of a runtime and re-creates them where they ran.

Every `probe_interval_s` each expert worker and engine gets one cheap call; an actor whose call fails
(Ray's notice that its process died) or does not answer within `probe_timeout_s` (hung, e.g. stopped
with SIGSTOP) is replaced:

- a worker: every engine marks it down first (`Engine.mark_workers_down`: picks go to live replicas,
  requests that need an expert without one fail at once with UNAVAILABLE), then the old actor is
  killed (`ray.kill`, which also ends a stopped process), a new one starts on the same Ray node with
  the same options (`ActorFactory`) and loads its experts of the active plan and epoch from the
  checkpoint, and every engine swaps it in at a step boundary (`Engine.replace_worker`);
- an engine: the old actor is killed, a new one starts on its node and loads the model with the
  active plan and epoch; it takes the old one's place in `runtime.engines` (the gateway's backend and
  the statistics publisher read that list). Requests that were on it have failed (UNAVAILABLE).

Replacements hold `runtime.migration_lock`, so a live migration never sees a half-replaced runtime.
`Supervisor(runtime).start()` runs it in a daemon thread; `check_once` is one round; `replace_workers`
and `replace_engine` re-create given actors (for a caller that detects faults its own way).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import ray

from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.settings import DEFAULTS
from switchyard.placement.routing import live_replicas

log = logging.getLogger(__name__)


class Supervisor:
    """Keeps `runtime`'s workers and engines alive (module doc).

    down_workers / down_engines: the actors found dead or hung and not yet replaced (readable from any
    thread).  replaced: one `{"kind", "index", "seconds", "at"}` entry per replacement, oldest first.
    """

    def __init__(self, runtime: Runtime, probe_interval_s: float = DEFAULTS.probe_interval_s,
                 probe_timeout_s: float = DEFAULTS.probe_timeout_s,
                 replace_timeout_s: float = DEFAULTS.replace_timeout_s) -> None:
        self.runtime = runtime
        self.probe_interval_s, self.probe_timeout_s = probe_interval_s, probe_timeout_s
        self.replace_timeout_s = replace_timeout_s
        self.down_workers: frozenset[int] = frozenset()
        self.down_engines: frozenset[int] = frozenset()
        self.replaced: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        assert self._thread is None, "a supervisor starts once"
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread (a replacement under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.replace_timeout_s)

    def can_serve(self) -> bool:
        """Whether every request can be served now: an engine is up and every expert of every layer has
        a replica on a worker that is up."""
        if len(self.down_engines) >= len(self.runtime.engines):
            return False
        down = self.down_workers
        if not down:
            return True
        live = np.ones(self.runtime.plan.topology.num_gpus, dtype=bool)
        live[list(down)] = False
        _, counts = live_replicas(self.runtime.plan, live)
        return bool((counts > 0).all())

    def _run(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one failed round; logged
                log.exception("supervisor round failed; trying again in %g s", self.probe_interval_s)

    def check_once(self) -> None:
        """Probe every actor once and replace the dead or hung ones: workers first (a new engine needs
        live workers), then engines."""
        workers = self._failed(self.runtime.workers, "held_epochs", "expert worker")
        engines = self._failed(self.runtime.engines, "epoch", "engine")
        self.down_workers, self.down_engines = frozenset(workers), frozenset(engines)
        if workers:
            self.replace_workers(workers, [e for e in range(len(self.runtime.engines)) if e not in engines])
            self.down_workers = frozenset()
        for engine in engines:
            self.replace_engine(engine)
            self.down_engines -= {engine}

    def _failed(self, actors: list[Any], method: str, kind: str) -> list[int]:
        """Indices of `actors` whose `method` call fails or does not answer within the probe timeout."""
        calls = [getattr(actor, method).remote() for actor in actors]
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=self.probe_timeout_s)
        answered = set(ready)
        failed = []
        for index, call in enumerate(calls):
            if call not in answered:
                log.warning("%s %d did not answer within %g s: replacing it", kind, index,
                            self.probe_timeout_s)
                failed.append(index)
                continue
            try:
                ray.get(call)
            except ray.exceptions.RayError as error:
                log.warning("%s %d is gone (%s): replacing it", kind, index, type(error).__name__)
                failed.append(index)
        return failed

    def replace_workers(self, workers: list[int], engines: list[int] | None = None) -> None:
        """Mark `workers` down on `engines` (default: all), re-create each, and swap it in on those engines."""
        runtime = self.runtime
        engines = range(len(runtime.engines)) if engines is None else engines
        start = time.monotonic()
        ray.get([runtime.engines[e].mark_workers_down.remote(workers) for e in engines],
                timeout=self.replace_timeout_s)
        for worker in workers:  # first: a stopped process is ended, and every call waiting on it fails now
            ray.kill(runtime.workers[worker], no_restart=True)
        with runtime.migration_lock:
            plan, epoch, model_dir = runtime.plan, runtime.epoch, str(runtime.spec.model_dir)
            for worker in workers:
                handle = runtime.actors.start_worker(model_dir, plan, worker, epoch)
                address = ray.get(handle.channel_address.remote(), timeout=self.replace_timeout_s)
                runtime.workers[worker], runtime.addresses[worker] = handle, address
                ray.get([runtime.engines[e].replace_worker.remote(
                    worker, handle, runtime.actors.channel(plan, plan.topology.node_of_engine(e), worker, address))
                    for e in engines], timeout=self.replace_timeout_s)
                self._record("worker", worker, start)

    def replace_engine(self, engine: int) -> None:
        """Re-create engine `engine` on its node, loaded with the active plan and epoch."""
        runtime = self.runtime
        start = time.monotonic()
        ray.kill(runtime.engines[engine], no_restart=True)
        with runtime.migration_lock:
            plan, epoch = runtime.plan, runtime.epoch
            handle = runtime.actors.start_engine(plan, engine, runtime.workers, runtime.addresses)
            ray.get(handle.load.remote(str(runtime.spec.model_dir), plan.to_dict(), epoch),
                    timeout=self.replace_timeout_s)
            runtime.engines[engine] = handle
        self._record("engine", engine, start)

    def _record(self, kind: str, index: int, start: float) -> None:
        seconds = time.monotonic() - start
        self.replaced.append({"kind": kind, "index": index, "seconds": seconds, "at": time.time()})
        log.info("%s %d re-created in %.1f s", kind, index, seconds)


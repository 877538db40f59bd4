"""`StatsPublisher`: the serving process's routing statistics, into the state store every few seconds.

Every `interval_s` it asks each engine for the statistics recorded since its previous collection
(`Engine.take_routing_stats`: exact load, no token counted twice) and appends them, one entry per
engine, through that engine's `BufferedStatsWriter`: while the store is unreachable entries wait in
a bounded buffer and are flushed, with their original timestamps, when it returns. An idle engine
adds no entry. It runs in a daemon thread; `stop` publishes what is left once more and ends it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import ray

from switchyard.cluster.errors import InvalidSetting
from switchyard.cluster.settings import DEFAULTS
from switchyard.cluster.state.store import StateStore
from switchyard.cluster.state.writer import BufferedStatsWriter

logger = logging.getLogger(__name__)



class StatsPublisher:
    """Publishes the routing statistics of `engines` (Ray handles of `Engine`s) to `store`.

    engine ids: `{source}/engine-{e}`, where `source` defaults to `HOST.PID` of this process, so two
    serving processes sharing a deployment never share an id.  max_buffered: entries each engine's
    writer keeps during an outage.  Use `start()` and `stop()`, or `publish_once()` directly.
    """

    def __init__(self, store: StateStore, engines: list[Any], interval_s: float = DEFAULTS.stats_interval_s,
                 max_buffered: int = 256, source: str | None = None, timeout_s: float = 30.0) -> None:
        if not interval_s > 0:
            raise InvalidSetting(f"the statistics interval must be positive, got {interval_s!r} s")
        source = f"{socket.gethostname()}.{os.getpid()}" if source is None else source
        self.engines, self.interval_s, self.timeout_s = engines, interval_s, timeout_s
        self.writers = [BufferedStatsWriter(store, f"{source}/engine-{e}", max_buffered)
                        for e in range(len(engines))]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_once(self) -> int:
        """Collect every engine's new statistics and write them; returns the tokens collected.

        An engine that cannot answer (gone, or slower than `timeout_s`) is logged and skipped this time.
        """
        now = time.time()
        try:
            taken = ray.get([engine.take_routing_stats.remote() for engine in self.engines],
                            timeout=self.timeout_s)
        except ray.exceptions.RayError as error:  # the next round tries again; serving reports dead engines
            logger.warning("could not collect routing statistics from the engines: %s", error)
            return 0
        for writer, stats in zip(self.writers, taken):
            if stats.num_tokens > 0:
                writer.write(stats, now)
            else:
                writer.flush()  # an idle engine still sends what an outage left waiting
        return int(sum(stats.num_tokens for stats in taken))

    def start(self) -> StatsPublisher:
        """Publish every `interval_s` in a daemon thread until `stop`."""
        assert self._thread is None, "a publisher starts once"
        self._thread = threading.Thread(target=self._run, name="stats-publisher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread, then publish what came since the last round (call before the engines go)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + self.interval_s)
        self.publish_once()
        pending = sum(writer.pending for writer in self.writers)
        if pending:
            logger.warning("%d routing statistics entries could not reach the state store and are lost", pending)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish_once()

"""`BufferedStatsWriter`: how an engine's routing statistics reach the state store, outages included.

While the store is unreachable an engine must keep serving, so a failed append is kept in a bounded
buffer (the oldest entry dropped and counted when full, so an outage costs statistics, never memory)
and every later write first flushes what was kept, in order, with its original timestamp: the
window by time then places it where it belongs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from switchyard.cluster.errors import InvalidSetting
from switchyard.cluster.state.store import StateStore, StateStoreUnavailable
from switchyard.placement.stats import RoutingStats

logger = logging.getLogger(__name__)


class BufferedStatsWriter:
    """Appends one engine's statistics to `store`, buffering at most `max_buffered` entries in an outage."""

    def __init__(self, store: StateStore, engine_id: str, max_buffered: int = 256) -> None:
        if max_buffered < 1:
            raise InvalidSetting(f"max_buffered must be at least 1, got {max_buffered}")
        self.store, self.engine_id = store, engine_id
        self._buffer: deque[tuple[RoutingStats, float]] = deque(maxlen=max_buffered)  # oldest first
        self.dropped = 0  # entries lost to the bound since this writer started
        self.failures = 0  # appends the store refused (unreachable), counted for the metrics
        self._in_outage = False
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Entries waiting for the store to come back."""
        with self._lock:
            return len(self._buffer)

    def write(self, stats: RoutingStats, timestamp: float | None = None) -> bool:
        """Flush what is buffered, then send `stats`; True when nothing is left waiting.

        When the store is unreachable, `stats` joins the buffer (the oldest entry goes when full).
        """
        timestamp = time.time() if timestamp is None else timestamp
        with self._lock:
            if self._flush_locked() and self._send(stats, timestamp):
                return True
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append((stats, timestamp))
            return False

    def flush(self) -> bool:
        """Send the buffered entries oldest first; True when the buffer is empty afterwards."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        """Stop at the first failure, keeping the rest. The caller holds the lock, which keeps the
        order when several threads write; an unreachable store answers within its socket timeouts."""
        while self._buffer:
            if not self._send(*self._buffer[0]):
                return False
            self._buffer.popleft()
        return True

    def _send(self, stats: RoutingStats, timestamp: float) -> bool:
        try:
            self.store.append_stats(self.engine_id, stats, timestamp)
        except StateStoreUnavailable as error:
            self.failures += 1
            if not self._in_outage:  # one line per outage, not one per write
                logger.warning("buffering routing statistics of %s until the state store is back "
                               "(at most %d entries): %s", self.engine_id, self._buffer.maxlen, error)
            self._in_outage = True
            return False
        if self._in_outage:
            logger.info("state store back; flushing routing statistics of %s (%d dropped so far)",
                        self.engine_id, self.dropped)
        self._in_outage = False
        return True

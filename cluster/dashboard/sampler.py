"""`Sampler`: reads the cluster every `interval_s` in the background, for the page and its time series.

Every open page polls `/api/view`, which answers from the latest reading, so the cluster is read once
per interval however many pages are open; `/metrics` reads afresh (`fresh`), so a scrape is never a
refresh interval old. A reading that fails keeps the previous view and sets `error` (the page shows it).
"""

from __future__ import annotations

import logging

from switchyard.cluster.dashboard.history import History, Sample
from switchyard.cluster.dashboard.requests import RequestTotals
from switchyard.cluster.dashboard.source import Source, SourceError
from switchyard.cluster.dashboard.view import ClusterView
from switchyard.cluster.periodic import Periodic

log = logging.getLogger(__name__)


class Sampler:
    """Belongs to one event loop; `start()` the background task, `stop()` it."""

    def __init__(self, source: Source, interval_s: float = 2.0, history: History | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"the refresh interval must be positive, got {interval_s!r} s")
        self.source, self.interval_s = source, interval_s
        self.history = History(window_s=max(10.0, 3 * interval_s)) if history is None else history
        self.view: ClusterView | None = None
        self.error: str | None = None
        self._loop = Periodic(self.sample, interval_s, "dashboard: reading the cluster")

    async def sample(self) -> None:
        try:
            view = await self.source.view()
        except SourceError as failure:
            if self.error != str(failure):
                log.warning("dashboard: could not read the cluster: %s", failure)
            self.error = str(failure)
            return
        self.view, self.error = view, None
        self.history.add(Sample(view.taken_at, view.requests, view.queue_depths))

    async def latest(self) -> ClusterView:
        """The latest view (read now if there is none yet); `SourceError` when none could be read."""
        if self.view is None:
            await self.sample()
        if self.view is None:
            raise SourceError(503, self.error or "the cluster could not be read")
        return self.view

    async def fresh(self) -> ClusterView:
        return await self.source.view()

    def requests(self) -> RequestTotals:
        """The request counters of the latest view (zeros before the first), for a scrape whose read failed."""
        return RequestTotals.empty() if self.view is None else self.view.requests

    def start(self) -> Sampler:
        self._loop.start()
        return self

    async def stop(self) -> None:
        await self._loop.stop()

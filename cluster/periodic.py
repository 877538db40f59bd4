"""`Periodic`: a coroutine run every `interval_s` in a task of the running loop until `stop()`.

Shared by the dashboard's sampler and automatic rebalance, the two background loops of a gateway's
event loop. A round that raises is logged and the next one runs: a background loop that ends on an
unforeseen error would stop its job silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls `round()` after `first_after_s`, then every `interval_s` after each round ends."""

    def __init__(self, round: Callable[[], Awaitable[object]], interval_s: float, what: str,
                 first_after_s: float = 0.0) -> None:
        self.round, self.interval_s, self.what, self.first_after_s = round, interval_s, what, first_after_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop; once."""
        assert self._task is None, f"{self.what} starts once"
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended (a round under way is cancelled with it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self.first_after_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.round()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("%s failed; trying again in %g s", self.what, self.interval_s)
            delay = self.interval_s

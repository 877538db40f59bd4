"""Token streaming from the engines: one `Engine.poll` call at a time per engine covers all of its
requests (`EnginePoller`), and each request is a `TokenStream` that stops its request in the engine with
`Engine.cancel` when the caller goes away (deadline, cancellation, any error), which frees its batch
slot and KV cache. A request whose engine dies before its first token starts over once on another
engine (`failover`, given by the backend), so the caller never sees that engine's death.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ray

from switchyard.cluster.engine.sampling import SamplingParams

log = logging.getLogger(__name__)


class _Subscription:
    __slots__ = ("seen", "queue")

    def __init__(self) -> None:
        self.seen = 0
        self.queue: asyncio.Queue[tuple[list[int], bool, BaseException | None]] = asyncio.Queue()


class EnginePoller:
    """One engine's token feed: one `Engine.poll` call at a time covers every request streaming from it.

    Runs as an asyncio task while it has subscribers; each subscriber's queue gets (tokens, done, error).
    """

    def __init__(self, engine: Any, timeout_s: float) -> None:
        self.engine, self.timeout_s = engine, timeout_s
        self._subscriptions: dict[int, _Subscription] = {}
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, request_id: int) -> asyncio.Queue[tuple[list[int], bool, BaseException | None]]:
        subscription = self._subscriptions[request_id] = _Subscription()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return subscription.queue

    def unsubscribe(self, request_id: int) -> None:
        self._subscriptions.pop(request_id, None)

    async def _run(self) -> None:
        while self._subscriptions:
            seen = {request_id: sub.seen for request_id, sub in self._subscriptions.items()}
            try:
                report = await self.engine.poll.remote(seen, self.timeout_s)
            except Exception as error:  # noqa: BLE001 - the engine is gone or broken: every stream gets it
                for subscription in self._subscriptions.values():
                    subscription.queue.put_nowait(([], True, error))
                self._subscriptions.clear()
                return
            for request_id, (tokens, done, error) in report.items():
                subscription = self._subscriptions.get(request_id)
                if subscription is None:  # cancelled meanwhile
                    continue
                subscription.seen += len(tokens)
                if tokens or done:
                    subscription.queue.put_nowait((tokens, done, error))
                if done:
                    del self._subscriptions[request_id]


class TokenStream:
    """One request on one engine: iterate for lists of new token ids; `output` has them all.

    failover: called when the engine dies before the first token; it may `move` the stream to another
    engine and return True to start over there (once), or return False (the death is raised).
    """

    def __init__(self, engine: Any, poller: EnginePoller, engine_index: int, node: int, prompt: list[int],
                 params: SamplingParams,
                 failover: Callable[[TokenStream], Awaitable[bool]] | None = None) -> None:
        self.engine, self.poller, self.engine_index, self.node = engine, poller, engine_index, node
        self.prompt, self.params, self.failover = prompt, params, failover
        self.output: list[int] = []
        self.done = False
        self.failed_over = False
        self._submitted: Any = None  # the ObjectRef of the submit call

    def move(self, engine: Any, poller: EnginePoller, engine_index: int, node: int) -> None:
        """Start over on another engine (nothing was streamed: see `failover`)."""
        self.engine, self.poller, self.engine_index, self.node = engine, poller, engine_index, node
        self._submitted, self.done, self.failed_over = None, False, True

    async def __aiter__(self) -> AsyncIterator[list[int]]:
        while True:
            try:
                async for tokens in self._run():
                    yield tokens
                return
            except ray.exceptions.RayActorError:
                if self.output or self.failed_over or self.failover is None or not await self.failover(self):
                    raise

    async def _run(self) -> AsyncIterator[list[int]]:
        self._submitted = self.engine.submit.remote(self.prompt, self.params)
        request_id = await self._submitted
        queue = self.poller.subscribe(request_id)
        try:
            while not self.done:
                tokens, self.done, error = await queue.get()
                if error is not None:
                    raise error
                if tokens:
                    self.output += tokens
                    yield tokens
        finally:
            self.poller.unsubscribe(request_id)

    def cancel(self) -> None:
        """Stop the request in the engine unless it finished (no wait: safe while being cancelled)."""
        if self.done or self._submitted is None:
            return
        engine, submitted = self.engine, self._submitted

        def cancel_when_submitted(ref: Any) -> None:
            try:
                request_id = ray.get(ref)
            except ray.exceptions.RayError as error:  # the submit failed (its caller sees why): nothing to cancel
                log.debug("no request to cancel: its submit failed: %s", error)
                return
            engine.cancel.remote(request_id)

        # The submit call may still be on its way; cancel as soon as its id is known.
        submitted.future().add_done_callback(lambda _: cancel_when_submitted(submitted))

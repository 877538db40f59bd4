"""Calls of several engines for the same MoE layer, run as one expert computation.

With more than one engine (one per node), every engine sends every worker one call per MoE layer and
step, each with its own share of the batch. Run one by one, those calls read the worker's expert
weights once per engine, and that reading is what a worker's compute costs on a CPU (memory-bound: a
layer's experts are ~50 MB in the `small` Mixtral, 16 tokens or 32 tokens take about the same time).
So the worker runs the calls that wait for the same layer and epoch as one `forward` on their
concatenated tokens (per token the arithmetic is the same; only the batch is larger), and splits the
output.

Engines drift apart, so calls rarely arrive together by chance. A call therefore waits up to
`window_s` for the same layer's call from every other engine whose latest call was for the layer
before (so that its next call is this layer's; after the last layer, layer 0) within the last
`active_s` seconds. Only the engine that is ahead waits, which brings the engines into step within a
few layers, after which the calls arrive together and the wait is short. An engine that has stopped
calling (no requests) is not waited for after `active_s`; with one engine nothing waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

Forward = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

WINDOW_S = 0.002
"""How long a call waits at most for the other active engines' calls of the same layer."""
ACTIVE_S = 0.25
"""An engine that has called within this many seconds is waited for (it is decoding)."""


@dataclass(eq=False)
class _Call:
    caller: int
    layer: int
    epoch: int
    hidden: torch.Tensor  # [n, H]
    local_slots: torch.Tensor  # [n, k]
    weights: torch.Tensor  # [n, k]
    arrived: float
    output: torch.Tensor | None = None
    error: Exception | None = None
    done: bool = False


class CallCombiner:
    """Runs `forward` for calls from several callers (engines), one computation at a time, calls of the
    same layer and epoch together (module doc).  forward: `ExpertWorker.forward`'s signature."""

    def __init__(self, forward: Forward, window_s: float = WINDOW_S, active_s: float = ACTIVE_S) -> None:
        self.forward, self.window_s, self.active_s = forward, window_s, active_s
        self._condition = threading.Condition()
        self._pending: list[_Call] = []
        self._busy = False
        self._last_call: dict[int, tuple[float, int]] = {}  # caller -> (time.monotonic(), layer) of its latest call
        self._last_layer = 0  # the highest layer called so far (after it, engines go on with layer 0)
        self.combined = 0  # calls that ran together with another (profiling)

    def run(self, caller: int, layer: int, hidden: torch.Tensor, local_slots: torch.Tensor,
            weights: torch.Tensor, epoch: int) -> torch.Tensor:
        """`forward(layer, hidden, local_slots, weights, epoch)` for `caller` (one call in flight per caller)."""
        call = _Call(caller, layer, epoch, hidden, local_slots, weights, time.monotonic())
        with self._condition:
            self._last_call[caller] = (call.arrived, layer)
            self._last_layer = max(self._last_layer, layer)
            self._pending.append(call)
            self._condition.notify_all()
            while not call.done and (self._busy or self._pending[0] is not call):
                self._condition.wait()
            if not call.done:  # this call leads: gather the same layer's calls, then compute them
                self._busy = True
                group = self._gather(call)
        if not call.done:
            self._compute(group)
            with self._condition:
                self._busy = False
                self._condition.notify_all()
        if call.error is not None:
            raise call.error
        return call.output

    def queued(self) -> int:
        """Calls waiting for their computation (not counting one under way)."""
        with self._condition:
            return len(self._pending)

    def forget(self, caller: int) -> None:
        """`caller` hung up: do not wait for it any more."""
        with self._condition:
            self._last_call.pop(caller, None)
            self._condition.notify_all()

    def _gather(self, leader: _Call) -> list[_Call]:
        """(Condition held.) The pending calls of `leader`'s layer and epoch, after waiting up to
        `window_s` for those of the active callers one layer behind (module doc); they leave the queue."""
        def same(call: _Call) -> bool:
            return call.layer == leader.layer and call.epoch == leader.epoch

        previous = leader.layer - 1 if leader.layer > 0 else self._last_layer or None  # None: nobody's before
        deadline = leader.arrived + self.window_s
        while True:
            now = time.monotonic()
            queued = {call.caller for call in self._pending}  # they have a call in (or must be served first)
            awaited = [caller for caller, (last, layer) in self._last_call.items()
                       if layer == previous and caller not in queued and now - last < self.active_s]
            if not awaited or now >= deadline:
                break
            self._condition.wait(deadline - now)
        group = [call for call in self._pending if same(call)]
        self._pending = [call for call in self._pending if not same(call)]
        return group

    def _compute(self, group: list[_Call]) -> None:
        """Run `group` as one `forward` and hand each call its rows (or the error)."""
        try:
            if len(group) == 1:
                outputs = [self.forward(group[0].layer, group[0].hidden, group[0].local_slots, group[0].weights,
                                        group[0].epoch)]
            else:
                merged = self.forward(group[0].layer, torch.cat([c.hidden for c in group]),
                                      torch.cat([c.local_slots for c in group]),
                                      torch.cat([c.weights for c in group]), group[0].epoch)
                outputs = list(merged.split([c.hidden.shape[0] for c in group]))
                self.combined += len(group)
            error = None
        except Exception as failure:  # noqa: BLE001 - every call of the group gets it
            outputs, error = [None] * len(group), failure
        with self._condition:
            for call, output in zip(group, outputs):
                call.output, call.error, call.done = output, error, True
            self._condition.notify_all()

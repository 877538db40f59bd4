"""The MoE rendezvous: the requests of one engine step meet at every MoE layer.

Each active request runs its own forward (its own KV cache, its own sequence length) in its own
thread. At every MoE layer the request's routed-experts call stops here until every request still in
the step has reached the same layer; the last to arrive concatenates their tokens and makes one
dispatch, so each worker gets one call per layer per step however many requests are batched.
Requests that finish their forward (or fail) `leave`, so the others never wait for them.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
from torch import nn

Dispatch = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _Arrival:
    """One request's tokens at one layer, and later its share of the result."""

    def __init__(self, layer: int, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor):
        self.layer, self.hidden, self.topk_ids, self.topk_weights = layer, hidden, topk_ids, topk_weights
        self.output: torch.Tensor | None = None
        self.error: BaseException | None = None


class MoeRendezvous:
    """Batches the routed-experts calls of the requests in one step into one dispatch per layer."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        self._condition = threading.Condition()
        self._participants = 0
        self._waiting: list[_Arrival] = []

    def begin_step(self, participants: int) -> None:
        with self._condition:
            assert self._participants == 0 and not self._waiting, "the previous step has not finished"
            self._participants = participants

    def leave(self) -> None:
        """A request's forward has ended (or failed): stop waiting for it."""
        with self._condition:
            self._participants -= 1
            if self._waiting and len(self._waiting) == self._participants:
                self._fire()

    def submit(self, layer: int, hidden: torch.Tensor, topk_ids: torch.Tensor,
               topk_weights: torch.Tensor) -> torch.Tensor:
        """Wait for the step's other requests at this layer; return this request's expert output."""
        arrival = _Arrival(layer, hidden, topk_ids, topk_weights)
        with self._condition:
            self._waiting.append(arrival)
            if len(self._waiting) == self._participants:
                self._fire()
            while arrival.output is None and arrival.error is None:
                self._condition.wait()
        if arrival.error is not None:
            raise arrival.error
        return arrival.output

    def _fire(self) -> None:
        """Dispatch the waiting arrivals as one batch (the lock is held; every other request waits)."""
        arrivals, self._waiting = self._waiting, []
        layer = arrivals[0].layer
        assert all(a.layer == layer for a in arrivals), "requests of one step must meet at the same layer"
        try:
            output = self._dispatch(layer, torch.cat([a.hidden for a in arrivals]),
                                    torch.cat([a.topk_ids for a in arrivals]),
                                    torch.cat([a.topk_weights for a in arrivals]))
            for arrival, part in zip(arrivals, output.split([a.hidden.shape[0] for a in arrivals])):
                arrival.output = part
        except Exception as error:  # handed to every waiting request, which re-raises it
            for arrival in arrivals:
                arrival.error = error
        self._condition.notify_all()


class RemoteExperts(nn.Module):
    """Stands in for a transformers `*Experts` module: same call, experts served by workers.

    `forward(hidden_states [n, H], top_k_index [n, k], top_k_weights [n, k]) -> [n, H]`, the signature
    every supported family's MoE block calls. `record` receives (layer, top_k_index) for statistics.
    """

    def __init__(self, layer: int, rendezvous: MoeRendezvous, record: Callable[[int, torch.Tensor], None]):
        super().__init__()
        self.layer, self.rendezvous, self.record = layer, rendezvous, record

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        self.record(self.layer, top_k_index)
        return self.rendezvous.submit(self.layer, hidden_states, top_k_index, top_k_weights)

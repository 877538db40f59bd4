"""Trace replay, a benchmark mode: every token's expert choices come from a recorded routing trace.

A random-weight checkpoint routes with none of the co-activation structure of a trained model, so the
traffic that placement saves cannot be measured on it. In replay mode the engine's gate still runs
(its compute and shapes are those of serving), but `Engine._moe` swaps each token's top-k ids and
weights at each MoE layer for the next trace token's: the all-to-all then carries real routing. The
generated text is not meaningful. Off unless a trace is given (`Runtime.start(replay=...)`).

Tokens are taken from the trace in order, one trace row per real token of a forward (padding rows
take none), wrapping round at its end; row t of every layer is the same token, so a forward's tokens
keep their choices across layers.
"""

from __future__ import annotations

import threading

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.trace import RoutingTrace


class TraceReplay:
    """Hands out trace rows to the forwards of one engine.

    trace: the routing to replay (`[T, L, k]`); its weights are used when it has them, else equal
    weights `1 / k`.  `take(n)` gives the next `n` rows `[n]` (int64 trace token indices).
    """

    def __init__(self, trace: RoutingTrace) -> None:
        if trace.num_tokens == 0:
            raise PlacementError("the replay trace has no tokens")
        self.trace = trace
        self.weights = (trace.topk_weights if trace.topk_weights is not None
                        else np.full(trace.topk_ids.shape, 1.0 / trace.top_k, dtype=np.float32))
        self.next_row = 0  # trace tokens handed out so far (not wrapped)
        self._lock = threading.Lock()

    def check_fits(self, num_layers: int, num_experts: int, top_k: int, what: str) -> None:
        """Raise `PlacementError` unless the trace has `what`'s MoE layers, experts and top-k."""
        trace = self.trace
        have = (trace.num_layers, trace.num_experts, trace.top_k)
        if have != (num_layers, num_experts, top_k):
            raise PlacementError(
                f"the replay trace has {have[0]} MoE layers x {have[1]} experts, top-{have[2]}, but {what} has "
                f"{num_layers} x {num_experts}, top-{top_k}: replay a trace recorded on a model of this shape")

    def take(self, count: int) -> np.ndarray:
        """The next `count` trace token indices `[count]` int64 (wrapping round the trace)."""
        with self._lock:
            rows = np.arange(self.next_row, self.next_row + count, dtype=np.int64) % self.trace.num_tokens
            self.next_row += count
        return rows

    def choices(self, rows: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids `[n, k]` int64 and weights `[n, k]` float32 of trace tokens `rows` at MoE layer `layer`."""
        return self.trace.topk_ids[rows, layer], self.weights[rows, layer]

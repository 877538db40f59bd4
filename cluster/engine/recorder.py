"""Routing statistics of the traffic an engine serves, as the placement library's `RoutingStats`.

Load is counted for every token (one `bincount` per forward). Co-activation (top-k sets and pairs)
comes from a sampled share of tokens, every `sample_every`-th one, kept
in a ring buffer of the latest `window` sampled tokens; its counts are scaled up by the sampling
share so that they are in the same units as the load.

`stats` reports everything since the recorder started; `take` reports what came since the previous
`take` (the state store's entries, see `switchyard.cluster.state.publisher`). The two do not disturb
each other: `take` only moves its own marks.
"""

from __future__ import annotations

import threading

import numpy as np

from switchyard.placement.stats import RoutingStats
from switchyard.placement.trace import RoutingTrace


class RoutingRecorder:
    """Per-layer expert counts and sampled top-k sets of one engine."""

    def __init__(self, num_layers: int, num_experts: int, top_k: int, sample_every: int = 1,
                 window: int = 65536) -> None:
        assert sample_every >= 1 and window >= 1
        self.num_experts, self.sample_every = num_experts, sample_every
        self.load = np.zeros((num_layers, num_experts), dtype=np.float64)  # [L, E] every token
        self.samples = np.zeros((window, num_layers, top_k), dtype=np.int64)  # [W, L, k] ring buffer
        self.num_tokens = 0  # tokens counted in `load`
        self.num_sampled = 0  # tokens ever written to the ring buffer
        # Marks of the last `take`: `load`, `num_tokens` and `num_sampled` as they were then.
        self._taken_load = np.zeros_like(self.load)  # [L, E]
        self._taken_tokens = self._taken_sampled = 0
        self._lock = threading.Lock()

    def record(self, topk_ids: np.ndarray) -> None:
        """Count one forward's tokens: `topk_ids` `[n, L, k]` int64."""
        num_tokens, num_layers, _ = topk_ids.shape
        flat = topk_ids + (np.arange(num_layers) * self.num_experts)[None, :, None]
        counts = np.bincount(flat.ravel(), minlength=self.load.size).reshape(self.load.shape)
        with self._lock:
            self.load += counts
            first = (-self.num_tokens) % self.sample_every  # the first token index divisible by it
            sampled = topk_ids[first::self.sample_every]
            self.num_tokens += num_tokens
            sampled = sampled[-len(self.samples):]
            self.samples[(self.num_sampled + np.arange(len(sampled))) % len(self.samples)] = sampled
            self.num_sampled += len(sampled)

    def stats(self) -> RoutingStats:
        """Everything recorded so far (load-only when nothing was sampled yet)."""
        with self._lock:
            load, num_tokens, samples = self.load.copy(), self.num_tokens, self._samples_since(0)
        return self._as_stats(load, num_tokens, samples)

    def take(self) -> RoutingStats:
        """What was recorded since the previous `take` (since the start, the first time), then mark now.

        The load is exact (every token counted once across successive takes); co-activation comes from
        the tokens sampled meanwhile that the ring buffer still holds. `num_tokens` is 0 when idle.
        """
        with self._lock:
            load, num_tokens = self.load - self._taken_load, self.num_tokens - self._taken_tokens
            samples = self._samples_since(self._taken_sampled)
            self._taken_load[...] = self.load
            self._taken_tokens, self._taken_sampled = self.num_tokens, self.num_sampled
        return self._as_stats(load, num_tokens, samples)

    def _samples_since(self, first: int) -> np.ndarray:
        """A copy of the sampled tokens numbered `first` onwards that the ring buffer still holds,
        `[n, L, k]` oldest first. The caller holds the lock."""
        kept = min(self.num_sampled - first, len(self.samples))
        return self.samples[(self.num_sampled - kept + np.arange(kept)) % len(self.samples)]

    def _as_stats(self, load: np.ndarray, num_tokens: int, samples: np.ndarray) -> RoutingStats:
        """`RoutingStats` of `load` `[L, E]` over `num_tokens` tokens, co-activation from `samples`
        `[n, L, k]` scaled to the load's units (load-only when `n` is 0)."""
        if len(samples) == 0:
            return RoutingStats.from_load(load, float(num_tokens))
        sampled = RoutingStats.from_trace(RoutingTrace(samples, np.array([len(samples)]), self.num_experts))
        scale = num_tokens / len(samples)
        return RoutingStats(load, sampled.pair_counts * scale, sampled.topk_sets,
                            tuple(c * scale for c in sampled.set_counts), float(num_tokens))

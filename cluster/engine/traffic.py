"""Traffic counters: the all-to-all bytes an engine sends to and receives from expert workers.

Per MoE layer an engine sends each worker the hidden states of the tokens routed to it (with their
slots and gate weights) and receives one hidden vector per token back. Placement exists to cut this
traffic, so it is counted per worker and split by whether the worker is on the engine's node.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TrafficCounters:
    """Tokens and bytes exchanged between one engine and every worker.

    node_of_worker: `[G]` int64, the plan node of each worker.  home_node: the engine's plan node.
    tokens: `[G]` int64 token vectors sent (one per token per layer per worker it uses).
    bytes: `[G]` int64 bytes sent and received (dispatch: hidden, slots, weights; combine: hidden).
    """

    def __init__(self, node_of_worker: np.ndarray, home_node: int) -> None:
        self.node_of_worker = np.asarray(node_of_worker, dtype=np.int64)
        self.home_node = int(home_node)
        self.tokens = np.zeros(len(self.node_of_worker), dtype=np.int64)
        self.bytes = np.zeros(len(self.node_of_worker), dtype=np.int64)

    def add(self, worker: int, num_tokens: int, num_bytes: int) -> None:
        self.tokens[worker] += num_tokens
        self.bytes[worker] += num_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counters; `same_node_bytes` / `cross_node_bytes` are totals over workers."""
        same = self.node_of_worker == self.home_node
        return {
            "home_node": self.home_node,
            "tokens_per_worker": self.tokens.tolist(),
            "bytes_per_worker": self.bytes.tolist(),
            "same_node_bytes": int(self.bytes[same].sum()),
            "cross_node_bytes": int(self.bytes[~same].sum()),
            "same_node_tokens": int(self.tokens[same].sum()),
            "cross_node_tokens": int(self.tokens[~same].sum()),
        }


def merge_traffic(counters: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the `to_dict` forms of several engines' counters (per worker and total)."""
    total: dict[str, Any] = {
        "tokens_per_worker": np.sum([c["tokens_per_worker"] for c in counters], axis=0).tolist(),
        "bytes_per_worker": np.sum([c["bytes_per_worker"] for c in counters], axis=0).tolist(),
    }
    for key in ("same_node_bytes", "cross_node_bytes", "same_node_tokens", "cross_node_tokens"):
        total[key] = int(sum(c[key] for c in counters))
    return total

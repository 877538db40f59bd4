"""A routing trace: which experts every token picked at every MoE layer.

This is the canonical in-memory form of the `.npz` trace format (DESIGN.md): row t of every layer is
the same token, so within-layer co-activation (and, for analyses, layer-to-layer patterns) can be read off it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchyard.placement.errors import PlacementError


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """Per-token routing decisions.

    topk_ids: `[T, L, k]` int64, the experts each token picked at each layer (ids in `[0, E)`).
    topk_weights: `[T, L, k]` float32 gate weights, or None when the source has none.
    seq_lens: `[S]` int64, tokens of each sequence in order; sums to T.
    num_experts: E, the number of logical experts per layer.
    """

    topk_ids: np.ndarray
    seq_lens: np.ndarray
    num_experts: int
    topk_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = np.asarray(self.topk_ids)
        if ids.ndim != 3:
            raise PlacementError(f"topk_ids must be 3-D [tokens, layers, k], got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise PlacementError(f"topk_ids must hold integer expert ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        num_experts = int(self.num_experts)
        if num_experts < 1:
            raise PlacementError(f"num_experts must be positive, got {num_experts}")
        if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise PlacementError(f"topk_ids holds expert id {bad}, outside [0, {num_experts})")
        seq_lens = np.asarray(self.seq_lens, dtype=np.int64).reshape(-1)
        if (seq_lens < 0).any() or seq_lens.sum() != ids.shape[0]:
            raise PlacementError(
                f"seq_lens must be non-negative and sum to the {ids.shape[0]} tokens, "
                f"got sum {int(seq_lens.sum())}"
            )
        weights = self.topk_weights
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32)
            if weights.shape != ids.shape:
                raise PlacementError(f"topk_weights has shape {weights.shape}, topk_ids {ids.shape}")
        for name, value in (("topk_ids", ids), ("seq_lens", seq_lens), ("topk_weights", weights)):
            if value is not None:
                value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "num_experts", num_experts)

    @property
    def num_tokens(self) -> int:
        return self.topk_ids.shape[0]

    @property
    def num_layers(self) -> int:
        return self.topk_ids.shape[1]

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[2]

    @property
    def sequence_of_token(self) -> np.ndarray:
        """`[T]` int64: the sequence index of every token."""
        return np.repeat(np.arange(len(self.seq_lens), dtype=np.int64), self.seq_lens)

    def home_node_of_token(self, num_nodes: int) -> np.ndarray:
        """`[T]` int64: each token's home node; sequences are assigned to nodes round-robin."""
        return self.sequence_of_token % num_nodes

    def slice_tokens(self, start: int | None, stop: int | None) -> RoutingTrace:
        """Tokens `[start, stop)` (Python slice rules); sequences cut at the edges keep their inside part."""
        start, stop, _ = slice(start, stop).indices(self.num_tokens)
        stop = max(start, stop)
        ends = np.cumsum(self.seq_lens)
        begins = ends - self.seq_lens
        seq_lens = np.clip(ends, start, stop) - np.clip(begins, start, stop)
        weights = None if self.topk_weights is None else self.topk_weights[start:stop]
        return RoutingTrace(self.topk_ids[start:stop], seq_lens[seq_lens > 0], self.num_experts, weights)

    def split(self, fraction: float = 0.5) -> tuple[RoutingTrace, RoutingTrace]:
        """The first `fraction` of tokens and the rest (the usual plan-on-first, evaluate-on-second split)."""
        cut = int(round(self.num_tokens * fraction))
        return self.slice_tokens(0, cut), self.slice_tokens(cut, None)

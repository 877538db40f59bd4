"""Routing statistics: what a placement policy needs to know about traffic, without the tokens.

A trace says what every token picked; policies need less: how many tokens each expert gets (load),
and which experts the same tokens pick together (co-activation). `RoutingStats` holds exactly that,
in counts that add up, so
windows of traffic can be merged and older windows decayed. Sources that only report load (vLLM's
load matrices, SGLang's `stat` dumps, OLMoE's published counts) give load-only stats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchyard.placement.errors import PlacementError, positive_int, unit_interval
from switchyard.placement.trace import RoutingTrace


@dataclass(frozen=True, eq=False)
class RoutingStats:
    """Token counts per expert, per expert pair and per top-k set.

    load: `[L, E]` float64, tokens that picked each expert (decayed counts are fractional).
    pair_counts: `[L, E, E]` float64 or None; symmetric with a zero diagonal: tokens that picked
        both experts at that layer.
    topk_sets: None, or per layer a `[U_l, k]` int64 array of the distinct top-k sets seen, each
        row sorted ascending and the rows in lexicographic order.
    set_counts: None, or per layer a `[U_l]` float64 array: tokens that picked each set.
    num_tokens: tokens counted (decayed like the counts). For load-only stats built by
        `from_load` without a token count it is the mean number of selections per layer, which is
        tokens * k.

    window_load: `[W, L, E]` float64 or None: the load of each window these stats were merged from,
        oldest first, weighted as in `load` (so they sum to it); policies that hedge against drift
        hold their plan on each window separately. None: one window, `load` itself. A `merge` makes
        one window again (`windows.decayed_stats` keeps the windows apart).

    Load-only stats have `pair_counts`, `topk_sets` and `set_counts` None.
    """

    load: np.ndarray
    pair_counts: np.ndarray | None
    topk_sets: tuple[np.ndarray, ...] | None
    set_counts: tuple[np.ndarray, ...] | None
    num_tokens: float
    window_load: np.ndarray | None = None

    def __post_init__(self) -> None:
        load = _load_table(self.load)
        num_layers, num_experts = load.shape
        pairs = _counts("pair_counts", self.pair_counts, (num_layers, num_experts, num_experts))
        windows = None
        if self.window_load is not None:
            windows = _counts("window_load", self.window_load, None)
            if windows.ndim != 3 or windows.shape[1:] != load.shape or not len(windows):
                raise PlacementError(f"window_load must be [windows, {num_layers}, {num_experts}], "
                                     f"got shape {windows.shape}")
        if (self.topk_sets is None) != (self.set_counts is None):
            raise PlacementError("topk_sets and set_counts must be given together")
        sets = counts = None
        if self.topk_sets is not None:
            sets, counts = self._checked_sets(num_layers, num_experts)
        num_tokens = float(self.num_tokens)
        if not num_tokens >= 0:
            raise PlacementError(f"num_tokens must be non-negative, got {self.num_tokens!r}")
        for name, value in (("load", load), ("pair_counts", pairs),
                            ("topk_sets", sets), ("set_counts", counts), ("num_tokens", num_tokens),
                            ("window_load", windows)):
            object.__setattr__(self, name, value)

    def _checked_sets(self, num_layers: int, num_experts: int
                      ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        if len(self.topk_sets) != num_layers or len(self.set_counts) != num_layers:
            raise PlacementError(
                f"topk_sets and set_counts need one entry per layer ({num_layers}), "
                f"got {len(self.topk_sets)} and {len(self.set_counts)}"
            )
        sets, counts = [], []
        for layer, (layer_sets, layer_counts) in enumerate(zip(self.topk_sets, self.set_counts)):
            layer_sets = np.asarray(layer_sets, dtype=np.int64)
            layer_counts = _counts(f"set_counts[{layer}]", layer_counts, (len(layer_sets),))
            if layer_sets.ndim != 2:
                raise PlacementError(f"topk_sets[{layer}] must be 2-D [sets, k], got shape {layer_sets.shape}")
            if layer_sets.size and (layer_sets.min() < 0 or layer_sets.max() >= num_experts):
                raise PlacementError(f"topk_sets[{layer}] holds expert ids outside [0, {num_experts})")
            layer_sets.setflags(write=False)
            sets.append(layer_sets)
            counts.append(layer_counts)
        widths = {s.shape[1] for s in sets}
        if len(widths) > 1:
            raise PlacementError(f"topk_sets have different widths across layers: {sorted(widths)}")
        return tuple(sets), tuple(counts)

    @classmethod
    def from_trace(cls, trace: RoutingTrace, start: int | None = None, stop: int | None = None,
                   window_tokens: int | None = None) -> RoutingStats:
        """Count tokens `[start, stop)` of `trace` (Python slice rules; default: all of them).

        window_tokens: with a count, `window_load` holds the load of every run of that many
            consecutive tokens (the last run may be shorter), so that a plan can be held on each
            batch-sized piece of the traffic; None: one window.
        Vectorised per layer (one `bincount` each), so a DeepSeek-V3 sized trace (58 layers,
        256 experts, top-8) takes seconds, not minutes.
        """
        ids = trace.topk_ids[slice(start, stop)]
        num_tokens, num_layers, top_k = ids.shape
        num_experts = trace.num_experts
        flat_layer = np.arange(num_layers, dtype=np.int64)[None, :, None] * num_experts
        run = max(num_tokens, 1) if window_tokens is None else positive_int("window_tokens", window_tokens)
        window_load = _window_load(ids + flat_layer, num_layers * num_experts, run)  # [W, L * E]
        pairs = np.empty((num_layers, num_experts, num_experts))
        sets, set_counts = [], []
        for layer in range(num_layers):
            pairs[layer] = _pair_counts(ids[:, layer], ids[:, layer], num_experts, drop_same=True)
            unique, counts = np.unique(np.sort(ids[:, layer], axis=1), axis=0, return_counts=True)
            sets.append(unique.reshape(-1, top_k))
            set_counts.append(counts.astype(np.float64))
        window_load = window_load.reshape(-1, num_layers, num_experts)
        return cls(window_load.sum(axis=0), pairs, tuple(sets), tuple(set_counts), float(num_tokens),
                   None if window_tokens is None else window_load)

    @classmethod
    def from_load(cls, load: np.ndarray, num_tokens: float | None = None) -> RoutingStats:
        """Load-only stats from a `[L, E]` table of tokens per expert.

        num_tokens: the tokens behind the counts; by default the mean of the per-layer sums, i.e.
            selections (tokens * k), since a load table does not say k.
        """
        load = _load_table(load)
        if num_tokens is None:
            num_tokens = float(load.sum(axis=1).mean())
        return cls(load, None, None, None, num_tokens)

    @property
    def num_layers(self) -> int:
        return self.load.shape[0]

    @property
    def num_experts(self) -> int:
        return self.load.shape[1]

    @property
    def top_k(self) -> int:
        """k, read off the top-k sets; 0 when unknown (load-only stats)."""
        return 0 if self.topk_sets is None else self.topk_sets[0].shape[1]

    @property
    def has_coactivation(self) -> bool:
        """Whether pair counts are known (not only load)."""
        return self.pair_counts is not None

    def merge(self, other: RoutingStats) -> RoutingStats:
        """Stats of both windows together: counts summed, top-k sets unioned.

        A view that only one side has (pair counts, sets) is dropped: it would describe
        only part of the tokens. Raises `PlacementError` when the shapes or k differ.
        """
        if self.load.shape != other.load.shape:
            raise PlacementError(
                f"cannot merge stats of {self.num_layers} layers x {self.num_experts} experts with "
                f"{other.num_layers} layers x {other.num_experts} experts"
            )
        if self.topk_sets is not None and other.topk_sets is not None and self.top_k != other.top_k:
            raise PlacementError(f"cannot merge top-{self.top_k} sets with top-{other.top_k} sets")
        sets = counts = None
        if self.topk_sets is not None and other.topk_sets is not None:
            merged = [_union_sets(a, ca, b, cb) for a, ca, b, cb in
                      zip(self.topk_sets, self.set_counts, other.topk_sets, other.set_counts)]
            sets, counts = tuple(m[0] for m in merged), tuple(m[1] for m in merged)
        return RoutingStats(
            self.load + other.load,
            _sum_or_none(self.pair_counts, other.pair_counts),
            sets,
            counts,
            self.num_tokens + other.num_tokens,
        )

    @property
    def windows(self) -> np.ndarray:
        """`[W, L, E]` the load of every window merged into these stats (`[1, L, E]` for one)."""
        return self.load[None] if self.window_load is None else self.window_load

    def decayed(self, factor: float) -> RoutingStats:
        """Every count multiplied by `factor` in [0, 1]: how an older window fades before a merge."""
        unit_interval("decay factor", factor)
        return RoutingStats(
            self.load * factor,
            None if self.pair_counts is None else self.pair_counts * factor,
            self.topk_sets,
            None if self.set_counts is None else tuple(c * factor for c in self.set_counts),
            self.num_tokens * factor,
            None if self.window_load is None else self.window_load * factor,
        )


def run_count(tokens: int, run_tokens: int) -> int:
    """How many runs of `run_tokens` consecutive tokens `RoutingStats.from_trace(window_tokens=...)`
    keeps of `tokens` tokens: the last one shorter where they do not divide."""
    return -(-tokens // run_tokens)


def _window_load(flat_ids: np.ndarray, size: int, window_tokens: int) -> np.ndarray:
    """`[W, size]` float64 the counts of `flat_ids` (`[T, ...]` flat layer-expert ids) in every run
    of `window_tokens` tokens, the last one possibly shorter (at least one run, even for no tokens)."""
    count = max(run_count(len(flat_ids), window_tokens), 1)
    window = np.arange(len(flat_ids)) // window_tokens
    index = window.reshape((-1,) + (1,) * (flat_ids.ndim - 1)) * size + flat_ids
    return np.bincount(index.ravel(), minlength=count * size).reshape(count, size).astype(np.float64)


def _load_table(value: np.ndarray) -> np.ndarray:
    load = _counts("load", value, None)
    if load.ndim != 2 or 0 in load.shape:
        raise PlacementError(f"load must be a non-empty [layers, experts] table, got shape {load.shape}")
    return load


def _counts(name: str, value: np.ndarray | None, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """`value` as a read-only float64 array of finite non-negative counts, of `shape` when given."""
    if value is None:
        return None
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise PlacementError(f"{name} must be a numeric array: {error}") from None
    if shape is not None and array.shape != shape:
        raise PlacementError(f"{name} must have shape {shape}, got {array.shape}")
    if array.size and not (np.isfinite(array).all() and array.min() >= 0):
        raise PlacementError(f"{name} must hold finite non-negative counts")
    array.setflags(write=False)
    return array


def _pair_counts(first: np.ndarray, second: np.ndarray, num_experts: int, drop_same: bool = False
                 ) -> np.ndarray:
    """`[E, E]` float64: tokens with e among `first[t]` and f among `second[t]` (both `[T, k]`).

    With `drop_same`, pairs of one expert with itself are left out (the zero diagonal of
    within-layer pair counts).
    """
    a = first[:, :, None]
    b = second[:, None, :]
    index = a * num_experts + b
    index = index[a != b] if drop_same else index.ravel()
    counts = np.bincount(index, minlength=num_experts * num_experts)
    return counts.reshape(num_experts, num_experts).astype(np.float64)


def _union_sets(sets_a: np.ndarray, counts_a: np.ndarray, sets_b: np.ndarray, counts_b: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The union of two layers' distinct top-k sets, with the counts of shared sets summed."""
    unique, inverse = np.unique(np.concatenate([sets_a, sets_b]), axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=np.concatenate([counts_a, counts_b]),
                         minlength=len(unique))
    return unique.reshape(-1, sets_a.shape[1]), counts


def _sum_or_none(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return None if a is None or b is None else a + b

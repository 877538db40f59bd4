"""Routing statistics from any file: a trace gives full statistics, an SGLang `stat` dump or a load
matrix `[..., L, E]` (vLLM's EPLB load, OLMoE's counts) load-only ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.formats.files import file_errors, read_content
from switchyard.placement.formats.traces import trace_of_content
from switchyard.placement.stats import RoutingStats

STATS_SUFFIXES = (".npz", ".jsonl", ".npy", ".json", ".pt")


def load_stats(path: str | Path, *, drop_incomplete: bool = False, window_tokens: int | None = None
               ) -> RoutingStats:
    """Read routing statistics from any supported file.

    A trace (`.npz`, `.jsonl`, an SGLang `per_token` dump) gives full stats (`from_trace`, with
    `window_tokens`); an SGLang `stat` dump or a load matrix (`.npy`, `.json` nested list, `.pt`
    tensor) gives load-only stats, which have no runs of tokens to keep (`window_tokens` must be None).
    """
    path = Path(path)
    with file_errors(path, "read"):
        content = read_content(path, STATS_SUFFIXES)
        if path.suffix in (".npz", ".jsonl") or (isinstance(content, Mapping) and "records" in content):
            return RoutingStats.from_trace(trace_of_content(path.suffix, content, drop_incomplete),
                                           window_tokens=window_tokens)
        if window_tokens is not None:
            raise PlacementError(f"{path} holds load counts, not tokens: the load of runs of {window_tokens} "
                                 "tokens needs a per-token trace")
        if isinstance(content, Mapping):
            return RoutingStats.from_load(load_from_sglang_stat(content))
        return RoutingStats.from_load(load_from_matrix(content))


def load_from_sglang_stat(dump: Mapping[str, Any]) -> np.ndarray:
    """`[L, E]` float64 load from an SGLang `stat` dump (`{"logical_count": [..., L, E], ...}`).

    Leading axes (SGLang's buffer of steps) are summed. Layers without a single selection while
    others have some are dense layers (DeepSeek's first_k_dense_replace, which SGLang still counts)
    and are dropped, as `trace_from_sglang_dump` does.
    """
    if "logical_count" not in dump:
        raise PlacementError(f"no 'logical_count' (found keys: {', '.join(map(str, dump)) or 'none'}); "
                             "expected an SGLang stat dump or a per_token dump with 'records'")
    load = load_from_matrix(dump["logical_count"])
    used = load.sum(axis=1) > 0
    return load[used] if used.any() else load


def load_from_matrix(matrix: Any) -> np.ndarray:
    """`[L, E]` float64 from a `[..., L, E]` count array (vLLM-style load, OLMoE counts); leading
    axes (a window of steps) are summed."""
    try:
        array = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise PlacementError(f"a load matrix must be a numeric [layers, experts] array: {error}") from None
    if array.ndim < 2 or array.size == 0:
        raise PlacementError(f"a load matrix must be [..., layers, experts], got shape {array.shape}")
    return array.reshape(-1, *array.shape[-2:]).sum(axis=0)

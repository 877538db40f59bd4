"""Per-token routing traces: the canonical `.npz`, the Mixtral `.jsonl` sample, SGLang `per_token` dumps.

The in-memory converters (`trace_from_*`) are pure, so engines that hand over objects instead of files
use them directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.formats.files import file_errors, read_content
from switchyard.placement.trace import RoutingTrace

MIXTRAL_KEYS = ("problem_id", "token_idx", "layer", "experts", "gating_probs")
TRACE_SUFFIXES = (".npz", ".jsonl", ".json", ".pt")


def load_trace(path: str | Path, *, drop_incomplete: bool = False) -> RoutingTrace:
    """Read a per-token trace: `.npz`, Mixtral `.jsonl`, or an SGLang `per_token` dump (`.pt`/`.json`).

    drop_incomplete: for `.jsonl`, skip tokens that lack a record for some layer instead of failing.
    """
    path = Path(path)
    with file_errors(path, "read"):
        return trace_of_content(path.suffix, read_content(path, TRACE_SUFFIXES, "trace "), drop_incomplete)


def save_trace(trace: RoutingTrace, path: str | Path) -> None:
    """Write `trace` as a canonical `.npz` (ids as int16 where E allows, `num_experts` stored)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise PlacementError(f"{path}: a trace is saved as .npz, got suffix {path.suffix!r}")
    id_type = np.int16 if trace.num_experts <= np.iinfo(np.int16).max else np.int32
    arrays = {"topk_ids": trace.topk_ids.astype(id_type), "seq_lens": trace.seq_lens,
              "num_experts": np.int64(trace.num_experts)}
    if trace.topk_weights is not None:
        arrays["topk_weights"] = trace.topk_weights
    with file_errors(path, "write"), path.open("wb") as file:
        np.savez_compressed(file, **arrays)


def trace_from_npz(arrays: Mapping[str, np.ndarray]) -> RoutingTrace:
    """The trace in an `.npz`'s arrays; `seq_lens` defaults to one sequence, E to the largest id + 1."""
    if "topk_ids" not in arrays:
        raise PlacementError(f"no 'topk_ids' array (found: {', '.join(sorted(arrays)) or 'none'})")
    ids = np.asarray(arrays["topk_ids"])
    if ids.ndim != 3 or ids.size == 0:
        raise PlacementError(f"topk_ids must be a non-empty [tokens, layers, k] array, got shape {ids.shape}")
    num_experts = np.asarray(arrays.get("num_experts", ids.max() + 1))
    if num_experts.size != 1 or not np.issubdtype(num_experts.dtype, np.integer):
        raise PlacementError(f"num_experts must be one integer, got {num_experts.dtype} {num_experts.shape}")
    seq_lens = arrays["seq_lens"] if "seq_lens" in arrays else np.array([len(ids)])
    return RoutingTrace(ids, seq_lens, int(num_experts), arrays.get("topk_weights"))


def trace_from_mixtral_records(records: Iterable[Mapping[str, Any]], num_experts: int = 8,
                               drop_incomplete: bool = False) -> RoutingTrace:
    """Tokens from per-(token, layer) records, ordered by (dataset, problem_id, token_idx).

    Each problem is one sequence. Every token must have a record for each layer 0..L-1; a token
    without one raises (naming it) unless `drop_incomplete`, which leaves such tokens out.
    """
    rows = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, Mapping) or any(key not in record for key in MIXTRAL_KEYS):
            raise PlacementError(f"record {number} is not an object with keys {', '.join(MIXTRAL_KEYS)}")
        numbers = [record[key] for key in ("problem_id", "token_idx", "layer")]
        experts, probs = np.asarray(record["experts"]), np.asarray(record["gating_probs"])
        if (any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in numbers)
                or experts.ndim != 1 or not np.issubdtype(experts.dtype, np.integer)
                or probs.shape != experts.shape or not np.issubdtype(probs.dtype, np.number)):
            raise PlacementError(
                f"record {number}: problem_id, token_idx and layer must be non-negative integers, "
                "experts a list of ids and gating_probs a list of as many numbers"
            )
        rows.append(((str(record.get("dataset", "")), *numbers[:2]), numbers[2], experts, probs, number))
    if not rows:
        raise PlacementError("no routing records")
    tokens = sorted({row[0] for row in rows})
    token_of = {key: index for index, key in enumerate(tokens)}
    top_k = len(rows[0][2])
    ids = np.full((len(tokens), max(row[1] for row in rows) + 1, top_k), -1, dtype=np.int64)
    weights = np.zeros(ids.shape, dtype=np.float32)
    seen = np.zeros(ids.shape[:2], dtype=bool)
    for key, layer, experts, probs, number in rows:
        if len(experts) != top_k:
            raise PlacementError(f"record {number} has {len(experts)} experts, record 1 has {top_k}")
        if seen[token_of[key], layer]:
            raise PlacementError(f"record {number} repeats layer {layer} of {_token_name(key)}")
        seen[token_of[key], layer] = True
        ids[token_of[key], layer] = experts
        weights[token_of[key], layer] = probs
    complete = seen.all(axis=1)
    if not drop_incomplete and not complete.all():
        token = int(np.flatnonzero(~complete)[0])
        missing = np.flatnonzero(~seen[token]).tolist()
        raise PlacementError(f"{_token_name(tokens[token])} has no record for layer(s) {missing} "
                             "(drop_incomplete=True leaves such tokens out)")
    problems = [key[:2] for key, keep in zip(tokens, complete) if keep]
    seq_lens = [len(list(group)) for _, group in itertools.groupby(problems)]
    return RoutingTrace(ids[complete], np.array(seq_lens), num_experts, weights[complete])


def trace_from_sglang_dump(dump: Mapping[str, Any]) -> RoutingTrace:
    """The tokens of an SGLang `per_token` dump (`{"records": [...], "last_physical_to_logical_map"}`).

    Each record is one forward pass; its `topk_ids_of_layer` is `[L, n, 8]` *physical* expert ids
    (SGLang records after `topk_ids_logical_to_physical`), -1 where nothing was written. They are
    mapped to logical ids with `last_physical_to_logical_map [L, P]` when present (the map at dump
    time: a dump spanning a rebalance mixes maps, so record between rebalances). Unwritten entries
    are dropped where they are structural: layers -1 throughout are dense layers (DeepSeek's
    first_k_dense_replace), columns -1 throughout pad k to SGLang's fixed 8, tokens -1 throughout
    are batch padding; any other -1 is an error. Sequences: a record's `extend_seq_lens` when they
    add up to its tokens (prefill), else one sequence per token (decode: one token per request).
    """
    if not isinstance(dump, Mapping) or "records" not in dump:
        raise PlacementError("an SGLang per_token dump is an object with a 'records' list")
    if not isinstance(dump["records"], (list, tuple)):
        raise PlacementError(f"'records' must be a list, got {type(dump['records']).__name__}")
    blocks, record_seq_lens = [], []
    for number, record in enumerate(dump["records"]):
        if not isinstance(record, Mapping) or "topk_ids_of_layer" not in record:
            raise PlacementError(f"record {number} has no 'topk_ids_of_layer'")
        ids = np.asarray(record["topk_ids_of_layer"])
        if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < -1):
            raise PlacementError(f"record {number}: topk_ids_of_layer must be [layers, tokens, k] expert ids "
                                 f"or -1, got {ids.dtype} {ids.shape}")
        if blocks and ids.shape[::2] != blocks[0].shape[1:]:
            raise PlacementError(f"record {number} has {ids.shape[0]} layers x top-{ids.shape[2]}, "
                                 f"record 0 {blocks[0].shape[1]} x top-{blocks[0].shape[2]}")
        blocks.append(ids.transpose(1, 0, 2).astype(np.int64))
        record_seq_lens.append(record.get("extend_seq_lens"))
    if not blocks:
        raise PlacementError("the dump has no records")
    ids = _logical_ids(np.concatenate(blocks), dump.get("last_physical_to_logical_map"))
    valid = ids >= 0
    if not valid.any():
        raise PlacementError("the records hold no routed token")
    used_token, used_layer = valid.any(axis=(1, 2)), valid.any(axis=(0, 2))
    ids = ids[:, used_layer][:, :, valid.any(axis=(0, 1))]
    ends = np.cumsum([len(block) for block in blocks])
    partial = used_token[:, None, None] & (ids < 0)
    if partial.any():
        token, layer, _ = np.argwhere(partial)[0]
        record = int(np.searchsorted(ends, token, side="right"))
        raise PlacementError(f"record {record}: token {token - (ends[record] - len(blocks[record]))} lacks "
                             f"some of its top-k ids at layer {np.flatnonzero(used_layer)[layer]}")
    ids = ids[used_token]
    seq_lens = []
    for end, block, lens in zip(ends, blocks, record_seq_lens):
        kept = int(used_token[end - len(block):end].sum())
        lens = list(lens) if isinstance(lens, (list, tuple, np.ndarray)) else []
        seq_lens.extend(lens if lens and sum(lens) == kept else [1] * kept)
    num_experts = int(ids.max()) + 1
    if dump.get("last_physical_to_logical_map") is not None:
        num_experts = int(np.max(dump["last_physical_to_logical_map"])) + 1
    return RoutingTrace(ids, np.array(seq_lens), num_experts)


def _logical_ids(ids: np.ndarray, physical_to_logical: Any) -> np.ndarray:
    """`[T, L, k]` physical ids (-1 kept) mapped through `physical_to_logical [L, P]` when given."""
    if physical_to_logical is None:
        return ids
    table = np.asarray(physical_to_logical)
    if table.ndim != 2 or table.shape[0] != ids.shape[1] or not np.issubdtype(table.dtype, np.integer):
        raise PlacementError(f"last_physical_to_logical_map must be integer [{ids.shape[1]} layers, slots], "
                             f"got {table.dtype} {table.shape}")
    if ids.max() >= table.shape[1]:
        raise PlacementError(f"physical expert id {ids.max()} is outside the map's {table.shape[1]} slots")
    layer = np.arange(ids.shape[1])[None, :, None]
    return np.where(ids >= 0, table[layer, np.maximum(ids, 0)], -1)


def _token_name(key: tuple[str, int, int]) -> str:
    dataset, problem, token = key
    return f"token {token} of problem {problem}" + (f" ({dataset})" if dataset else "")


def trace_of_content(suffix: str, content: Any, drop_incomplete: bool = False) -> RoutingTrace:
    """The trace in a file's content (`files.read_content`) with suffix `suffix`."""
    if suffix == ".npz":
        return trace_from_npz(content)
    if suffix == ".jsonl":
        return trace_from_mixtral_records(content, drop_incomplete=drop_incomplete)
    if not (isinstance(content, Mapping) and "records" in content):
        raise PlacementError("holds no per-token routing (an SGLang per_token dump has 'records'); "
                             "load counts with load_stats")
    return trace_from_sglang_dump(content)

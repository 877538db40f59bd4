"""Every file the placement library reads or writes: traces, statistics, plans and engine exports.

This is the only module of `placement/` that touches files. Readers dispatch on the suffix (and, for
`.json` and `.pt`, on the content); every failure (a missing or unreadable file, a missing key, a
wrong shape, an id out of range) raises `PlacementError` naming the file. The in-memory converters
(`trace_from_*`, `load_from_*`, `to_*`) are pure, so engines that hand over objects instead of files
use them directly. torch is imported lazily, and only to read `.pt` files.

Formats read:
  `.npz` trace     the canonical format (DESIGN.md, ../shared/traces/README.md): `topk_ids [T, L, k]`,
                   optional `topk_weights [T, L, k]`, `seq_lens [S]`, `num_experts`.
  `.jsonl` trace   the Mixtral sample's records (github Mario928/speculative-moe): one object per
                   (token, layer) with `dataset, problem_id, layer, token_idx, experts, gating_probs`.
  SGLang dumps     `ExpertDistributionRecorder.dump_record` (sglang `srt/eplb/expert_distribution.py`),
                   `.pt` (torch.save) or the same object as `.json`: `per_token` mode gives
                   `{"records": [{"topk_ids_of_layer": [L, n, 8], ...}], "last_physical_to_logical_map"}`,
                   `stat` mode gives `{"logical_count": [..., L, E], ...}`.
  load matrices    `[..., L, E]` tokens per logical expert (`.npy`, `.json` nested lists, `.pt` tensor),
                   like vLLM's EPLB expert load and OLMoE's published counts; leading axes are summed.
"""

from __future__ import annotations

import itertools
import json
import pickle
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats
from switchyard.placement.trace import RoutingTrace

EXPORT_FORMATS = ("sglang", "vllm", "trtllm")
MIXTRAL_KEYS = ("problem_id", "token_idx", "layer", "experts", "gating_probs")


# ----------------------------------------------------------------------------------------- traces

def load_trace(path: str | Path, *, drop_incomplete: bool = False) -> RoutingTrace:
    """Read a per-token trace: `.npz`, Mixtral `.jsonl`, or an SGLang `per_token` dump (`.pt`/`.json`).

    drop_incomplete: for `.jsonl`, skip tokens that lack a record for some layer instead of failing.
    """
    path = Path(path)
    with _file_errors(path, "read"):
        return _read_trace(path, drop_incomplete)


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
    with _file_errors(path, "write"), path.open("wb") as file:
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


# ------------------------------------------------------------------------------------- statistics

def load_stats(path: str | Path, *, drop_incomplete: bool = False) -> RoutingStats:
    """Read routing statistics from any supported file.

    A trace (`.npz`, `.jsonl`, an SGLang `per_token` dump) gives full stats (`from_trace`); an SGLang
    `stat` dump or a load matrix (`.npy`, `.json` nested list, `.pt` tensor) gives load-only stats.
    """
    path = Path(path)
    with _file_errors(path, "read"):
        if path.suffix in (".npz", ".jsonl"):
            return RoutingStats.from_trace(_read_trace(path, drop_incomplete))
        if path.suffix == ".npy":
            return RoutingStats.from_load(load_from_matrix(np.load(path, allow_pickle=False)))
        content = _read_json_or_torch(path)
        if isinstance(content, Mapping) and "records" in content:
            return RoutingStats.from_trace(trace_from_sglang_dump(content))
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


# ------------------------------------------------------------------------------------------ plans

def save_plan(plan: Plan, path: str | Path) -> None:
    """Write `plan` as JSON (`Plan.to_dict`: `physical_to_logical_map` plus the topology)."""
    path = Path(path)
    with _file_errors(path, "write"):
        path.write_text(json.dumps(plan.to_dict()) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by `save_plan`."""
    path = Path(path)
    with _file_errors(path, "read"):
        return Plan.from_dict(json.loads(path.read_text()))


def export_plan(plan: Plan, fmt: str, path: str | Path, *, first_moe_layer: int = 0) -> None:
    """Write `plan` in an engine's own format: "sglang" / "vllm" (JSON), "trtllm" (YAML).

    first_moe_layer: the decoder layer number of MoE layer 0, for engines that number all decoder
        layers (SGLang, TensorRT-LLM); e.g. 1 for DeepSeek-V2-Lite, 3 for DeepSeek-V3. vLLM numbers
        MoE layers only and ignores it.
    """
    if fmt not in EXPORT_FORMATS:
        raise PlacementError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "sglang":
        text = json.dumps(to_sglang(plan, first_moe_layer)) + "\n"
    elif fmt == "vllm":
        text = json.dumps(to_vllm(plan)) + "\n"
    else:
        text = trtllm_yaml(to_trtllm(plan, first_moe_layer))
    path = Path(path)
    with _file_errors(path, "write"):
        path.write_text(text)


def to_sglang(plan: Plan, first_moe_layer: int = 0) -> dict[str, Any]:
    """SGLang's `--init-expert-location` JSON: `{"physical_to_logical_map": [layers][P]}`.

    SGLang (`srt/eplb/expert_location.py`, `compute_initial_expert_location_metadata`) passes the
    file's keys to `ExpertLocationMetadata.init_by_mapping(**data)`, so this is the only key. Its map
    has a row per decoder layer (`num_hidden_layers`), so the `first_moe_layer` dense layers get the
    trivial row (slot p holds expert p % E). Launch with `--ep-size` = G and
    `--ep-num-redundant-experts` = P - E; SGLang puts slot p on GPU p // (P / G), as the plan does.
    """
    _check_first_moe_layer(first_moe_layer)
    trivial = np.arange(plan.num_physical_experts) % plan.num_logical_experts
    rows = [trivial.tolist()] * first_moe_layer + plan.physical_to_logical.tolist()
    return {"physical_to_logical_map": rows}


def to_vllm(plan: Plan) -> dict[str, Any]:
    """vLLM's EPLB state for the plan (names and shapes of `EplbModelState`, vllm
    `distributed/eplb/eplb_state.py`), rows per MoE layer as vLLM counts them.

    physical_to_logical_map `[L, P]`; logical_to_physical_map `[L, E, R]`, -1 padded (vLLM pads R to
    its own capacity on load); logical_replica_count `[L, E]`; plus ep_size (G) and
    num_redundant_experts (P - E) for `--enable-eplb`. vLLM's per-rank `expert_map` is left out: with
    EPLB it maps global slot ids to local ones, slots p // S == rank, the same for every plan.
    """
    return {
        "physical_to_logical_map": plan.physical_to_logical.tolist(),
        "logical_to_physical_map": plan.logical_to_physical.tolist(),
        "logical_replica_count": plan.replica_count.tolist(),
        "ep_size": plan.topology.num_gpus,
        "num_redundant_experts": plan.num_physical_experts - plan.num_logical_experts,
    }


def to_trtllm(plan: Plan, first_moe_layer: int = 0) -> dict[str, Any]:
    """TensorRT-LLM's `moe_config.load_balancer` file (`MoeLoadBalancerConfig`, tensorrt_llm
    `llmapi/llm_args.py`; examples/wide_ep/ep_load_balancer/README.md): `num_slots` (P),
    `initial_global_assignments` {decoder layer index: expert id of each slot} and
    `layer_updates_per_iter` 0 (static placement). Run with EP size G: every successive P / G slots
    go to one rank, as in the plan.
    """
    _check_first_moe_layer(first_moe_layer)
    rows = plan.physical_to_logical.tolist()
    assignments = {first_moe_layer + layer: row for layer, row in enumerate(rows)}
    return {"num_slots": plan.num_physical_experts, "initial_global_assignments": assignments,
            "layer_updates_per_iter": 0}


def _check_first_moe_layer(first_moe_layer: int) -> None:
    if isinstance(first_moe_layer, bool) or not isinstance(first_moe_layer, int) or first_moe_layer < 0:
        raise PlacementError(f"first_moe_layer must be a non-negative integer, got {first_moe_layer!r}")


def trtllm_yaml(config: Mapping[str, Any]) -> str:
    """`to_trtllm`'s dict as YAML, lists in flow style like TensorRT-LLM's `generate_eplb_config.py`.

    Written by hand: three keys of ints and int lists need no YAML library.
    """
    lines = [f"num_slots: {int(config['num_slots'])}",
             f"layer_updates_per_iter: {int(config['layer_updates_per_iter'])}",
             "initial_global_assignments:"]
    lines += [f"  {int(layer)}: [{', '.join(str(int(e)) for e in row)}]"
              for layer, row in config["initial_global_assignments"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- reading

def _read_trace(path: Path, drop_incomplete: bool) -> RoutingTrace:
    if path.suffix == ".npz":
        return trace_from_npz(_read_npz(path))
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        records = [_json_line(line, number) for number, line in enumerate(lines, 1) if line.strip()]
        return trace_from_mixtral_records(records, drop_incomplete=drop_incomplete)
    if path.suffix in (".json", ".pt"):
        content = _read_json_or_torch(path)
        if not (isinstance(content, Mapping) and "records" in content):
            raise PlacementError("holds no per-token routing (an SGLang per_token dump has 'records'); "
                                 "load counts with load_stats")
        return trace_from_sglang_dump(content)
    raise PlacementError(f"unknown trace suffix {path.suffix!r}; expected .npz, .jsonl, .json or .pt")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise PlacementError("holds a single array, not an .npz archive of named arrays")
    with data:
        return {name: data[name] for name in data.files}


def _json_line(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise PlacementError(f"line {number} is not JSON: {error}") from None


def _read_json_or_torch(path: Path) -> Any:
    """A `.json` file's value, or a `.pt` file's object with tensors turned into numpy arrays."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix != ".pt":
        raise PlacementError(f"unknown suffix {path.suffix!r}; expected .npz, .jsonl, .npy, .json or .pt")
    try:
        import torch  # only .pt files need torch; placement/ stays importable without it
    except ImportError:
        raise PlacementError("reading .pt files needs PyTorch, which is not installed") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as error:
        raise PlacementError(f"not a loadable PyTorch file: {error}") from None

    def to_numpy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.numpy()
        if isinstance(value, Mapping):
            return {key: to_numpy(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [to_numpy(item) for item in value]
        return value

    return to_numpy(content)


@contextmanager
def _file_errors(path: Path, action: str) -> Iterator[None]:
    """Turn every way reading or writing `path` can fail into one `PlacementError` naming it."""
    try:
        yield
    except PlacementError as error:
        raise PlacementError(f"{path}: {error}") from None
    except FileNotFoundError:
        raise PlacementError(f"{path}: no such file or directory") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise PlacementError(f"cannot {action} {path}: {error}") from None
    except ValueError as error:  # bad JSON, bad UTF-8, numpy's format and pickle refusals
        raise PlacementError(f"{path}: unreadable content: {error}") from None

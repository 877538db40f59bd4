"""File formats: round trips of traces, plans and engine exports; the real traces; every error path."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from switchyard.placement.errors import PlacementError
from switchyard.placement.formats import (
    export_plan,
    load_plan,
    load_stats,
    load_trace,
    save_plan,
    save_trace,
    to_sglang,
    to_trtllm,
    to_vllm,
    trace_from_mixtral_records,
    trace_from_sglang_dump,
)
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace


def small_plan() -> Plan:
    # 4 experts on 2 nodes x 1 GPU x 3 slots, 2 layers; replicas of one expert on different GPUs.
    return Plan(np.array([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 2]]), Topology(2, 1, 3), 4)


def small_trace(weights: bool = True) -> RoutingTrace:
    ids = np.array([[[0, 1], [2, 3]], [[1, 2], [0, 3]], [[3, 0], [1, 2]]])
    topk_weights = np.full(ids.shape, 0.5, dtype=np.float32) if weights else None
    return RoutingTrace(ids, np.array([2, 1]), 6, topk_weights)


def assert_same_trace(a: RoutingTrace, b: RoutingTrace) -> None:
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_array_equal(a.seq_lens, b.seq_lens)
    assert a.num_experts == b.num_experts
    assert (a.topk_weights is None) == (b.topk_weights is None)
    if a.topk_weights is not None:
        np.testing.assert_allclose(a.topk_weights, b.topk_weights)


# ---------------------------------------------------------------------------------- .npz traces

@pytest.mark.parametrize("weights", [True, False], ids=["with-weights", "without-weights"])
def test_npz_round_trip(tmp_path: Path, weights: bool) -> None:
    trace = small_trace(weights)
    save_trace(trace, tmp_path / "trace.npz")
    loaded = load_trace(tmp_path / "trace.npz")
    assert_same_trace(loaded, trace)
    assert loaded.num_experts == 6  # stored: larger than the largest id + 1


def test_npz_defaults(tmp_path: Path) -> None:
    np.savez(tmp_path / "bare.npz", topk_ids=np.array([[[0, 2]], [[1, 2]]], dtype=np.int16))
    trace = load_trace(tmp_path / "bare.npz")
    assert trace.num_experts == 3 and trace.seq_lens.tolist() == [2] and trace.topk_weights is None


def test_save_trace_needs_npz_suffix(tmp_path: Path) -> None:
    with pytest.raises(PlacementError, match="saved as .npz"):
        save_trace(small_trace(), tmp_path / "trace.npy")


@pytest.mark.traces
@pytest.mark.parametrize("task", ["intent", "law"])
def test_real_esft_trace(esft_path: Callable[[str], Path], task: str) -> None:
    trace = load_trace(esft_path(task))
    assert (trace.num_layers, trace.top_k, trace.num_experts) == (26, 6, 64)
    assert trace.num_tokens > 8000 and trace.seq_lens.sum() == trace.num_tokens
    stats = load_stats(esft_path(task))
    assert stats.has_coactivation and stats.load.sum() == trace.num_tokens * 26 * 6


# ------------------------------------------------------------------------------ Mixtral .jsonl

def mixtral_records(layers: int = 2) -> list[dict[str, Any]]:
    # Problem 1 before problem 0 and tokens out of order: the loader sorts them.
    records = []
    for problem, tokens in ((1, [1, 0]), (0, [0])):
        for token in tokens:
            for layer in range(layers):
                records.append({"dataset": "demo", "problem_id": problem, "layer": layer, "token_idx": token,
                                "experts": [(problem + token + layer) % 8, 7], "gating_probs": [0.75, 0.25]})
    return records


def test_mixtral_records_order_and_sequences() -> None:
    trace = trace_from_mixtral_records(mixtral_records())
    assert trace.num_experts == 8 and trace.seq_lens.tolist() == [1, 2]
    assert trace.topk_ids[:, :, 0].tolist() == [[0, 1], [1, 2], [2, 3]]
    np.testing.assert_allclose(trace.topk_weights[..., 0], 0.75)


def test_mixtral_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "sample.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in mixtral_records()) + "\n\n")
    assert_same_trace(load_trace(path), trace_from_mixtral_records(mixtral_records()))
    assert load_stats(path).load.sum() == 3 * 2 * 2


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop(), "token 0 of problem 0 \\(demo\\) has no record for layer\\(s\\) \\[1\\]"),
        (lambda r: r.append(dict(r[0])), "record 7 repeats layer 0 of token 1 of problem 1"),
        (lambda r: r[2].update(experts=[1, 2, 3], gating_probs=[1, 1, 1]), "record 3 has 3 experts"),
        (lambda r: r[0].pop("layer"), "record 1 is not an object with keys"),
        (lambda r: r[0].update(token_idx="x"), "record 1: problem_id, token_idx and layer must be"),
        (lambda r: r[0].update(experts=[0, 9]), "expert id 9, outside \\[0, 8\\)"),
        (lambda r: r.clear(), "no routing records"),
    ],
    ids=["missing-layer", "duplicate", "other-k", "missing-key", "bad-token", "id-out-of-range", "empty"],
)
def test_mixtral_record_errors(change: Callable[[list[dict[str, Any]]], Any], message: str) -> None:
    records = mixtral_records()
    change(records)
    with pytest.raises(PlacementError, match=message):
        trace_from_mixtral_records(records)


def test_mixtral_drop_incomplete() -> None:
    records = mixtral_records()
    records.pop()  # problem 0 token 0 loses layer 1
    trace = trace_from_mixtral_records(records, drop_incomplete=True)
    assert trace.num_tokens == 2 and trace.seq_lens.tolist() == [2]


@pytest.mark.traces
@pytest.mark.parametrize("name, tokens", [("gsm8k_2_routing", 244), ("humaneval_2_routing", 333)])
def test_real_mixtral_sample(traces_dir: Path, name: str, tokens: int) -> None:
    path = traces_dir / "mixtral" / f"{name}.jsonl"
    # The published sample lacks a few (token, layer) records at the ends of sequences.
    with pytest.raises(PlacementError, match=f"{name}.jsonl: token .* has no record for layer"):
        load_trace(path)
    trace = load_trace(path, drop_incomplete=True)
    assert (trace.num_tokens, trace.num_layers, trace.top_k, trace.num_experts) == (tokens, 32, 2, 8)
    assert len(trace.seq_lens) == 2


# ------------------------------------------------------------------------------- SGLang dumps

def sglang_per_token_dump() -> dict[str, Any]:
    """Two forward passes of a model with a dense layer 0, 2 MoE layers, 4 experts in 6 slots, top-2.

    SGLang records physical ids in a [layers, tokens, 8] buffer: -1 for the dense layer, for the
    columns beyond k, and for batch padding (the decode pass's third token).
    """
    physical_to_logical = np.array([[0, 1, 2, 3, 0, 1]] * 3)
    prefill = np.full((3, 3, 8), -1)
    prefill[1, :, :2] = [[0, 1], [2, 5], [3, 4]]  # logical [0,1], [2,1], [3,0]
    prefill[2, :, :2] = [[1, 2], [3, 0], [4, 5]]  # logical [1,2], [3,0], [0,1]
    decode = np.full((3, 3, 8), -1)
    decode[1, :2, :2] = [[5, 3], [2, 1]]  # logical [1,3], [2,1]
    decode[2, :2, :2] = [[0, 2], [1, 3]]  # logical [0,2], [1,3]
    return {
        "records": [
            {"forward_pass_id": 0, "rank": 0, "extend_seq_lens": [2, 1], "topk_ids_of_layer": prefill},
            {"forward_pass_id": 1, "rank": 0, "extend_seq_lens": None, "topk_ids_of_layer": decode},
        ],
        "last_physical_to_logical_map": physical_to_logical,
    }


def expected_sglang_ids() -> list[list[list[int]]]:
    return [[[0, 1], [1, 2]], [[2, 1], [3, 0]], [[3, 0], [0, 1]], [[1, 3], [0, 2]], [[2, 1], [1, 3]]]


def test_sglang_per_token_conversion() -> None:
    trace = trace_from_sglang_dump(sglang_per_token_dump())
    assert trace.topk_ids.tolist() == expected_sglang_ids()
    assert trace.num_experts == 4 and trace.seq_lens.tolist() == [2, 1, 1, 1]


def as_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return value


def as_torch(value: Any) -> Any:
    torch = pytest.importorskip("torch")
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int32))
    if isinstance(value, dict):
        return {key: as_torch(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_torch(item) for item in value]
    return value


def write_dump(path: Path, dump: Any) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(as_json(dump)))
    else:
        torch = pytest.importorskip("torch")
        torch.save(as_torch(dump), path)
    return path


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_per_token_files(tmp_path: Path, suffix: str) -> None:
    path = write_dump(tmp_path / f"dump{suffix}", sglang_per_token_dump())
    assert load_trace(path).topk_ids.tolist() == expected_sglang_ids()
    stats = load_stats(path)
    assert stats.has_coactivation and stats.load.shape == (2, 4)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_stat_files(tmp_path: Path, suffix: str) -> None:
    count = np.zeros((2, 3, 4), dtype=np.int64)  # 2 buffered steps, dense layer 0, 4 experts
    count[0, 1:] = [[1, 2, 3, 4], [4, 3, 2, 1]]
    count[1, 1:] = [[1, 0, 0, 0], [0, 0, 0, 1]]
    path = write_dump(tmp_path / f"stat{suffix}", {"rank": 0, "logical_count": count})
    stats = load_stats(path)
    assert stats.load.tolist() == [[2, 2, 3, 4], [4, 3, 2, 2]] and not stats.has_coactivation
    with pytest.raises(PlacementError, match="holds no per-token routing"):
        load_trace(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["records"][1]["topk_ids_of_layer"].__setitem__((1, 0, 1), -1),
         "record 1: token 0 lacks some of its top-k ids at layer 1"),
        (lambda d: d["records"][0]["topk_ids_of_layer"].__setitem__((1, 0, 1), -2), "expert ids or -1"),
        (lambda d: d.__setitem__("last_physical_to_logical_map", np.zeros((2, 6), dtype=int)),
         "must be integer \\[3 layers, slots\\]"),
        (lambda d: d["records"][0]["topk_ids_of_layer"].__setitem__((1, 0, 0), 6), "outside the map's 6 slots"),
        (lambda d: d["records"][0].pop("topk_ids_of_layer"), "record 0 has no 'topk_ids_of_layer'"),
        (lambda d: d["records"][1].__setitem__("topk_ids_of_layer", np.full((2, 3, 8), -1)),
         "record 1 has 2 layers x top-8, record 0 3 x top-8"),
        (lambda d: d["records"].clear(), "the dump has no records"),
        (lambda d: d.pop("records"), "object with a 'records' list"),
        (lambda d: d.__setitem__("records", 3), "'records' must be a list"),
    ],
    ids=["partial-top-k", "below-minus-one", "map-layers", "slot-out-of-range", "missing-ids", "layer-mismatch",
         "no-records",
         "not-a-dump", "records-not-list"],
)
def test_sglang_dump_errors(change: Callable[[dict[str, Any]], Any], message: str) -> None:
    dump = sglang_per_token_dump()
    change(dump)
    with pytest.raises(PlacementError, match=message):
        trace_from_sglang_dump(dump)


# ------------------------------------------------------------------------------ load matrices

@pytest.mark.parametrize("suffix", [".npy", ".json", ".pt"])
def test_load_matrix_files(tmp_path: Path, suffix: str) -> None:
    load = np.array([[5, 1, 0, 2], [2, 2, 2, 2]])
    path = tmp_path / f"load{suffix}"
    if suffix == ".npy":
        np.save(path, load)
    elif suffix == ".json":
        path.write_text(json.dumps(load.tolist()))
    else:
        pytest.importorskip("torch").save(pytest.importorskip("torch").from_numpy(load), path)
    stats = load_stats(path)
    assert stats.load.tolist() == load.tolist() and stats.num_tokens == 8.0 and stats.top_k == 0


def test_load_matrix_window_is_summed(tmp_path: Path) -> None:
    np.save(tmp_path / "window.npy", np.ones((5, 2, 3)))
    assert load_stats(tmp_path / "window.npy").load.tolist() == [[5, 5, 5], [5, 5, 5]]


@pytest.mark.traces
def test_real_olmoe_counts(traces_dir: Path) -> None:
    stats = load_stats(traces_dir / "olmoe" / "olmoe_expert_counts_c4_layers0-7-15.npy")
    assert stats.load.shape == (3, 64) and not stats.has_coactivation


# ---------------------------------------------------------------------------------- plan JSON

def test_plan_round_trip(tmp_path: Path) -> None:
    save_plan(small_plan(), tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == small_plan()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "plan.json: unreadable content"),
        ('{"num_nodes": 1, "gpus_per_node": 1}',
         "plan.json: the plan lacks the key\\(s\\) physical_to_logical_map"),
        ('{"physical_to_logical_map": [[0, 0]], "num_nodes": 1, "gpus_per_node": 2, "num_logical_experts": 2}',
         "plan.json: layer 0: expert 1 has no replica"),
        ("[1, 2]", "plan.json: a plan must be a JSON object"),
    ],
    ids=["bad-json", "missing-key", "invalid-plan", "not-an-object"],
)
def test_load_plan_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "plan.json").write_text(content)
    with pytest.raises(PlacementError, match=message):
        load_plan(tmp_path / "plan.json")


# ------------------------------------------------------------------------------------ exports

@pytest.mark.parametrize("first_moe_layer", [0, 1], ids=["all-moe", "one-dense-layer"])
def test_sglang_export(tmp_path: Path, first_moe_layer: int) -> None:
    plan = small_plan()
    export_plan(plan, "sglang", tmp_path / "sglang.json", first_moe_layer=first_moe_layer)
    data = json.loads((tmp_path / "sglang.json").read_text())
    assert list(data) == ["physical_to_logical_map"]  # SGLang passes the keys to init_by_mapping(**data)
    rows = data["physical_to_logical_map"]
    assert rows[:first_moe_layer] == [[0, 1, 2, 3, 0, 1]] * first_moe_layer
    rebuilt = Plan.from_dict({"physical_to_logical_map": rows[first_moe_layer:], "num_nodes": 2,
                              "gpus_per_node": 1, "num_logical_experts": 4})
    assert rebuilt == plan


def test_vllm_export(tmp_path: Path) -> None:
    plan = small_plan()
    export_plan(plan, "vllm", tmp_path / "vllm.json")
    data = json.loads((tmp_path / "vllm.json").read_text())
    assert data == to_vllm(plan)
    assert data["physical_to_logical_map"] == plan.physical_to_logical.tolist()
    assert data["logical_to_physical_map"] == [[[0, 4], [1, 5], [2, -1], [3, -1]],
                                               [[3, -1], [2, -1], [1, 5], [0, 4]]]
    assert data["logical_replica_count"] == [[2, 2, 1, 1], [1, 1, 2, 2]]
    assert (data["ep_size"], data["num_redundant_experts"]) == (2, 2)


@pytest.mark.vllm
def test_vllm_export_matches_vllm_maps() -> None:
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    from vllm.distributed.eplb.eplb_state import compute_logical_maps

    plan = small_plan()
    logical_to_physical, replica_count = compute_logical_maps(torch.tensor(plan.physical_to_logical), 4)
    data = to_vllm(plan)
    assert data["logical_to_physical_map"] == logical_to_physical.tolist()
    assert data["logical_replica_count"] == replica_count.tolist()


@pytest.mark.parametrize("first_moe_layer", [0, 3], ids=["all-moe", "deepseek-v3-offset"])
def test_trtllm_export(tmp_path: Path, first_moe_layer: int) -> None:
    yaml = pytest.importorskip("yaml")
    plan = small_plan()
    export_plan(plan, "trtllm", tmp_path / "eplb.yaml", first_moe_layer=first_moe_layer)
    data = yaml.safe_load((tmp_path / "eplb.yaml").read_text())
    assert data == to_trtllm(plan, first_moe_layer)
    assert set(data) == {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    assert data["num_slots"] == 6 and data["layer_updates_per_iter"] == 0
    assignments = data["initial_global_assignments"]
    assert list(assignments) == [first_moe_layer, first_moe_layer + 1]
    assert Plan(np.array(list(assignments.values())), plan.topology, 4) == plan


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(PlacementError, match="unknown export format 'deepspeed'; choose one of sglang"):
        export_plan(small_plan(), "deepspeed", tmp_path / "x.json")
    with pytest.raises(PlacementError, match="first_moe_layer must be a non-negative integer, got -1"):
        to_sglang(small_plan(), -1)
    with pytest.raises(PlacementError, match="missing.*no such file or directory"):
        export_plan(small_plan(), "vllm", tmp_path / "missing" / "x.json")


# ------------------------------------------------------------------------------- file errors

@pytest.mark.parametrize(
    "reader, name",
    [(load_trace, "trace.npz"), (load_trace, "trace.jsonl"), (load_stats, "load.npy"), (load_stats, "dump.pt"),
     (load_plan, "plan.json")],
    ids=["trace", "jsonl", "matrix", "torch", "plan"],
)
def test_missing_file(tmp_path: Path, reader: Callable[[Path], Any], name: str) -> None:
    with pytest.raises(PlacementError, match=f"{name}: no such file"):
        reader(tmp_path / name)


@pytest.mark.parametrize(
    "reader, name, content, message",
    [
        (load_trace, "trace.npz", b"PK\x03\x04 truncated", "cannot read .*trace.npz"),
        (load_trace, "trace.npz", b"garbage", "trace.npz: unreadable content"),
        (load_trace, "trace.jsonl", b"\xff\xfe\x00", "trace.jsonl: unreadable content"),
        (load_trace, "trace.jsonl", b'{"layer": 0}\n{oops', "trace.jsonl: line 2 is not JSON"),
        (load_stats, "load.npy", b"\x93NUMPY broken", "load.npy: unreadable content"),
        (load_stats, "load.json", b'{"rank": 0}', "load.json: no 'logical_count'"),
        (load_stats, "load.json", b'[["a"]]', "load.json: a load matrix must be a numeric"),
        (load_stats, "load.json", b"[1, 2]", "load.json: a load matrix must be \\[..., layers, experts\\]"),
        (load_stats, "dump.pt", b"not a torch file", "dump.pt: not a loadable PyTorch file"),
        (load_trace, "trace.csv", b"1,2", "trace.csv: unknown trace suffix '.csv'"),
        (load_stats, "stats.csv", b"1,2", "stats.csv: unknown suffix '.csv'"),
    ],
    ids=["truncated-zip", "npz-garbage", "bad-utf8", "bad-json-line", "bad-npy", "stat-without-count",
         "text-matrix", "1-d-matrix", "bad-torch", "trace-suffix", "stats-suffix"],
)
def test_unreadable_files(tmp_path: Path, reader: Callable[[Path], Any], name: str, content: bytes,
                          message: str) -> None:
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PlacementError, match=message):
        reader(tmp_path / name)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"seq_lens": np.array([1])}, "no 'topk_ids' array \\(found: seq_lens\\)"),
        ({"topk_ids": np.zeros((2, 3))}, "topk_ids must be a non-empty \\[tokens, layers, k\\]"),
        ({"topk_ids": np.array([[[0, 5]]]), "num_experts": np.int64(4)}, "topk_ids holds expert id 5, outside \\[0, 4\\)"),
        ({"topk_ids": np.array([[[0, 1]]]), "seq_lens": np.array([2])}, "seq_lens must be non-negative and sum"),
        ({"topk_ids": np.array([[[0, 1]]]), "topk_weights": np.ones((1, 1, 3))}, "topk_weights has shape"),
        ({"topk_ids": np.array([[[0, 1]]]), "num_experts": np.array([4, 4])}, "num_experts must be one integer"),
    ],
    ids=["missing-ids", "2-d-ids", "id-out-of-range", "seq-lens", "weights-shape", "num-experts"],
)
def test_bad_npz_content(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "trace.npz", **arrays)
    with pytest.raises(PlacementError, match=f"trace.npz: {message}"):
        load_trace(tmp_path / "trace.npz")


def test_npz_holding_one_array(tmp_path: Path) -> None:
    with (tmp_path / "trace.npz").open("wb") as file:
        np.save(file, np.zeros((2, 2, 2)))
    with pytest.raises(PlacementError, match="single array, not an .npz archive"):
        load_trace(tmp_path / "trace.npz")


def test_formats_work_without_torch(tmp_path: Path) -> None:
    """placement/ imports torch only to read .pt files: with torch (and Ray, gRPC) blocked, the rest
    works and a .pt file gets a clear error."""
    save_trace(small_trace(), tmp_path / "trace.npz")
    (tmp_path / "dump.pt").write_bytes(b"")
    script = f"""
import sys
sys.modules.update(torch=None, ray=None, grpc=None)
from switchyard.placement.errors import PlacementError
from switchyard.placement.formats import load_stats, load_trace
assert load_trace({str(tmp_path / "trace.npz")!r}).num_tokens == 3
try:
    load_stats({str(tmp_path / "dump.pt")!r})
except PlacementError as error:
    assert "needs PyTorch" in str(error), error
else:
    raise AssertionError("no error")
"""
    subprocess.run([sys.executable, "-c", script], check=True)

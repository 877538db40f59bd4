"""The `switchyard` CLI: end to end through the installed console script, and every error path.

Error paths run in-process with click's `CliRunner`; the contract for each is exit code 2, a last line
`Error: ...` naming the problem, and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

from switchyard.cluster.cli.main import main
from switchyard.cluster.settings import DEFAULTS
from switchyard.placement.cost import PRESETS
from switchyard.placement.feedback import BalanceFeedback
from switchyard.placement.formats import load_plan, load_trace, save_trace
from switchyard.placement.policies import planning_policy, policy_names
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.windows import (ADAPTIVE_MEMORY, PLANNING_DECAY, PLANNING_HISTORY, resampled_stats,
                                          serve_windows, summarize_served)

SCRIPT = Path(sys.executable).parent / "switchyard"
NUM_LAYERS, NUM_EXPERTS, TOP_K, NUM_TOKENS = 4, 16, 2, 512


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic trace, a plan made from it, and broken inputs, in one folder."""
    folder = tmp_path_factory.mktemp("cli")
    trace = folder / "trace.npz"
    save_trace(synthetic_trace(NUM_LAYERS, NUM_EXPERTS, TOP_K, NUM_TOKENS, seq_len=32, seed=1), trace)
    plan = folder / "plan.json"
    _ok(_invoke("placement", "plan", "--trace", trace, "--nodes", 2, "--gpus-per-node", 2,
                "--slots-per-gpu", 5, "--policy", "eplb", "--out", plan))

    def write_plan(name: str, table: list[list[int]], nodes: int = 1, gpus_per_node: int = 2,
                   **extra: object) -> Path:
        path = folder / name
        path.write_text(json.dumps({"physical_to_logical_map": table, "num_nodes": nodes,
                                    "gpus_per_node": gpus_per_node, **extra}))
        return path

    full_row = list(range(NUM_EXPERTS))
    broken = {
        "garbage_npz": folder / "garbage.npz",
        "text_trace": folder / "trace.txt",
        "flat_trace": folder / "flat.npz",
        "out_of_range_trace": folder / "out_of_range.npz",
        "not_json_plan": folder / "not_json.json",
        "indivisible_plan": write_plan("indivisible.json", [full_row + [0]] * NUM_LAYERS),
        "out_of_range_plan": write_plan("out_of_range.json", [full_row[:-1] + [99]] * NUM_LAYERS,
                                        num_logical_experts=NUM_EXPERTS),
        "short_plan": write_plan("short.json", [full_row] * (NUM_LAYERS - 1)),
        "missing_expert_plan": write_plan("missing.json", [full_row[:-1] + [0]] * NUM_LAYERS,
                                          num_logical_experts=NUM_EXPERTS),
    }
    broken["garbage_npz"].write_text("not a zip archive\n")
    broken["text_trace"].write_text("0 1\n")
    np.savez(broken["flat_trace"], topk_ids=np.zeros((8, 3), dtype=np.int64), seq_lens=np.array([8]))
    np.savez(broken["out_of_range_trace"], topk_ids=np.full((8, 2, 2), 40, dtype=np.int64),
             seq_lens=np.array([8]), num_experts=np.int64(NUM_EXPERTS))
    broken["not_json_plan"].write_text("{ physical_to_logical_map")
    return {"trace": trace, "plan": plan, "folder": folder, **broken}


def _invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def _topology(nodes: int = 2, gpus_per_node: int = 2, slots: int | None = None) -> list[object]:
    slots_option = [] if slots is None else ["--slots-per-gpu", slots]
    return ["--nodes", nodes, "--gpus-per-node", gpus_per_node, *slots_option]


# Each case: a command line (`{name}` is a path from the `files` fixture) and a fragment that its
# one-line error message must contain.
TOPOLOGY = "--nodes 2 --gpus-per-node 2"
ERROR_CASES = [
    pytest.param("placement compare --trace {folder}/nope.npz " + TOPOLOGY,
                 "does not exist", id="missing-trace"),
    pytest.param("placement compare --trace {folder} " + TOPOLOGY, "is a directory", id="trace-is-a-folder"),
    pytest.param("placement compare --trace {garbage_npz} " + TOPOLOGY, "garbage.npz", id="garbage-npz"),
    pytest.param("trace info --trace {text_trace}", ".txt", id="unknown-suffix"),
    pytest.param("trace info --trace {flat_trace}", "(8, 3)", id="wrong-shape"),
    pytest.param("trace info --trace {out_of_range_trace}", "40", id="trace-ids-out-of-range"),
    pytest.param("placement plan --trace {trace} --tokens abc --policy eplb --out {folder}/x.json "
                 + TOPOLOGY, "'abc'", id="tokens-not-a-range"),
    pytest.param("placement evaluate --trace {trace} --plan {plan} --tokens 100",
                 "'100'", id="tokens-no-colon"),
    pytest.param("placement compare --trace {trace} --train 5:2 " + TOPOLOGY, "'5:2'", id="tokens-empty"),
    pytest.param("placement compare --trace {trace} --test -4: " + TOPOLOGY, "'-4:'", id="tokens-negative"),
    pytest.param("placement compare --trace {trace} --test 1:2:3 " + TOPOLOGY,
                 "'1:2:3'", id="tokens-three-parts"),
    pytest.param("placement evaluate --trace {trace} --plan {plan} --tokens 100000:", "selects no tokens",
                 id="tokens-beyond-trace"),
    pytest.param("placement compare --trace {trace} --slots-per-gpu 3 " + TOPOLOGY, "cannot hold",
                 id="slots-cannot-hold-experts"),
    pytest.param("placement compare --trace {trace} --slots-per-gpu 17 " + TOPOLOGY, "exceeds",
                 id="more-slots-per-gpu-than-experts"),
    pytest.param("placement plan --trace {trace} --nodes 1 --gpus-per-node 3 --policy linear "
                 "--out {folder}/x.json", "do not divide", id="gpus-do-not-divide-experts"),
    pytest.param("placement export --plan {indivisible_plan} --format sglang --out {folder}/x.json",
                 "do not divide", id="gpus-do-not-divide-plan-slots"),
    pytest.param("placement evaluate --trace {trace} --plan {out_of_range_plan}",
                 "99", id="plan-id-out-of-range"),
    pytest.param("placement evaluate --trace {trace} --plan {missing_expert_plan}", "no replica",
                 id="plan-expert-without-replica"),
    pytest.param("placement evaluate --trace {trace} --plan {short_plan}", "layers", id="plan-layers-differ"),
    pytest.param("placement export --plan {not_json_plan} --format vllm --out {folder}/x.json",
                 "not_json.json", id="plan-not-json"),
    pytest.param("placement plan --trace {trace} --policy best --out {folder}/x.json " + TOPOLOGY, "'best'",
                 id="unknown-policy"),
    pytest.param("placement export --plan {plan} --format onnx --out {folder}/x",
                 "'onnx'", id="unknown-format"),
    pytest.param("placement compare --trace {trace} --nodes 0 --gpus-per-node 2", "--nodes", id="zero-nodes"),
    pytest.param("placement compare --trace {trace} --balance-tokens 0 " + TOPOLOGY, "--balance-tokens",
                 id="zero-balance-tokens"),
    pytest.param("placement windows --trace {trace} --window-tokens 300 " + TOPOLOGY, "make 1 window(s) of 300",
                 id="windows-fewer-than-two"),
    pytest.param("placement windows --trace {trace} --decay 1.5 " + TOPOLOGY, "--decay", id="windows-bad-decay"),
    pytest.param("placement windows --trace {trace} --history 0 " + TOPOLOGY, "--history",
                 id="windows-no-history"),
    pytest.param("placement windows --trace {trace} --resampled-windows 4 " + TOPOLOGY,
                 "--resampled-windows draws windows from the runs of --balance-tokens tokens: give --balance-tokens too",
                 id="windows-resampled-without-runs"),
    pytest.param("placement compare --trace {trace} --resampled-windows 4 " + TOPOLOGY, "give --balance-tokens too",
                 id="compare-resampled-without-runs"),
    pytest.param("placement plan --trace {trace} --policy eplb --out {folder}/p.json --resampled-windows 4 " + TOPOLOGY,
                 "give --balance-tokens too", id="plan-resampled-without-runs"),
    pytest.param("trace synth --out {folder}/s.npz --layers 2 --experts 4 --top-k 5 --tokens 16", "--top-k",
                 id="synth-top-k-above-experts"),
    pytest.param("placement export --plan {plan} --format trtllm --out {folder}/no/x.yaml", "no such file",
                 id="output-folder-missing"),
]


@pytest.mark.parametrize("command, fragment", ERROR_CASES)
def test_bad_input_is_one_error_line_and_exit_code_2(files, command: str, fragment: str) -> None:
    result = _invoke(*(part.format(**files) for part in command.split()))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: ")
    assert fragment in last_line


def test_verbose_adds_the_traceback(files) -> None:
    result = _invoke("placement", "compare", "--trace", files["garbage_npz"], *_topology(), "--verbose")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


@pytest.mark.parametrize("path", [(), *_commands(main)], ids=lambda p: " ".join(p) or "switchyard")
def test_help_everywhere(path: tuple[str, ...]) -> None:
    result = _ok(_invoke(*path, "--help"))
    assert result.output.startswith("Usage: switchyard")


def test_policy_choices_come_from_the_registry() -> None:
    result = _ok(_invoke("placement", "plan", "--help"))
    for name in policy_names():
        assert name in result.output


def test_evaluate_json_is_the_last_line(files) -> None:
    result = _ok(_invoke("placement", "evaluate", "--trace", files["trace"], "--plan", files["plan"],
                         "--tokens", "256:", "--json"))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["num_tokens"] == NUM_TOKENS - 256
    assert 0 < summary["balancedness"] <= 1
    assert 1 <= summary["gpus_per_token"] <= TOP_K
    assert 0 <= summary["remote_nodes_per_token"] <= 1


@pytest.mark.parametrize("export_format", ["sglang", "vllm", "trtllm"])
def test_export_writes_the_engine_file(files, tmp_path: Path, export_format: str) -> None:
    out = tmp_path / f"plan.{export_format}"
    _ok(_invoke("placement", "export", "--plan", files["plan"], "--format", export_format, "--out", out))
    assert out.stat().st_size > 0


def test_compare_windows_and_json(files) -> None:
    result = _ok(_invoke("placement", "compare", "--trace", files["trace"], *_topology(2, 2, 5),
                         "--train", ":200", "--test", "200:400", "--policy", "eplb", "--policy", "linear",
                         "--balance-tokens", 64, "--json"))
    assert "plan on tokens 0:200, evaluate on tokens 200:400" in result.stdout
    by_policy = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(by_policy) == ["eplb", "linear"]
    assert all(summary["num_tokens"] == 200 for summary in by_policy.values())


def test_windows_serves_each_window_with_plans_made_on_the_past(files) -> None:
    """`placement windows` is `serve_windows` with the live rebalancer's history, decay, memory choice and
    balance feedback, summarised against EPLB window by window; the JSON holds the summary, every
    window's evaluations and the level the feedback priced affinity at."""
    result = _ok(_invoke("placement", "windows", "--trace", files["trace"], *_topology(2, 2, 5),
                         "--window-tokens", 128, "--policy", "eplb", "--policy", "affinity", "--per-window",
                         "--json"))
    assert "3 windows of 128 tokens served" in result.stdout
    assert "serving window 3 of 3 ..." in result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert (answer["history"], answer["decay"], answer["adaptive_memory"], answer["balance_feedback"]) == \
        (PLANNING_HISTORY, PLANNING_DECAY, ADAPTIVE_MEMORY, True)
    assert [window["window"] for window in answer["windows"]] == [1, 2, 3]
    cluster = PRESETS[DEFAULTS.cluster_preset]
    served = serve_windows(load_trace(files["trace"]), Topology(2, 2, 5),
                           {name: planning_policy(name, cluster) for name in ("eplb", "affinity")},
                           128, PLANNING_DECAY, PLANNING_HISTORY, cluster, adaptive_memory=ADAPTIVE_MEMORY,
                           feedback=BalanceFeedback())
    assert [window["feedback_levels"] for window in answer["windows"]] == [item.levels for item in served]
    levels = " ".join(str(item.levels["affinity"]) for item in served)
    assert f"affinity at the overload price its served balance set, level {levels} in turn" in result.stdout
    assert [(window["memory"]["history"], window["memory"]["decay"]) for window in answer["windows"]] == \
        [item.memory for item in served]
    expected = {summary.policy: summary.to_dict() for summary in summarize_served(served, "eplb")}
    assert answer["summary"] == expected  # JSON keeps floats exactly
    assert answer["windows"][2]["affinity"]["gpu_load"] == served[2].evaluations["affinity"].gpu_load.tolist()
    summary_table, window_table = result.stdout.split("Every served window:")
    rows = {line.split("|")[1].strip(): line for line in summary_table.splitlines() if line.startswith("| ")}
    assert {"eplb", "affinity"} <= set(rows) and "gap to eplb" in rows["policy"]
    # --per-window: a row per window and policy, its gap the window's own (a summary of one window).
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in window_table.splitlines()
             if line.startswith("| ") and not line.startswith(("| window", "| ---"))]
    assert [(row[0], row[1]) for row in cells] == [(str(w), p) for w in (1, 2, 3) for p in ("eplb", "affinity")]
    window_2 = served[1].evaluations
    assert cells[3][3] == f"{window_2['affinity'].balancedness - window_2['eplb'].balancedness:+.3f}"


def test_windows_plans_on_resampled_windows(files) -> None:
    """`--resampled-windows` is `serve_windows(resampled_windows=...)`: affinity plans on draws of the
    planning windows' runs of --balance-tokens, and the output says so; `--starts` and `--perturbations`
    set affinity's search (docs/placement.md, "Iterated local search": the combination measured there)."""
    result = _ok(_invoke("placement", "windows", "--trace", files["trace"], *_topology(2, 2, 5),
                         "--window-tokens", 128, "--policy", "affinity", "--balance-tokens", 32,
                         "--resampled-windows", 6, "--starts", 1, "--perturbations", 2, "--json"))
    assert "as 6 windows drawn from their runs of 32 tokens (4 a window)" in result.stdout
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert (answer["balance_tokens"], answer["resampled_windows"]) == (32, 6)
    cluster = PRESETS[DEFAULTS.cluster_preset]
    searched = planning_policy("affinity", cluster, starts=1, perturbations=2)
    served = serve_windows(load_trace(files["trace"]), Topology(2, 2, 5), {"affinity": searched},
                           128, PLANNING_DECAY, PLANNING_HISTORY, cluster, balance_tokens=32,
                           adaptive_memory=ADAPTIVE_MEMORY, resampled_windows=6, feedback=BalanceFeedback())
    assert answer["summary"]["affinity"] == summarize_served(served)[0].to_dict()


def test_windows_without_balance_feedback_plans_at_the_models_price(files) -> None:
    """--no-balance-feedback: affinity plans every window at the model's price of overload, as
    `serve_windows` without feedback; no level is reported."""
    result = _ok(_invoke("placement", "windows", "--trace", files["trace"], *_topology(2, 2, 5),
                         "--window-tokens", 128, "--policy", "affinity", "--no-balance-feedback", "--json"))
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["balance_feedback"] is False and all(not window["feedback_levels"] for window in answer["windows"])
    assert "served balance set" not in result.stdout
    cluster = PRESETS[DEFAULTS.cluster_preset]
    served = serve_windows(load_trace(files["trace"]), Topology(2, 2, 5), {"affinity": planning_policy("affinity", cluster)},
                           128, PLANNING_DECAY, PLANNING_HISTORY, cluster, adaptive_memory=ADAPTIVE_MEMORY)
    assert answer["summary"]["affinity"] == summarize_served(served)[0].to_dict()


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
def test_windows_names_the_memory_of_each_window(files, adaptive: bool) -> None:
    """--adaptive-memory names the memory each window was planned on; --fixed-memory plans every one on
    --history and --decay (on the windows there are, at first)."""
    result = _ok(_invoke("placement", "windows", "--trace", files["trace"], *_topology(2, 2, 5),
                         "--window-tokens", 64, "--policy", "eplb",
                         "--adaptive-memory" if adaptive else "--fixed-memory", "--json"))
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    served = serve_windows(load_trace(files["trace"]), Topology(2, 2, 5), {"eplb": planning_policy("eplb", None)},
                           64, PLANNING_DECAY, PLANNING_HISTORY, adaptive_memory=adaptive)
    memories = [(window["memory"]["history"], window["memory"]["decay"]) for window in answer["windows"]]
    assert memories == [item.memory for item in served]
    chosen = "whichever forecast best (in turn: " + ", ".join(f"{h} by {d:g}" for h, d in memories)
    assert (chosen in result.stdout) == adaptive
    if not adaptive:  # the last --history windows, fewer while fewer have passed
        assert memories == [(min(PLANNING_HISTORY, window["window"]), PLANNING_DECAY) for window in answer["windows"]]


def test_plan_for_a_cluster(tmp_path: Path) -> None:
    """`placement plan --cluster` prices traffic for policies that weigh time (affinity): a slower
    network gives another plan; EPLB ignores it."""
    trace = tmp_path / "clustered.npz"
    save_trace(synthetic_trace(8, 32, 4, 4096, skew=1.2, seed=7), trace)
    plans = {}
    for cluster in ("h100", "h100-100gbit"):
        for policy in ("affinity", "eplb"):
            out = tmp_path / f"{policy}-{cluster}.json"
            _ok(_invoke("placement", "plan", "--trace", trace, *_topology(2, 2, 9), "--policy", policy,
                        "--cluster", cluster, "--out", out))
            plans[policy, cluster] = json.loads(out.read_text())["physical_to_logical_map"]
    assert plans["affinity", "h100"] != plans["affinity", "h100-100gbit"]
    assert plans["eplb", "h100"] == plans["eplb", "h100-100gbit"]
    # --balance-tokens holds affinity's cap on every run of 256 tokens: another plan, the same for EPLB.
    for policy in ("affinity", "eplb"):
        out = tmp_path / f"{policy}-batches.json"
        _ok(_invoke("placement", "plan", "--trace", trace, *_topology(2, 2, 9), "--policy", policy,
                    "--balance-tokens", 256, "--out", out))
        plans[policy, "batches"] = json.loads(out.read_text())["physical_to_logical_map"]
    assert plans["affinity", "batches"] != plans["affinity", "h100"]
    assert plans["eplb", "batches"] == plans["eplb", "h100"]
    # --resampled-windows 8 plans on 8 draws of those runs, as many runs a draw as the trace holds.
    out = tmp_path / "resampled.json"
    _ok(_invoke("placement", "plan", "--trace", trace, *_topology(2, 2, 9), "--policy", "affinity",
                "--balance-tokens", 256, "--resampled-windows", 8, "--out", out))
    runs = RoutingStats.from_trace(load_trace(trace), window_tokens=256)
    expected = planning_policy("affinity", PRESETS["h100"]).place(resampled_stats(runs, len(runs.windows), 8),
                                                                  Topology(2, 2, 9))
    assert load_plan(out) == expected


def test_plan_in_forked_processes_is_the_same(files, tmp_path: Path) -> None:
    """`placement plan --processes` splits affinity's layers over processes without changing the plan;
    policies that cannot split them take the option and ignore it."""
    plans = []
    for policy, processes in (("affinity", 1), ("affinity", 3), ("eplb", 2)):
        out = tmp_path / f"{policy}-{processes}.json"
        _ok(_invoke("placement", "plan", "--trace", files["trace"], *_topology(2, 2, 5), "--policy", policy,
                    "--processes", processes, "--out", out))
        plans.append(json.loads(out.read_text())["physical_to_logical_map"])
    assert plans[0] == plans[1]


@pytest.mark.parametrize("option, value, least", [("starts", 3, 1), ("perturbations", 2, 0)])
def test_plan_with_search_options(files, tmp_path: Path, option: str, value: int, least: int) -> None:
    """`placement plan --starts` and `--perturbations` are affinity's options (the policy's default without
    them); other policies ignore them, and a count below the least is refused with exit code 2."""
    stats = RoutingStats.from_trace(load_trace(files["trace"]))
    topology = Topology(2, 2, 5)
    flag = f"--{option}"
    for given, expected in ((None, planning_policy("affinity", PRESETS["h100"])),
                            (value, planning_policy("affinity", PRESETS["h100"], **{option: value}))):
        out = tmp_path / f"affinity-{given}.json"
        _ok(_invoke("placement", "plan", "--trace", files["trace"], *_topology(2, 2, 5), "--policy", "affinity",
                    *([flag, given] if given is not None else []), "--out", out))
        assert load_plan(out) == expected.place(stats, topology)
    assert load_plan(tmp_path / "affinity-None.json") != load_plan(tmp_path / f"affinity-{value}.json")
    _ok(_invoke("placement", "plan", "--trace", files["trace"], *_topology(2, 2, 5), "--policy", "eplb",
                flag, value, "--out", tmp_path / "eplb.json"))
    refused = _invoke("placement", "plan", "--trace", files["trace"], *_topology(2, 2, 5), "--policy", "affinity",
                      flag, least - 1, "--out", tmp_path / "none.json")
    assert refused.exit_code == 2 and flag in refused.stderr


def test_plan_from_a_load_matrix(files, tmp_path: Path) -> None:
    """`--trace` also takes a vLLM-style [L, E] load matrix (load-only policies need no more)."""
    load = tmp_path / "load.npy"
    np.save(load, np.arange(1.0, NUM_LAYERS * NUM_EXPERTS + 1).reshape(NUM_LAYERS, NUM_EXPERTS))
    out = tmp_path / "plan.json"
    _ok(_invoke("placement", "plan", "--trace", load, *_topology(1, 4, 5), "--policy", "eplb", "--out", out))
    assert len(json.loads(out.read_text())["physical_to_logical_map"][0]) == 20
    refused = _invoke("placement", "plan", "--trace", load, *_topology(1, 4, 5), "--policy", "affinity",
                      "--balance-tokens", 64, "--out", out)
    assert refused.exit_code == 2 and "holds load counts, not tokens" in refused.stderr.splitlines()[-1]


def test_compare_on_esft(esft_path) -> None:
    result = _ok(_invoke("placement", "compare", "--trace", esft_path("intent"), *_topology(2, 4, 9),
                         "--train", ":2000", "--test", "2000:3000", "--policy", "eplb", "--json"))
    eplb = json.loads(result.stdout.strip().splitlines()[-1])["eplb"]
    assert eplb["balancedness"] > 0.85  # EPLB balances ESFT load well (DESIGN.md: 0.94-0.98 on 8 GPUs)


# ------------------------------------------------------------------ through the installed console script

def _script(*args: object) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: is the project installed in this environment?"
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_script_synth_info_compare(tmp_path: Path) -> None:
    trace = tmp_path / "trace.npz"
    synth = _script("trace", "synth", "--out", trace, "--layers", 3, "--experts", 16, "--top-k", 2,
                    "--tokens", 400, "--skew", 1.2, "--seed", 3)
    assert synth.returncode == 0, synth.stderr
    info = _script("trace", "info", "--trace", trace)
    assert info.returncode == 0, info.stderr
    assert "400 tokens x 3 layers, 16 experts, top-2" in info.stdout
    compare = _script("placement", "compare", "--trace", trace, "--nodes", 2, "--gpus-per-node", 2,
                      "--slots-per-gpu", 5)
    assert compare.returncode == 0, compare.stderr
    rows = {line.split("|")[1].strip() for line in compare.stdout.splitlines() if line.startswith("| ")}
    assert set(policy_names()) <= rows


@pytest.mark.parametrize("argv, fragment", [
    (["placement", "evaluate", "--trace", "missing.npz", "--plan", "missing.json"], "does not exist"),
    (["placement", "compare", "--trace", __file__, "--nodes", 1, "--gpus-per-node", 1], "test_cli.py"),
], ids=["missing-file", "python-file-as-trace"])
def test_script_errors_exit_2_without_traceback(argv, fragment) -> None:
    result = _script(*argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert fragment in result.stderr

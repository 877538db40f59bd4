"""Placement benchmark: every registered policy on the ESFT traces, and planning time at
DeepSeek-V3 scale beside vLLM's `DefaultEplbPolicy`, in one run.

    python -m bench.placement --out docs/benchmarks/placement.md      (or: make bench)

Prints markdown tables as it goes and writes them, with the command that produced them, to `--out`.
Part 1 plans on the first half of each ESFT trace and evaluates on the second half, for 1 x 8, 2 x 4
and 4 x 2 GPUs with 8 and 9 slots per GPU. Part 2 times each policy on DeepSeek-V3-sized statistics
(58 layers x 256 experts, top-8) from a synthetic trace. Takes a few minutes on two cores, most of
it vLLM's import and the synthetic trace.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.report import command_line, provenance, publish
from switchyard.cluster.cli.formatting import comparison_table, markdown_table
from switchyard.placement.compare import compare_policies
from switchyard.placement.cost import PRESETS
from switchyard.placement.formats import load_trace
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy, policy_names
from switchyard.placement.proposal import expected_balancedness
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology

REPO = Path(__file__).resolve().parents[1]
ESFT_TASKS = ("intent", "law")
ESFT_GPUS = ((1, 8), (2, 4), (4, 2))  # (nodes, GPUs per node): 8 GPUs in every case
ESFT_SLOTS_PER_GPU = (8, 9)  # 64 slots (one per expert) and 72 (8 redundant replicas)
CLUSTER = "h100"

# DeepSeek-V3: 58 MoE layers x 256 routed experts, top-8, 8 expert groups. Its paper deploys prefill
# with 32 redundant experts, 288 slots on 32 GPUs (9 per GPU), and decode on 256 GPUs. 288 slots do
# not divide over 32 x 8 = 256 GPUs, so the 288-slot case uses the prefill deployment's 32 GPUs.
# Issue 6's case is 256 GPUs with 9 slots each (2304 slots), to be planned in at most 5 s.
V3_LAYERS, V3_EXPERTS, V3_TOP_K, V3_GROUPS = 58, 256, 8, 8
V3_TOKENS = 4096
V3_TOPOLOGIES = (Topology(4, 8, 9), Topology(32, 8, 2), Topology(32, 8, 9))
TIMING_REPEATS = 3
TIMING_BUDGET_S = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown file to write, e.g. docs/benchmarks/placement.md.")
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces",
                        help="Folder with esft/intent.npz and esft/law.npz (default: ../shared/traces).")
    args = parser.parse_args()

    lines = ["# Placement benchmark", "", provenance(command_line("bench.placement"), ("numpy",)), ""]
    emit = _emitter(lines)
    started = time.perf_counter()
    esft_section(args.traces, emit)
    deepseek_v3_section(emit)
    emit(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    publish("\n".join(lines), args.out, echo=False)


def _emitter(lines: list[str]) -> Callable[[str], None]:
    """Print a block now and keep it for the file."""

    def emit(block: str) -> None:
        print(block + "\n", flush=True)
        lines.extend([block, ""])

    return emit


def esft_section(traces_dir: Path, emit: Callable[[str], None]) -> None:
    emit("## ESFT traces: plan on the first half, evaluate on the second")
    emit(
        "DeepSeek-V2-Lite routing (26 MoE layers, 64 experts, top-6) from `../shared/traces/esft/`. "
        "balancedness: mean / max GPU load, summed over layers (vLLM's figure; 1 is perfect). "
        "GPUs/token and remote nodes/token: distinct GPUs, and nodes other than the token's home node, "
        "that a token's picks use per layer (each is one hidden state out and one back). "
        f"MoE time: the test tokens through every MoE layer, simulated on the `{CLUSTER}` preset "
        "(docs/placement-metrics.md). `vs eplb`: value over EPLB's. plan s: planning time."
    )
    for task in ESFT_TASKS:
        path = traces_dir / "esft" / f"{task}.npz"
        if not path.is_file():
            emit(f"Skipped `{task}`: {path} not found (the traces live beside the project).")
            continue
        trace = load_trace(path)
        emit(f"### {task}: {trace.num_tokens} tokens, {len(trace.seq_lens)} sequences")
        for nodes, gpus_per_node in ESFT_GPUS:
            for slots_per_gpu in ESFT_SLOTS_PER_GPU:
                topology = Topology.for_experts(trace.num_experts, nodes, gpus_per_node, slots_per_gpu)
                results = compare_policies(trace, topology, policy_names(), cluster=PRESETS[CLUSTER])
                emit(f"#### {task}, {topology.describe()}\n\n{comparison_table(results)}")


def deepseek_v3_section(emit: Callable[[str], None]) -> None:
    emit("## Planning time at DeepSeek-V3 scale")
    started = time.perf_counter()
    trace = synthetic_trace(V3_LAYERS, V3_EXPERTS, V3_TOP_K, V3_TOKENS, seed=0)
    stats = RoutingStats.from_trace(trace)
    emit(
        f"Statistics of a synthetic trace ({V3_TOKENS} tokens, {V3_LAYERS} layers x {V3_EXPERTS} experts, "
        f"top-{V3_TOP_K}, Zipf skew 1, seed 0; {time.perf_counter() - started:.1f} s to generate and count). "
        "DeepSeek-V3 serves prefill with 288 slots (256 experts + 32 redundant) on 32 GPUs, 9 per GPU, "
        "and decode on 256 GPUs; 288 slots do not divide over 32 nodes x 8 GPUs, so the 288-slot case "
        "is 4 nodes x 8 GPUs x 9 slots and the 512-slot case 32 nodes x 8 GPUs x 2 slots; the 2304-slot "
        "case (32 nodes x 8 GPUs x 9 slots) is the affinity policy's target, to be planned in at most 5 s. "
        f"Times are the median of {TIMING_REPEATS} runs (fewer once they add up to {TIMING_BUDGET_S:.0f} s). "
        "balancedness here is the expected one from the load (each expert's load split evenly over "
        "its replicas), which needs no routing. "
        f"`num_groups={V3_GROUPS}` is DeepSeek-V3's expert-group count: EPLB is hierarchical where the "
        "groups divide over the nodes (4 nodes), global otherwise."
    )
    vllm_policy = _vllm_policy()
    if vllm_policy is None:
        emit("vLLM's `DefaultEplbPolicy` is not importable here (install the `dev` extra): "
             "its rows are left out.")
    rows = []
    for topology in V3_TOPOLOGIES:
        planners = {name: _switchyard_planner(name, {}, stats, topology) for name in policy_names()}
        planners[f"eplb, num_groups={V3_GROUPS}"] = _switchyard_planner(
            "eplb", {"num_groups": V3_GROUPS}, stats, topology)
        if vllm_policy is not None:
            for groups in (1, V3_GROUPS):
                planners[f"vLLM DefaultEplbPolicy, num_groups={groups}"] = _vllm_planner(
                    vllm_policy, groups, stats.load, topology)
        timed = {name: _timed(planner) for name, planner in planners.items()}  # name -> (s, [L, P])
        for name, (seconds, physical_to_logical) in timed.items():
            rows.append([f"{topology.num_slots} ({topology.describe()})", name, f"{seconds:.3f}",
                         f"{seconds / timed['eplb'][0]:.2f}x",
                         f"{expected_balancedness(Plan(np.asarray(physical_to_logical), topology, stats.load.shape[1]), stats.load):.3f}"])
    emit(markdown_table(["slots", "planner", "seconds", "vs eplb", "balancedness"], rows, numeric_from=2))


def _switchyard_planner(name: str, options: dict, stats: RoutingStats, topology: Topology
                        ) -> Callable[[], np.ndarray]:
    policy = get_policy(name, **options)
    return lambda: policy.place(stats, topology).physical_to_logical


def _vllm_policy() -> type | None:
    try:
        from vllm.distributed.eplb.policy.default import DefaultEplbPolicy
    except ImportError:
        return None
    return DefaultEplbPolicy


def _vllm_planner(policy: type, num_groups: int, load: np.ndarray, topology: Topology
                  ) -> Callable[[], np.ndarray]:
    import torch

    weight = torch.from_numpy(np.array(load))  # a writable copy, as torch wants
    return lambda: policy.rebalance_experts(
        weight, topology.num_slots, num_groups, topology.num_nodes, topology.num_gpus).numpy()


def _timed(planner: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Median seconds over up to `TIMING_REPEATS` calls (fewer once they add up to
    `TIMING_BUDGET_S`, so a slow planner does not stretch the run), and the last result."""
    times: list[float] = []
    while len(times) < TIMING_REPEATS and sum(times) < TIMING_BUDGET_S:
        started = time.perf_counter()
        result = planner()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


if __name__ == "__main__":
    main()

"""The balance / locality / time trade-off of the affinity policy on served windows (issue 17), per cell.

    python -m bench.placement_frontier --out docs/benchmarks/placement-frontier.md      (the cells in one process per core, `bench.placement.in_processes`)

Issue 17 asks, on the next window, for balancedness within 0.01 of EPLB's, a simulated MoE time at
most 0.85x EPLB's and 22-25 % fewer GPUs per token, all at once. The affinity policy has two knobs that
trade them: what a pick above the load cap costs (`AffinityPolicy(cluster=...)` prices it at
`ClusterSpec.overload_weight`, the model's compute time of a pick over a GPU per token's NVLink time;
without a cluster the cap comes first), and what the cap is held on (each past window, the default,
each batch of it: `serve_windows(balance_tokens=...)`, or windows drawn from its batches:
`serve_windows(resampled_windows=...)`). This benchmark serves every cell of
`bench.placement` (same windows, decay, history, memory chosen by forecast and rule) with the knobs at
several positions, from
cheaper than the model's price to the cap first at zero imbalance, and prints per position the medians
over windows of the three figures against EPLB, each marked against its target. A cell where no
position meets all three shows where the targets conflict for this policy; the model's own price (x1)
on each window is the policy's default.

Positions: `price xm` plans for the `h100` preset with the overload price m times the model's
(`AffinityPolicy.overload_factor`, what the balance feedback sets; the remote-node price unchanged); `batch xm` is the same with the cap held on every
batch of `RUNTIME_BATCH` tokens of the past windows (what one dispatcher call routes); `resampled xm`
with the cap held on `RESAMPLED_WINDOWS` windows drawn from the past windows' runs of
`RESAMPLED_RUN_TOKENS` tokens, as `bench.placement`'s section "The cap on resampled windows"; `cap a` plans
with the cap first (`max_imbalance=a`, remote nodes at the `h100` price). Serving is always judged on
`h100`, each served window routed as one batch.
GPUs/token here is the windows' median (the issue's GPU target is on the half/half split; the
windows' ratio tracks it within ~0.02 in `bench.placement`). "time at balanced compute" is the
position's time with its compute perfectly balanced and its traffic as routed
(`bench.placement.balanced_compute_time`), over EPLB's: where it is above the time target at every
position, the target needs less traffic than any position routes, whatever the balance.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator

from bench.placement import (BALANCE_GAP, CLUSTER, DECAY, ESFT_GPUS, ESFT_SLOTS_PER_GPU, GPU_CUT, HISTORY, MEMORY_WORDS,
                             REPO, RESAMPLED_RUN_TOKENS, RESAMPLED_WINDOWS, RUNTIME_BATCH, SYNTH_SEEDS, SYNTH_SEQ_LEN,
                             SYNTH_SHAPE, TIME_RATIO, WINDOW_TOKENS, _emitter, esft_traces, in_processes,
                             served_medians)
from bench.report import command_line, provenance, publish
from switchyard.cluster.cli.formatting import markdown_table
from switchyard.placement.cost import PRESETS
from switchyard.placement.policies import get_policy
from switchyard.placement.policies.base import Policy
from switchyard.placement.routing import DEFAULT_RULE
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from switchyard.placement.windows import ADAPTIVE_MEMORY, serve_windows

PRICE_FACTORS = (0.25, 0.5, 1.0, 4.0, 16.0)
BATCH_PRICE_FACTORS = (0.5, 1.0, 4.0)  # also the resampled positions' prices
CAP_FIRST = (0.02, 0.0)


@dataclasses.dataclass(frozen=True)
class Position:
    """One setting of the knobs: the affinity policy, the batch its cap is held on (None: each window),
    and how many windows it draws from those batches to hold it on instead (None: the batches)."""

    policy: Policy
    balance_tokens: int | None = None
    resampled_windows: int | None = None


def positions() -> dict[str, Position]:
    """The knobs' positions: by price on each window, cheapest overload first; by price on each batch;
    by price on windows resampled from the batches; then the cap first."""
    cluster = PRESETS[CLUSTER]

    def priced(factor: float) -> Policy:
        return get_policy("affinity", cluster=cluster, overload_factor=factor)

    windows = {f"price x{factor:g}": Position(priced(factor)) for factor in PRICE_FACTORS}
    batches = {f"batch x{factor:g}": Position(priced(factor), RUNTIME_BATCH) for factor in BATCH_PRICE_FACTORS}
    resampled = {f"resampled x{factor:g}": Position(priced(factor), RESAMPLED_RUN_TOKENS, RESAMPLED_WINDOWS)
                 for factor in BATCH_PRICE_FACTORS}
    capped = {f"cap {cap:g}": Position(get_policy("affinity", max_imbalance=cap,
                                                  node_weight=cluster.remote_node_weight)) for cap in CAP_FIRST}
    return windows | batches | resampled | capped


def frontier(trace: RoutingTrace, topology: Topology, chosen: dict[str, Position]) -> list[dict]:
    """Serve `trace` window by window with EPLB and every position (the positions that hold the cap
    on the same batches, or windows drawn from them, in one pass); per position the medians over windows of its balancedness minus
    EPLB's, its MoE time and GPUs per token over EPLB's, and its time with perfectly balanced compute
    (`balanced_compute_time`) over EPLB's time."""
    medians: dict[str, dict[str, float]] = {}  # position -> `served_medians`
    for held_on in dict.fromkeys((position.balance_tokens, position.resampled_windows) for position in chosen.values()):
        policies = {name: position.policy for name, position in chosen.items()
                    if (position.balance_tokens, position.resampled_windows) == held_on}
        windows = serve_windows(trace, topology, {"eplb": get_policy("eplb"), **policies}, WINDOW_TOKENS, DECAY,
                                HISTORY, PRESETS[CLUSTER], balance_tokens=held_on[0],
                                adaptive_memory=ADAPTIVE_MEMORY, resampled_windows=held_on[1])
        for name in policies:
            medians[name] = served_medians(windows, name, PRESETS[CLUSTER])
    return [{"position": name, **medians[name]} for name in chosen]


def met(row: dict, slots_per_gpu: int) -> tuple[bool, bool, bool]:
    """Whether `row` meets the balance, time and GPU targets of issue 17."""
    return (row["gap"] >= -BALANCE_GAP, row["time"] <= TIME_RATIO, row["gpus"] <= 1 - GPU_CUT[slots_per_gpu])


def frontier_cell(label: str, trace: RoutingTrace, nodes: int, gpus_per_node: int, slots_per_gpu: int
                  ) -> tuple[str, list[str]]:
    """One cell: its table of every position (the block to emit) and its summary row."""
    topology = Topology.for_experts(trace.num_experts, nodes, gpus_per_node, slots_per_gpu)
    cell_started = time.perf_counter()
    rows = frontier(trace, topology, positions())
    table = [[row["position"], *_marked(row, slots_per_gpu), f"{row['balanced']:.3f}x"] for row in rows]
    block = (f"### {label} ({time.perf_counter() - cell_started:.0f} s)\n\n"
             + markdown_table(["position", "balance gap", "time vs EPLB", "GPUs/token vs EPLB",
                               "time at balanced compute"], table))
    all_met = [row["position"] for row in rows if all(met(row, slots_per_gpu))]
    gap_met = sorted((row for row in rows if met(row, slots_per_gpu)[0]), key=lambda row: row["gpus"])
    best_gap = max(rows, key=lambda row: row["gap"])
    least_traffic = min(rows, key=lambda row: row["balanced"])
    return block, [label, ", ".join(all_met) or "none",
                   (f"{gap_met[0]['position']}: time {gap_met[0]['time']:.3f}x, GPUs {gap_met[0]['gpus']:.3f}x"
                    if gap_met else f"none (best: {best_gap['position']}, {best_gap['gap']:+.3f})"),
                   f"{least_traffic['balanced']:.3f}x ({least_traffic['position']})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown file to write, e.g. docs/benchmarks/placement-frontier.md.")
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces",
                        help="Folder with esft/intent.npz and esft/law.npz (default: ../shared/traces).")
    args = parser.parse_args()
    lines = ["# Placement trade-off on served windows", "",
             provenance(command_line("bench.placement_frontier"), ("numpy",)), ""]
    emit = _emitter(lines)
    started = time.perf_counter()
    emit(f"Windows of {WINDOW_TOKENS} tokens; plan on the last {HISTORY} decayed by {DECAY}{MEMORY_WORDS}, serve the next; "
         f"rule `{DEFAULT_RULE.name}`; MoE time on `{CLUSTER}`. Per position the medians over served windows "
         f"of affinity's balancedness minus EPLB's (target >= -{BALANCE_GAP}), its MoE time over EPLB's "
         f"(<= {TIME_RATIO}x) and its GPUs per token over EPLB's (<= {1 - GPU_CUT[8]:.2f}x with 8 slots, "
         f"{1 - GPU_CUT[9]:.2f}x with 9). `price x1` is the policy's default for the cluster.")
    summary = []
    for block, row in in_processes(frontier_cell, list(_cells(args.traces, emit))):
        emit(block)
        summary.append(row)
    emit("## Summary\n\nPer cell: the positions that meet all three targets; among those that meet the "
         "balance target the one with the fewest GPUs per token, with its time and GPUs per token (or, "
         "where none does, the position with the best balance); and the lowest time at balanced compute "
         "over the positions: the time a position's traffic would give with its compute perfectly "
         f"balanced. Where that is above {TIME_RATIO}x, no position's traffic lets balance meet the "
         "time target.\n\n"
         + markdown_table(["cell", "all three met at", "balance met at the fewest GPUs",
                           "lowest time at balanced compute"], summary))
    emit(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    publish("\n".join(lines), args.out, echo=False)


def _cells(traces_dir: Path, emit: Callable[[str], None]) -> Iterator[tuple[str, RoutingTrace, int, int, int]]:
    """(label, trace, nodes, GPUs per node, slots per GPU) of every cell of `bench.placement`."""
    for task, trace in esft_traces(traces_dir, emit):
        for nodes, gpus_per_node in ESFT_GPUS:
            for slots_per_gpu in ESFT_SLOTS_PER_GPU:
                yield f"{task} {nodes}x{gpus_per_node}x{slots_per_gpu}", trace, nodes, gpus_per_node, slots_per_gpu
    for seed in SYNTH_SEEDS:
        trace = synthetic_trace(*SYNTH_SHAPE, seq_len=SYNTH_SEQ_LEN, seed=seed)
        for nodes, gpus_per_node in ((1, 8), (2, 4)):
            yield f"synthetic seed {seed} {nodes}x{gpus_per_node}x9", trace, nodes, gpus_per_node, 9


def _marked(row: dict, slots_per_gpu: int) -> list[str]:
    checks = met(row, slots_per_gpu)
    values = (f"{row['gap']:+.3f}", f"{row['time']:.3f}x", f"{row['gpus']:.3f}x")
    return [f"{value} {'met' if ok else 'missed'}" for value, ok in zip(values, checks)]


if __name__ == "__main__":
    main()

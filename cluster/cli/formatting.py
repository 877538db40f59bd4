"""Text tables for the terminal and for docs: pure functions from results to strings.

Every table is GitHub markdown with padded columns, so the same text reads well in a terminal and
renders in `docs/`. Nothing here prints.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from switchyard.cluster.kubernetes.topology import ClusterTopology
from switchyard.placement.compare import PolicyResult
from switchyard.placement.evaluate import Evaluation
from switchyard.placement.windows import ServedSummary

BASELINE_POLICY = "eplb"
"""The policy other policies are measured against: DeepSeek's EPLB, the field's default."""

# (header, Evaluation attribute, scale, digits); layer time is shown in milliseconds.
_METRICS = (
    ("balancedness", "balancedness", 1.0, 3),
    ("GPUs/token", "gpus_per_token", 1.0, 3),
    ("remote nodes/token", "remote_nodes_per_token", 1.0, 3),
    ("MoE time ms", "layer_time_s", 1e3, 2),
)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """A markdown table; columns from index `numeric_from` on are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    widths = [max(width, 3) for width in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).rjust(width) if index >= numeric_from else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        "-" * (width - 1) + ":" if index >= numeric_from else "-" * width
        for index, width in enumerate(widths)
    ]
    return "\n".join([line(headers), line(rule), *(line(row) for row in rows)])


def _ratio(value: float | None, baseline: float | None) -> str:
    if value is None or baseline is None or baseline == 0:
        return "-"
    return f"{value / baseline:.2f}x"


def comparison_table(results: Sequence[PolicyResult], baseline: str = BASELINE_POLICY) -> str:
    """One row per policy: balancedness, GPUs/token, remote nodes/token, simulated MoE time.

    When `baseline` is among the results, every metric gets a `vs <baseline>` ratio column (value over
    the baseline's value; "-" where the baseline's value is 0). The time column appears only when the
    evaluations have a simulated time.
    """
    metrics = [m for m in _METRICS if any(getattr(r.evaluation, m[1]) is not None for r in results)]
    reference = next((r.evaluation for r in results if r.policy == baseline), None)
    headers = ["policy"]
    for header, *_ in metrics:
        headers += [header] + ([f"vs {baseline}"] if reference is not None else [])
    headers.append("plan s")
    rows = []
    for result in results:
        row = [result.policy]
        for _, attribute, scale, digits in metrics:
            value = getattr(result.evaluation, attribute)
            row.append("-" if value is None else f"{value * scale:.{digits}f}")
            if reference is not None:
                row.append(_ratio(value, getattr(reference, attribute)))
        row.append(f"{result.planning_time_s:.3f}")
        rows.append(row)
    return markdown_table(headers, rows)


# How a served-windows summary sets each figure of `_METRICS` against the baseline's: the field holding
# the median, the header's word before the baseline, and the format: a difference (balance) or a ratio.
_AGAINST = {"balancedness": ("balance_gap", "gap to", "{:+.3f}"), "gpus_per_token": ("gpus_ratio", "vs", "{:.2f}x"),
            "remote_nodes_per_token": ("remote_ratio", "vs", "{:.2f}x"), "layer_time_s": ("time_ratio", "vs", "{:.2f}x")}


def served_table(summaries: Sequence[ServedSummary], baseline: str = BASELINE_POLICY,
                 windows: Sequence[int] | None = None) -> str:
    """One row per policy: the medians over served windows of each figure of `comparison_table`, and,
    when `baseline` is among them, of each against the baseline's in the same window (a balance gap,
    the other figures as ratios), and the share of windows where the policy is faster.

    windows: with one summary per row made of a single window (`summarize_served([item])`), each row's
    window, shown in a first column (the per-window table).
    """
    timed = all(summary.layer_time_s is not None for summary in summaries)
    metrics = [m for m in _METRICS if timed or m[1] != "layer_time_s"]
    compared = any(summary.policy == baseline for summary in summaries)
    headers = ["policy"]
    for header, attribute, *_ in metrics:
        headers += [header] + ([f"{_AGAINST[attribute][1]} {baseline}"] if compared else [])
    headers += [f"faster than {baseline}"] if compared and timed else []
    rows = []
    for summary in summaries:
        row = [summary.policy]
        for _, attribute, scale, digits in metrics:
            row.append(f"{getattr(summary, attribute) * scale:.{digits}f}")
            if compared:
                field, _, shown = _AGAINST[attribute]
                value = getattr(summary, field)
                row.append("-" if value is None else shown.format(value))
        if compared and timed:
            row.append(f"{summary.faster:.0%}")
        rows.append(row)
    if windows is None:
        return markdown_table(headers, rows)
    return markdown_table(["window", *headers], [[str(window), *row] for window, row in zip(windows, rows)],
                          numeric_from=2)


def evaluation_table(evaluation: Evaluation) -> str:
    """Per-layer metrics of one evaluation, then an `all` row with the totals."""
    has_time = evaluation.layer_time_s_per_layer is not None
    headers = ["layer", "balancedness", "GPUs/token", "remote nodes/token", "cross-node sends"]
    headers += ["MoE time ms"] if has_time else []
    columns = [
        evaluation.balancedness_per_layer,
        evaluation.gpus_per_token_per_layer,
        evaluation.remote_nodes_per_token_per_layer,
    ]
    rows = []
    for layer in range(len(evaluation.gpu_load)):
        row = [str(layer)] + [f"{column[layer]:.3f}" for column in columns]
        row.append(str(int(evaluation.cross_node_transfers_per_layer[layer])))
        if has_time:
            row.append(f"{evaluation.layer_time_s_per_layer[layer] * 1e3:.3f}")
        rows.append(row)
    total = ["all", f"{evaluation.balancedness:.3f}", f"{evaluation.gpus_per_token:.3f}",
             f"{evaluation.remote_nodes_per_token:.3f}", str(evaluation.cross_node_transfers)]
    if has_time:
        total.append(f"{evaluation.layer_time_s * 1e3:.3f}")
    return markdown_table(headers, [*rows, total])


def skew_summary(load: np.ndarray) -> str:
    """How uneven expert load is: busiest expert over mean expert load, min / median / max over layers.

    load: `[L, E]` float64 picks of each expert at each layer.
    """
    mean = load.mean(axis=1)
    skew = np.divide(load.max(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)  # [L]
    return (
        f"busiest expert / mean expert load per layer: min {skew.min():.2f}, "
        f"median {np.median(skew):.2f}, max {skew.max():.2f} (layer {int(skew.argmax())})"
    )


def rebalance_table(summary: dict) -> str:
    """Current against proposed plan: one row per figure, with the change; `summary` is
    `Proposal.to_dict()`'s shape (`current` and `proposed` figures, None where unknown)."""
    rows = []
    metrics = [m if m[1] != "layer_time_s" else ("MoE time us", "layer_time_s", 1e6, 3) for m in _METRICS]
    for header, key, scale, digits in metrics:  # windows are small: the layer time in microseconds
        before, after = summary["current"][key], summary["proposed"][key]
        if before is None or after is None:
            continue
        change = f"{(after - before) / before:+.1%}" if before else "-"
        rows.append([header, f"{before * scale:.{digits}f}", f"{after * scale:.{digits}f}", change])
    return markdown_table(["figure", "current", "proposed", "change"], rows)


def placement_tables(gpu_experts: np.ndarray, node_of_gpu: np.ndarray, gpu_load: np.ndarray | None) -> str:
    """Per layer, one row per GPU: its node, the experts it holds and (when known) its load.

    gpu_experts: `[L, G, S]` int64 expert ids per GPU slot.  node_of_gpu: `[G]` int64
    (`Topology.node_of_gpu`).  gpu_load: `[L, G]` float64 or None.
    """
    blocks = []
    for layer, experts in enumerate(gpu_experts):
        headers = ["GPU", "node", "experts"] + (["load"] if gpu_load is not None else [])
        rows = []
        for gpu, held in enumerate(experts):
            row = [str(gpu), str(node_of_gpu[gpu]), " ".join(str(int(e)) for e in held)]
            rows.append(row + ([f"{gpu_load[layer, gpu]:.0f}"] if gpu_load is not None else []))
        blocks.append(f"layer {layer}\n" + markdown_table(headers, rows, numeric_from=3))
    return "\n\n".join(blocks)


def topology_table(topology: ClusterTopology) -> str:
    """One row per Switchyard node of a Kubernetes deployment: pod, node, zone, GPUs, GPU model, group."""
    rows = [(str(n.index), n.pod, n.node, n.zone or "-", str(n.gpus), n.gpu_product or "-", n.group or "-")
            for n in topology.nodes]
    return markdown_table(("node", "pod", "kubernetes node", "zone", "GPUs", "GPU model", "group"), rows,
                          numeric_from=7)


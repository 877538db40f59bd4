"""`switchyard placement ...`: plan, evaluate, compare and export expert placements offline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from switchyard.cluster.cli_params import (
    INPUT_FILE, OUTPUT_FILE, TOKEN_RANGE, drop_incomplete_option, topology_options,
    verbose_option,
)
from switchyard.cluster.formatting import comparison_table, evaluation_table
from switchyard.placement.compare import TokenWindow, compare_policies, default_windows, token_window
from switchyard.placement.cost import PRESETS
from switchyard.placement.evaluate import evaluate
from switchyard.placement.formats import (
    EXPORT_FORMATS, export_plan, load_plan, load_stats, load_trace, save_plan,
)
from switchyard.placement.policies import get_policy, policy_names
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology

PROGRESS_PICKS = 1 << 22
"""Traces with more picks (tokens x layers x k) than this get progress lines on stderr."""

_trace_option = click.option(
    "--trace", "trace_path", type=INPUT_FILE, required=True,
    help="Routing trace: .npz (canonical), Mixtral .jsonl, or an SGLang per_token dump (.pt/.json).",
)
_cluster_option = click.option(
    "--cluster", type=click.Choice(sorted(PRESETS)), default="h100", show_default=True,
    help="Hardware preset for the simulated MoE layer time (docs/placement-metrics.md).",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Also print the result as one JSON object on the last line.",
)


@click.group()
def placement() -> None:
    """Plan, evaluate, compare and export expert placements from routing traces."""


@placement.command("plan")
@click.option("--trace", "trace_path", type=INPUT_FILE, required=True,
              help="Routing trace (.npz, .jsonl, SGLang dump), or a load matrix [L, E] of tokens per "
                   "expert (.npy, .json, .pt; vLLM EPLB load, SGLang stat dump).")
@click.option("--tokens", type=TOKEN_RANGE, default=None, help="Plan on tokens [A, B) only (a trace).")
@topology_options
@click.option("--policy", type=click.Choice(policy_names()), required=True, help="Placement policy.")
@click.option("--out", type=OUTPUT_FILE, required=True, help="Plan file to write (JSON).")
@drop_incomplete_option
@verbose_option
def plan(trace_path: Path, tokens: TokenWindow | None, nodes: int, gpus_per_node: int,
         slots_per_gpu: int | None, policy: str, out: Path, drop_incomplete: bool) -> None:
    """Plan a placement from observed routing and write it as JSON."""
    if tokens is None:
        stats = load_stats(trace_path, drop_incomplete=drop_incomplete)
    else:
        routing = load_trace(trace_path, drop_incomplete=drop_incomplete)
        stats = RoutingStats.from_trace(token_window(routing, tokens, "--tokens"))
    topology = Topology.for_experts(stats.num_experts, nodes, gpus_per_node, slots_per_gpu)
    result = get_policy(policy).place(stats, topology)
    save_plan(result, out)
    redundant = topology.num_slots - stats.num_experts
    click.echo(f"wrote {out}: {policy} placement of {stats.num_experts} experts x {stats.num_layers} layers "
               f"on {topology.describe()} ({redundant} redundant slot(s) per layer)")


@placement.command("evaluate")
@_trace_option
@click.option("--plan", "plan_path", type=INPUT_FILE, required=True, help="Plan file (JSON).")
@click.option("--tokens", type=TOKEN_RANGE, default=None, help="Evaluate on tokens [A, B) only.")
@_cluster_option
@_json_option
@drop_incomplete_option
@verbose_option
def evaluate_command(trace_path: Path, plan_path: Path, tokens: TokenWindow | None, cluster: str,
                     as_json: bool, drop_incomplete: bool) -> None:
    """Measure a plan on a trace: balance, GPUs and remote nodes per token, simulated time."""
    routing = token_window(load_trace(trace_path, drop_incomplete=drop_incomplete), tokens, "--tokens")
    evaluation = evaluate(load_plan(plan_path), routing, PRESETS[cluster])
    click.echo(f"{plan_path} on {trace_path}: {routing.num_tokens} tokens, MoE time simulated on {cluster}")
    click.echo(evaluation_table(evaluation))
    if as_json:
        click.echo(json.dumps({"cluster": cluster, **evaluation.to_dict()}))


@placement.command("compare")
@_trace_option
@topology_options
@click.option("--train", type=TOKEN_RANGE, default=None, help="Plan on tokens [A, B). Default: first half.")
@click.option("--test", type=TOKEN_RANGE, default=None,
              help="Evaluate on tokens [C, D). Default: second half.")
@click.option("--policy", "policies", type=click.Choice(policy_names()), multiple=True,
              help="A policy to compare (repeat the option). Default: every policy.")
@_cluster_option
@_json_option
@drop_incomplete_option
@verbose_option
def compare(trace_path: Path, nodes: int, gpus_per_node: int, slots_per_gpu: int | None,
            train: TokenWindow | None, test: TokenWindow | None, policies: tuple[str, ...], cluster: str,
            as_json: bool, drop_incomplete: bool) -> None:
    """Plan with every policy on the training tokens and compare them on the test tokens."""
    routing = load_trace(trace_path, drop_incomplete=drop_incomplete)
    topology = Topology.for_experts(routing.num_experts, nodes, gpus_per_node, slots_per_gpu)
    default_train, default_test = default_windows(routing)
    train, test = train or default_train, test or default_test
    large = routing.topk_ids.size > PROGRESS_PICKS

    def progress(policy: str) -> None:
        if large:
            click.echo(f"planning with {policy} and evaluating ...", err=True)

    results = compare_policies(routing, topology, policies or policy_names(), train, test,
                               PRESETS[cluster], on_policy=progress)
    click.echo(f"{trace_path}: {routing.num_tokens} tokens x {routing.num_layers} layers, "
               f"{routing.num_experts} experts, top-{routing.top_k}; {topology.describe()}")
    click.echo(f"plan on tokens {_span(train, routing.num_tokens)}, "
               f"evaluate on tokens {_span(test, routing.num_tokens)}; "
               f"MoE time: the test tokens through every MoE layer, simulated on {cluster}")
    click.echo(comparison_table(results))
    if as_json:
        click.echo(json.dumps({r.policy: r.evaluation.to_dict() for r in results}))


@placement.command("export")
@click.option("--plan", "plan_path", type=INPUT_FILE, required=True, help="Plan file (JSON).")
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), required=True,
              help="sglang: --init-expert-location JSON; vllm: expert map; trtllm: moe_load_balancer YAML.")
@click.option("--out", type=OUTPUT_FILE, required=True, help="File to write.")
@click.option("--first-moe-layer", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decoder layer number of MoE layer 0, for engines that number every decoder layer "
                   "(sglang, trtllm): 1 for DeepSeek-V2-Lite, 3 for DeepSeek-V3.")
@verbose_option
def export(plan_path: Path, export_format: str, out: Path, first_moe_layer: int) -> None:
    """Write a plan in an inference engine's own format."""
    export_plan(load_plan(plan_path), export_format, out, first_moe_layer=first_moe_layer)
    click.echo(f"wrote {out} ({export_format})")


def _span(window: TokenWindow, num_tokens: int) -> str:
    """`A:B` with open ends resolved against the trace's length."""
    start, stop, _ = slice(*window).indices(num_tokens)
    return f"{start}:{stop}"


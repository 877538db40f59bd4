"""`switchyard placement ...`: plan, evaluate, compare and export expert placements offline; show the
active plan of a running gateway, rebalance it live and roll it back (`show`, `rebalance`, `rollback`;
gRPC imported only there). A live change always shows its dry run first and asks for confirmation
unless `--yes`; it then applies exactly the plan shown, pinned to the epoch shown (ABORTED if another
rebalance came first).

Against a gateway, a gRPC error prints one line `STATUS_NAME: message` on stderr and exits with 2
when the request was at fault (`errors.exit_code`), 1 otherwise."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
from click.core import ParameterSource

from switchyard.cluster.cli.params import (
    INPUT_FILE, OUTPUT_FILE, TOKEN_RANGE, adaptive_memory_option, balance_feedback_option, check_resampled_options,
    drop_incomplete_option, grpc_errors_exit, resampled_windows_option, topology_options, verbose_option,
)
from switchyard.cluster.settings import DEFAULTS, TLS_CA_ENV, TOKEN_ENV
from switchyard.cluster.cli.formatting import (
    BASELINE_POLICY, comparison_table, evaluation_table, placement_tables, rebalance_table, served_table,
)
from switchyard.placement.compare import TokenWindow, compare_policies, default_windows, token_window
from switchyard.placement.cost import PRESETS
from switchyard.placement.evaluate import evaluate
from switchyard.placement.feedback import BalanceFeedback
from switchyard.placement.formats import (
    EXPORT_FORMATS, export_plan, load_plan, load_stats, load_trace, save_plan,
)
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import memory_dict, memory_text
from switchyard.placement.policies import DEFAULT_POLICY, planning_policy, policy_names, policy_options
from switchyard.placement.policies.affinity import AffinityPolicy
from switchyard.placement.stats import RoutingStats, run_count
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from switchyard.placement.windows import (
    PLANNING_DECAY, PLANNING_HISTORY, WINDOW_TOKENS, resampled_window, serve_windows, summarize_served,
)

PROGRESS_PICKS = 1 << 22
"""Traces with more picks (tokens x layers x k) than this get progress lines on stderr."""

_trace_option = click.option(
    "--trace", "trace_path", type=INPUT_FILE, required=True,
    help="Routing trace: .npz (canonical), Mixtral .jsonl, or an SGLang per_token dump (.pt/.json).",
)
_cluster_option = click.option(
    "--cluster", type=click.Choice(sorted(PRESETS)), default=DEFAULTS.cluster_preset, show_default=True,
    help="Hardware preset for the simulated MoE layer time (docs/placement-metrics.md).",
)
_balance_tokens_option = click.option(
    "--balance-tokens", type=click.IntRange(min=1), default=None, metavar="N",
    help="Hold affinity's load cap on every run of N consecutive tokens it plans on, not on the whole window: "
         "it buys balance on the next window for locality (docs/placement.md, \"Balance per batch\"). Needs a "
         "per-token trace. Default: the whole window.",
)
_policies_option = click.option(
    "--policy", "policies", type=click.Choice(policy_names()), multiple=True,
    help="A policy to compare (repeat the option). Default: every policy.",
)
_starts_option = click.option(
    "--starts", type=click.IntRange(min=1), default=None,
    help="Partitions each layer is refined from, the best kept, for policies that search (affinity): "
         f"more find better plans, for as many times the time. Default: affinity's ({AffinityPolicy.starts}).",
)
_perturbations_option = click.option(
    "--perturbations", type=click.IntRange(min=0), default=None,
    help="Kicks of an iterated local search per layer after the starts, for policies that search "
         "(affinity): each swaps a few random slots of the best layout and refines again, keeping what "
         "scores better; fewer GPUs per token, each for about half a start's time. "
         f"Default: affinity's ({AffinityPolicy.perturbations}).",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Also print the result as one JSON object on the last line.",
)


@click.group()
def placement() -> None:
    """Plan, evaluate, compare and export expert placements from routing traces; show a running
    gateway's plan and propose a rebalance for it."""


@placement.command("plan")
@click.option("--trace", "trace_path", type=INPUT_FILE, required=True,
              help="Routing trace (.npz, .jsonl, SGLang dump), or a load matrix [L, E] of tokens per "
                   "expert (.npy, .json, .pt; vLLM EPLB load, SGLang stat dump).")
@click.option("--tokens", type=TOKEN_RANGE, default=None, help="Plan on tokens [A, B) only (a trace).")
@topology_options
@click.option("--policy", type=click.Choice(policy_names()), required=True, help="Placement policy.")
@click.option("--out", type=OUTPUT_FILE, required=True, help="Plan file to write (JSON).")
@click.option("--cluster", type=click.Choice(sorted(PRESETS)), default=DEFAULTS.cluster_preset,
              show_default=True, help="Hardware the plan is for: policies that weigh time (affinity) price traffic by it.")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Processes that plan the layers, for policies that can split them (affinity); the plan is "
                   "the same. Default: one per CPU this process may use (its container's CPU limit counted) where "
                   "the plan is large enough to pay for forking, else one.")
@_starts_option
@_perturbations_option
@_balance_tokens_option
@resampled_windows_option("Plan")
@drop_incomplete_option
@verbose_option
def plan(trace_path: Path, tokens: TokenWindow | None, nodes: int, gpus_per_node: int,
         slots_per_gpu: int | None, policy: str, out: Path, cluster: str, processes: int | None,
         starts: int | None, perturbations: int | None, balance_tokens: int | None,
         resampled_windows: int | None, drop_incomplete: bool) -> None:
    """Plan a placement from observed routing and write it as JSON."""
    check_resampled_options(resampled_windows, balance_tokens)
    if tokens is None:
        stats = load_stats(trace_path, drop_incomplete=drop_incomplete, window_tokens=balance_tokens)
    else:
        routing = load_trace(trace_path, drop_incomplete=drop_incomplete)
        stats = RoutingStats.from_trace(token_window(routing, tokens, "--tokens"), window_tokens=balance_tokens)
    stats = resampled_window(stats, resampled_windows)
    topology = Topology.for_experts(stats.num_experts, nodes, gpus_per_node, slots_per_gpu)
    options = {"processes": processes} if "processes" in policy_options(policy) else {}  # None: one per CPU
    options.update(_policy_options(policy, starts=starts, perturbations=perturbations))
    result = planning_policy(policy, PRESETS[cluster], **options).place(stats, topology)
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
@_policies_option
@_cluster_option
@_balance_tokens_option
@resampled_windows_option("Plan")
@_json_option
@drop_incomplete_option
@verbose_option
def compare(trace_path: Path, nodes: int, gpus_per_node: int, slots_per_gpu: int | None,
            train: TokenWindow | None, test: TokenWindow | None, policies: tuple[str, ...], cluster: str,
            balance_tokens: int | None, resampled_windows: int | None, as_json: bool, drop_incomplete: bool) -> None:
    """Plan with every policy on the training tokens and compare them on the test tokens."""
    check_resampled_options(resampled_windows, balance_tokens)
    routing = load_trace(trace_path, drop_incomplete=drop_incomplete)
    topology = Topology.for_experts(routing.num_experts, nodes, gpus_per_node, slots_per_gpu)
    default_train, default_test = default_windows(routing)
    train, test = train or default_train, test or default_test
    large = routing.topk_ids.size > PROGRESS_PICKS

    def progress(policy: str) -> None:
        if large:
            click.echo(f"planning with {policy} and evaluating ...", err=True)

    results = compare_policies(routing, topology, policies or policy_names(), train, test,
                               PRESETS[cluster], on_policy=progress, balance_tokens=balance_tokens,
                               resampled_windows=resampled_windows)
    click.echo(_describe(trace_path, routing, topology))
    click.echo(f"plan on tokens {_span(train, routing.num_tokens)}, "
               f"evaluate on tokens {_span(test, routing.num_tokens)}; "
               f"MoE time: the test tokens through every MoE layer, simulated on {cluster}")
    click.echo(comparison_table(results))
    if as_json:
        click.echo(json.dumps({r.policy: r.evaluation.to_dict() for r in results}))


@placement.command("windows")
@_trace_option
@topology_options
@click.option("--window-tokens", type=click.IntRange(min=1), default=WINDOW_TOKENS, show_default=True,
              help="Tokens in a window: every plan is made on past windows and serves the next one.")
@click.option("--history", type=click.IntRange(min=1), default=PLANNING_HISTORY, show_default=True,
              help="Windows each plan is made on, the last one and those before it (as serve's --stats-history).")
@click.option("--decay", type=click.FloatRange(0, 1), default=PLANNING_DECAY, show_default=True,
              help="Weight of each older window relative to the one after it (as serve's --stats-decay).")
@_policies_option
@_cluster_option
@_balance_tokens_option
@adaptive_memory_option("Before each window, plan")
@resampled_windows_option("Plan")
@balance_feedback_option("Before each window, plan")
@_starts_option
@_perturbations_option
@click.option("--per-window", is_flag=True, help="Also print every served window's figures, one row per policy.")
@_json_option
@drop_incomplete_option
@verbose_option
def windows(trace_path: Path, nodes: int, gpus_per_node: int, slots_per_gpu: int | None, window_tokens: int,
            history: int, decay: float, policies: tuple[str, ...], cluster: str, balance_tokens: int | None,
            adaptive_memory: bool, resampled_windows: int | None, balance_feedback: bool, starts: int | None,
            perturbations: int | None, per_window: bool, as_json: bool, drop_incomplete: bool) -> None:
    """Serve the trace as a live cluster would: cut it into windows, plan every policy on the past
    windows and serve the next one with its plan; medians over the served windows, and each policy
    against EPLB in the same window (docs/placement.md, "Serving the next window")."""
    check_resampled_options(resampled_windows, balance_tokens)
    routing = load_trace(trace_path, drop_incomplete=drop_incomplete)
    topology = Topology.for_experts(routing.num_experts, nodes, gpus_per_node, slots_per_gpu)
    spec = PRESETS[cluster]
    names = policies or policy_names()

    def progress(index: int, count: int) -> None:  # every served window plans every policy: always long work
        click.echo(f"serving window {index} of {count} ...", err=True)

    search = {"starts": starts, "perturbations": perturbations}
    planners = {name: planning_policy(name, spec, **_policy_options(name, **search)) for name in names}
    served = serve_windows(routing, topology, planners,
                           window_tokens, decay, history, spec, balance_tokens=balance_tokens,
                           adaptive_memory=adaptive_memory, on_window=progress, resampled_windows=resampled_windows,
                           feedback=BalanceFeedback() if balance_feedback else None)
    summaries = summarize_served(served, BASELINE_POLICY)
    click.echo(_describe(trace_path, routing, topology))
    chosen = ""
    if adaptive_memory:
        memories = ", ".join(f"{item.memory[0]} by {item.memory[1]:g}" for item in served)
        chosen = f" or a longer memory, whichever forecast best (in turn: {memories})"
    if resampled_windows is not None:
        chosen += (f", as {resampled_windows} windows drawn from their runs of {balance_tokens} tokens "
                   f"({run_count(window_tokens, balance_tokens)} a window)")
    for name in served[0].levels:
        chosen += (f"; {name} at the overload price its served balance set, level "
                   f"{' '.join(str(item.levels[name]) for item in served)} in turn")
    click.echo(f"{len(served)} windows of {window_tokens} tokens served, each with plans made on the windows "
               f"before it: the last {history}, each older one weighted {decay:g} of the next{chosen}; "
               f"medians over the served windows; MoE time simulated on {cluster}")
    click.echo(served_table(summaries))
    if per_window:
        rows = [(item.window, summary) for item in served for summary in summarize_served([item], BASELINE_POLICY)]
        click.echo("\nEvery served window:\n")
        click.echo(served_table([summary for _, summary in rows], windows=[window for window, _ in rows]))
    if as_json:
        click.echo(json.dumps({
            "window_tokens": window_tokens, "history": history, "decay": decay, "adaptive_memory": adaptive_memory,
            "balance_tokens": balance_tokens, "resampled_windows": resampled_windows,
            "balance_feedback": balance_feedback,
            "summary": {summary.policy: summary.to_dict() for summary in summaries},
            "windows": [{"window": item.window, "memory": {"history": item.memory[0], "decay": item.memory[1]},
                         "feedback_levels": item.levels, **{name: evaluation.to_dict() for name, evaluation in item.evaluations.items()}}
                        for item in served],
        }))


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


_server_option = click.option("--server", required=True, help="A running gateway (switchyard serve), HOST:PORT.")
_token_option = click.option("--token", envvar=TOKEN_ENV, default=None,
                             help="The gateway's bearer token (rebalance: the admin token).")
_yes_option = click.option("--yes", is_flag=True, help="Apply without asking for confirmation.")
_tls_ca_option = click.option("--tls-ca", envvar=TLS_CA_ENV, type=INPUT_FILE, default=None,
                              help="PEM of the CA (or the self-signed certificate) of a TLS gateway.")


@contextlib.contextmanager
def _gateway(server: str, token: str | None, tls_ca: Path | None) -> Iterator[Any]:
    """A `Client` of the gateway; a gRPC error ends the command with one line, exit 2 or 1."""
    from switchyard.cluster.gateway.client import Client

    with (Client(server, token=token, tls_ca=tls_ca, timeout_s=DEFAULTS.client_timeout_s) as client,
          grpc_errors_exit()):
        yield client


@placement.command("show")
@_server_option
@_token_option
@_tls_ca_option
@_json_option
@verbose_option
def show(server: str, token: str | None, tls_ca: Path | None, as_json: bool) -> None:
    """The gateway's active plan and epoch: experts and load per GPU, per layer."""
    from switchyard.placement.proposal import expected_gpu_load

    with _gateway(server, token, tls_ca) as client:
        answer, stats = client.placement(), client.stats()
    active = Plan.from_dict(json.loads(answer.plan_json))
    load = np.array([list(layer.expert_load) for layer in stats.layers], dtype=np.float64)
    gpu_load = expected_gpu_load(active, load) if load.shape == (active.num_layers, active.num_logical_experts) \
        else None
    topology = active.topology
    engine_epochs = list(answer.engine_epochs)
    click.echo(f"epoch {answer.epoch}: {active.num_logical_experts} experts x {active.num_layers} layers on "
               f"{topology.describe()}; load: {stats.num_tokens:.0f} tokens "
               + (f"in the last {stats.window_seconds:g} s" if stats.window_seconds else
                  f"in the newest entries holding {stats.window_tokens:g} tokens or more" if stats.window_tokens else
                  "since loading")
               + " (each expert's load split over its replicas)")
    click.echo(f"engines dispatch under epoch(s): {', '.join(str(e) for e in engine_epochs)}")
    click.echo(placement_tables(active.gpu_experts, topology.node_of_gpu, gpu_load))
    if as_json:
        click.echo(json.dumps({"epoch": answer.epoch, "engine_epochs": engine_epochs, "plan": active.to_dict(),
                               "gpu_experts": active.gpu_experts.tolist(),
                               "gpu_load": None if gpu_load is None else gpu_load.tolist(),
                               "num_tokens": stats.num_tokens, "window_seconds": stats.window_seconds,
                               "window_tokens": stats.window_tokens}))


def _apply_options(apply_by_default: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--dry-run` and `--apply` as two flags, so that giving both is a usage error instead of the last
    one silently winning; the command receives `apply`."""
    default = "--apply" if apply_by_default else "--dry-run"

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def resolved(*args: Any, dry_run: bool, apply: bool, **kwargs: Any) -> Any:
            if dry_run and apply:
                raise click.UsageError("--dry-run and --apply contradict each other: give one of them")
            return command(*args, apply=apply or (apply_by_default and not dry_run), **kwargs)

        resolved = click.option("--apply", is_flag=True, help=f"Then move the experts live (default: {default}).")(
            resolved)
        return click.option("--dry-run", is_flag=True, help="Only propose and report; move nothing.")(resolved)

    return decorate


def _given(ctx: click.Context, name: str) -> bool:
    """Whether option `name` was given (command line or environment), not left at its default."""
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


@placement.command("rebalance")
@_server_option
@click.option("--policy", type=click.Choice(policy_names()), default=DEFAULT_POLICY, show_default=True,
              help="Placement policy of the proposal.")
@click.option("--max-moves", type=click.IntRange(min=0), default=None,
              help="The most expert copies the proposal may need (migration-aware policies: affinity).")
@click.option("--plan", "plan_path", type=INPUT_FILE, default=None,
              help="Propose this plan (JSON, e.g. from `placement plan`) instead of planning with --policy.")
@_apply_options(apply_by_default=False)
@_yes_option
@_token_option
@_tls_ca_option
@_json_option
@verbose_option
@click.pass_context
def rebalance(ctx: click.Context, server: str, policy: str, max_moves: int | None, plan_path: Path | None,
              apply: bool, yes: bool, token: str | None, tls_ca: Path | None, as_json: bool) -> None:
    """Propose a new plan from the gateway's statistics window (the diff and the predicted gain) and,
    with --apply, move the experts live: copies first, then every engine switches, then old copies go."""
    if plan_path is not None:
        for name, option in (("policy", "--policy"), ("max_moves", "--max-moves")):
            if _given(ctx, name):
                raise click.UsageError(f"--plan and {option} conflict: a given plan is proposed whole, "
                                       f"{option} only shapes planning; give one of them")
    plan_json = json.dumps(load_plan(plan_path).to_dict()) if plan_path is not None else None
    with _gateway(server, token, tls_ca) as client:
        answer = client.rebalance(apply=False, policy=policy, max_moves=max_moves, plan_json=plan_json)
        summary = rebalance_summary(answer)
        source = f"the plan in {plan_path}" if plan_path is not None else policy
        memory = summary["memory"]
        merged = "" if memory is None else f" ({memory_text(memory)})"
        if summary["feedback_level"] is not None:
            merged += f", overload priced at balance feedback level {summary['feedback_level']}"
        _show_then_apply(f"{source} on {summary['window_tokens']:.0f} tokens of statistics{merged}", summary,
                         apply, yes, as_json, "rebalance",
                         lambda: client.rebalance(apply=True, policy=policy, max_moves=max_moves,
                                                  plan_json=answer.plan_json, expected_epoch=answer.epoch))


@placement.command("rollback")
@_server_option
@_apply_options(apply_by_default=True)
@_yes_option
@_token_option
@_tls_ca_option
@_json_option
@verbose_option
def rollback(server: str, apply: bool, yes: bool, token: str | None, tls_ca: Path | None, as_json: bool) -> None:
    """Return to the plan before the active one, live and the same way as `rebalance --apply` (after
    showing it and asking); --dry-run only shows what it would move and change."""
    with _gateway(server, token, tls_ca) as client:
        _show_then_apply("the previous plan", rebalance_summary(client.rollback(apply=False)), apply, yes,
                         as_json, "roll back", lambda: client.rollback(apply=True))


def _show_then_apply(source: str, summary: dict[str, Any], apply: bool, yes: bool, as_json: bool, action: str,
                     do_apply: Callable[[], Any]) -> None:
    """Print a proposal, then `do_apply()` unless a dry run or not confirmed, then print the outcome."""
    _echo_proposal(source, summary)
    applied = do_apply() if apply and _confirmed(summary, yes, action) else None
    _echo_result(summary, applied, as_json)


def _echo_proposal(source: str, summary: dict[str, Any]) -> None:
    click.echo(f"proposal: {source} (figures on {summary['evaluated_tokens']} sampled top-k sets, all layers), "
               f"from epoch {summary['epoch']}")
    click.echo(rebalance_table(summary))
    per_layer = ", ".join(str(n) for n in summary["replicas_moved_per_layer"])
    click.echo(f"diff: {summary['replicas_moved']} replica(s) moved (per layer: {per_layer}), "
               f"{summary['bytes_to_copy'] / 2**20:.1f} MiB to copy")


def _confirmed(summary: dict[str, Any], yes: bool, action: str) -> bool:
    """Whether to apply: False (and why) when nothing would move; else --yes or the user's answer."""
    if summary["replicas_moved"] == 0:
        click.echo("nothing to move: the proposed plan holds the same experts as the active one")
        return False
    return yes or click.confirm(f"{action}: move {summary['replicas_moved']} replica(s) live from epoch "
                                f"{summary['epoch']}?", default=False)


def _echo_result(summary: dict[str, Any], applied: Any, as_json: bool) -> None:
    """The closing line (applied or not) and, with --json, the summary with what was applied."""
    if applied is not None and not applied.applied:  # the gateway found the plan already active
        applied = None
    if applied is None:
        click.echo("nothing applied")
    else:
        click.echo(f"applied: epoch {applied.applied_epoch} is active on every engine; "
                   f"{applied.replicas_moved} replica(s), {applied.bytes_copied / 2**20:.1f} MiB copied worker to "
                   f"worker in {applied.apply_seconds:.2f} s; {applied.steps_during_switch} engine step(s) ran "
                   "during the switch")
    if as_json:
        click.echo(json.dumps({**summary, "applied": applied is not None,
                               "applied_epoch": applied.applied_epoch if applied is not None else None,
                               "bytes_copied": applied.bytes_copied if applied is not None else 0,
                               "apply_seconds": applied.apply_seconds if applied is not None else 0.0}))


def rebalance_summary(answer: Any) -> dict[str, Any]:
    """A `RebalanceResponse` as `Proposal.to_dict()`'s shape plus `epoch` and `plan` (figures unset: None)."""
    from switchyard.cluster.gateway.client import (  # gRPC is loaded by now
        planned_feedback_level, planned_memory, planned_resampling)

    def metrics(message: Any) -> dict[str, float | None]:
        return {key: getattr(message, key) if key == "balancedness" or message.HasField(key) else None
                for key in ("balancedness", "gpus_per_token", "remote_nodes_per_token", "layer_time_s")}

    return {"epoch": answer.epoch, "policy": answer.policy, "replicas_moved": answer.replicas_moved,
            "replicas_moved_per_layer": list(answer.replicas_moved_per_layer),
            "bytes_to_copy": answer.bytes_to_copy, "current": metrics(answer.current),
            "proposed": metrics(answer.proposed), "window_tokens": answer.window_tokens,
            "evaluated_tokens": answer.evaluated_tokens,
            "memory": memory_dict(planned_memory(answer), planned_resampling(answer)),
            "feedback_level": planned_feedback_level(answer),
            "plan": json.loads(answer.plan_json)}


def _policy_options(policy: str, **given: int | None) -> dict[str, int]:
    """The search options given on the command line that `policy` takes (affinity's `starts` and
    `perturbations`); other policies ignore them, and an option not given keeps the policy's default."""
    takes = policy_options(policy)
    return {option: value for option, value in given.items() if value is not None and option in takes}


def _describe(trace_path: Path, routing: RoutingTrace, topology: Topology) -> str:
    """The line that opens a comparison: the trace's shape and the topology."""
    return (f"{trace_path}: {routing.num_tokens} tokens x {routing.num_layers} layers, "
            f"{routing.num_experts} experts, top-{routing.top_k}; {topology.describe()}")


def _span(window: TokenWindow, num_tokens: int) -> str:
    """`A:B` with open ends resolved against the trace's length."""
    start, stop, _ = slice(*window).indices(num_tokens)
    return f"{start}:{stop}"


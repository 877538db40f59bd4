"""CLI commands of the runtime: `switchyard model init` and `switchyard generate`.

Register them on the main group with `register(main)`. `generate --model` serves on an ephemeral local
Ray cluster; `generate --server` asks a running gateway (`switchyard serve`) through the client
(`serve.run_remote_generate`). Formatting is pure (`format_outputs`); bad input (a missing model
directory, ids outside the vocabulary, a plan that does not fit the model, neither or both of
`--model` and `--server`) is reported in one line with exit code 2, before any Ray process starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from switchyard.cluster.cli.params import OneLineCommand, UserError, ray_cluster_options

from switchyard.cluster.engine.requests import check_prompt, check_stop_ids, make_params
from switchyard.cluster.errors import SwitchyardError
from switchyard.cluster.settings import DEFAULTS, TOKEN_ENV
from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.families import FAMILIES, SIZES


def _prompt_ids(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[list[int]]:
    prompts = []
    for value in values:
        try:
            prompts.append([int(token) for token in value.split(",") if token.strip()])
        except ValueError:
            raise UserError(f"--prompt-ids must be comma-separated integers, got {value!r}") from None
        if not prompts[-1]:
            raise UserError("--prompt-ids needs at least one token id")
    return prompts


@click.group("model")
def model() -> None:
    """Model checkpoints."""


@model.command("init", cls=OneLineCommand)
@click.option("--arch", type=click.Choice(list(FAMILIES)), required=True, help="Model family.")
@click.option("--size", type=click.Choice(list(SIZES)), default="tiny", show_default=True,
              help="tiny: tests (a few MB); small: benchmarks (~240M parameters); esft: the ESFT traces' "
              "routing shape (26 MoE layers x 64 experts, top-6), for trace replay.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--skew", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Router bias: hot experts and experts picked together (0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
def init(arch: str, size: str, out: Path, skew: float, seed: int) -> None:
    """Write a random-weight checkpoint with transformers' own model classes."""
    try:
        path = init_checkpoint(arch, size, out, skew=skew, seed=seed)
        spec = load_spec(path)
    except SwitchyardError as error:
        raise UserError(str(error)) from None
    click.echo(f"wrote {arch} ({size}) to {path}: {spec.num_layers} MoE layers x {spec.num_experts} experts, "
               f"top-{spec.top_k}, hidden {spec.hidden_size}")


def format_outputs(outputs: list[list[int]], traffic: dict[str, Any], as_json: bool) -> str:
    """The text `generate` prints: one comma-separated line per prompt, or one JSON object."""
    if as_json:
        return json.dumps({"outputs": outputs, **traffic})
    return "\n".join(",".join(str(token) for token in output) for output in outputs)


LOCAL_ONLY = ("nodes", "address", "workers_per_node", "plan_path")
"""`generate` options that configure the local cluster, so meaningless with `--server`."""
REMOTE_ONLY = ("token", "tls_ca", "timeout_s")
"""`generate` options of the client, so meaningless without `--server`."""


def _check_mode(ctx: click.Context, model_dir: Path | None, server: str | None) -> None:
    """Exactly one of `--model` and `--server`, and only the options of that mode (usage error otherwise)."""
    if (model_dir is None) == (server is None):
        raise UserError("give --model DIR (serve locally) or --server HOST:PORT (a running gateway)"
                         + (", not both" if server is not None else ""))
    wrong = REMOTE_ONLY if server is None else LOCAL_ONLY
    flags = [param.opts[0] for param in ctx.command.params if param.name in wrong
             and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE]
    if flags:
        raise UserError(f"{', '.join(flags)}: only {'with' if server is None else 'without'} --server")


@click.command("generate", cls=OneLineCommand)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint directory: serve it on an ephemeral local Ray cluster.")
@click.option("--server", default=None, help="A running gateway (switchyard serve), HOST:PORT; not with --model.")
@click.option("--prompt-ids", "prompts", multiple=True, required=True, callback=_prompt_ids,
              help="Comma-separated token ids of one prompt; repeat for more prompts.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULTS.max_new_tokens, show_default=True)
@ray_cluster_options
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), default=None,
              help="Plan JSON (physical_to_logical_map, num_nodes, gpus_per_node); default: linear.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stop-id", "stop_ids", type=int, multiple=True, help="A token id that ends generation.")
@click.option("--token", envvar=TOKEN_ENV, default=None,
              help="With --server: the gateway's bearer token.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --server: PEM of the gateway's CA (TLS).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --server: deadline of the call in seconds.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: outputs and traffic counters (with --server: finish details).")
@click.pass_context
def generate(ctx: click.Context, model_dir: Path | None, server: str | None, prompts: list[list[int]],
             max_new_tokens: int, nodes: int, address: str | None, workers_per_node: int,
             plan_path: Path | None,
             temperature: float, top_p: float, seed: int, stop_ids: tuple[int, ...], token: str | None,
             tls_ca: Path | None, timeout_s: float | None, as_json: bool) -> None:
    """Generate for the prompts and print the ids: on a Ray cluster (--model; joined with --address, else
    started for the call) or on a running gateway (--server)."""
    _check_mode(ctx, model_dir, server)
    try:
        params = make_params(max_new_tokens, temperature, top_p, seed, stop_ids)
    except SwitchyardError as error:
        raise UserError(str(error)) from None
    if server is not None:
        from switchyard.cluster.cli.serve import run_remote_generate  # gRPC only with --server

        run_remote_generate(server, prompts, as_json, token, tls_ca, timeout_s, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=seed, stop_ids=stop_ids)
        return
    from switchyard.cluster.cli.preflight import wait_for_ray
    from switchyard.cluster.runtime.runtime import Runtime, ray_cluster, resolve_plan  # Ray only when serving

    try:
        spec = load_spec(model_dir)
        plan = resolve_plan(spec, plan_path if plan_path is not None else "linear", nodes, workers_per_node)
        for prompt in prompts:
            check_prompt(prompt, spec.vocab_size, int(spec.config.max_position_embeddings), max_new_tokens)
        check_stop_ids(params, spec.vocab_size)
    except SwitchyardError as error:
        raise UserError(str(error)) from None
    wait_for_ray(address)  # one line after a bounded wait, instead of Ray's silent retries
    with ray_cluster(nodes, address), Runtime.start(model_dir, nodes, workers_per_node, plan) as runtime:
        outputs = runtime.generate(prompts, params)
        traffic = runtime.traffic()
    click.echo(format_outputs(outputs, traffic, as_json))


def register(group: click.Group) -> None:
    """Add the runtime's commands to the main CLI group."""
    group.add_command(model)
    group.add_command(generate)

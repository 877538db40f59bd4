"""Parameter types and shared options of the `switchyard` CLI.

Everything here rejects bad input while click parses it, so the user gets a usage error (exit code 2)
that names the bad value before any file is read.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from switchyard.cluster.errors import exit_code
from switchyard.placement.compare import TokenWindow
from switchyard.placement.feedback import BalanceFeedback
from switchyard.placement.windows import ADAPTIVE_MEMORY, BALANCE_FEEDBACK, LONGER_MEMORIES, check_resampled


class TokenRangeType(click.ParamType):
    """`A:B`, `A:` or `:B` with non-negative integers and A < B: tokens `[A, B)` of a trace."""

    name = "A:B"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> TokenWindow:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        start_text, colon, stop_text = text.partition(":")
        if not colon:
            self.fail(f"{value!r} is not a token range; write A:B, A: or :B (e.g. 0:4096)", param, ctx)
        try:
            start = int(start_text) if start_text.strip() else None
            stop = int(stop_text) if stop_text.strip() else None
        except ValueError:
            self.fail(f"{value!r} is not a token range; A and B must be integers (e.g. 0:4096)", param, ctx)
        if (start is not None and start < 0) or (stop is not None and stop < 0):
            self.fail(f"{value!r}: token indices must be non-negative", param, ctx)
        if start is not None and stop is not None and start >= stop:
            self.fail(f"{value!r} is empty: A must be smaller than B", param, ctx)
        return start, stop


USER_ERROR_EXIT_CODE = exit_code("INVALID_ARGUMENT")
"""The exit code of bad input, the same as click's usage errors."""


class UserError(click.ClickException):
    """Bad user input on its way to the terminal: one line `Error: <message>`, exit code 2."""

    exit_code = USER_ERROR_EXIT_CODE


class OneLineCommand(click.Command):
    """A command whose usage errors (bad option values) are one line with exit code 2 too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise UserError(error.format_message()) from None


@contextlib.contextmanager
def grpc_errors_exit() -> Iterator[None]:
    """A gRPC error from the gateway ends the command: one line `STATUS_NAME: message` on stderr, and
    `errors.exit_code` of its status (2: the request was at fault, 1: otherwise)."""
    import grpc

    try:
        yield
    except grpc.RpcError as error:
        click.echo(f"{error.code().name}: {error.details()}", err=True)
        sys.exit(exit_code(error.code().name))


TOKEN_RANGE = TokenRangeType()

# A file the command reads: click reports a missing or unreadable path as a usage error naming it.
INPUT_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
OUTPUT_FILE = click.Path(dir_okay=False, writable=True, path_type=Path)


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """Record `--verbose` in the context's shared `meta`, where the top-level error handler reads it."""
    if value:
        ctx.meta["switchyard.verbose"] = True


def verbose_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--verbose`: show the traceback of an error instead of its one-line message."""
    return click.option(
        "--verbose",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbose,
        help="On an error, also print the traceback.",
    )(command)


def is_verbose(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("switchyard.verbose"))


def drop_incomplete_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--drop-incomplete`: skip tokens a .jsonl trace lacks some layer's record for."""
    return click.option(
        "--drop-incomplete", is_flag=True,
        help="For .jsonl traces: leave out tokens that lack a record for some layer instead of failing.",
    )(command)


def adaptive_memory_option(planner: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--adaptive-memory/--fixed-memory` (`placement.windows.planning_stats`): whether `planner` (the
    subject of the help's sentence) chooses its memory by forecast. The command receives
    `adaptive_memory`."""
    longer = "; or ".join(f"the last {history} windows, each older one weighted {decay:g} of the next"
                         for history, decay in LONGER_MEMORIES)
    return click.option(
        "--adaptive-memory/--fixed-memory", default=ADAPTIVE_MEMORY, show_default=True,
        help=f"{planner} on the history and decay above or on a longer memory ({longer}), whichever "
             "forecasts the past windows' expert load best (docs/placement.md, \"Memory chosen by forecast\"); "
             "--fixed-memory: always on the history and decay above.",
    )


def balance_feedback_option(planner: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--balance-feedback/--no-balance-feedback` (`placement.feedback`): whether `planner` (the subject of
    the help's sentence) prices affinity's overload by its served balance. The command receives
    `balance_feedback`."""
    feedback = BalanceFeedback()
    return click.option(
        "--balance-feedback/--no-balance-feedback", default=BALANCE_FEEDBACK, show_default=True,
        help=f"{planner} affinity at the overload price its served balance sets: {feedback.step:g}x dearer after a "
             f"window its plan served more than {feedback.tolerance:g} less balanced than EPLB's plan on the same "
             f"statistics, {feedback.step:g}x cheaper after one more than {feedback.tolerance:g} better balanced, "
             f"from the model's price to {feedback.factor(feedback.max_level):g}x it (docs/placement.md, "
             "\"Balance feedback\"); --no-balance-feedback: at the model's price throughout.",
    )


def resampled_windows_option(planner: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--resampled-windows N` (`placement.windows.planning_stats`): `planner` (the subject of the help's
    sentence) plans on N windows drawn from the planning windows' runs of `--balance-tokens` tokens.
    The command receives `resampled_windows`."""
    return click.option(
        "--resampled-windows", type=click.IntRange(min=1), default=None, metavar="N",
        help=f"{planner} on N windows drawn with replacement from the planning windows' runs of --balance-tokens "
             "tokens, each as many runs as a window holds, instead of on the planning windows themselves: "
             "affinity then holds its cap on other draws of the traffic it plans on "
             "(docs/placement-experiments.md, \"The cap on resampled windows\"). Needs --balance-tokens.",
    )


def check_resampled_options(resampled_windows: int | None, balance_tokens: int | None) -> None:
    """`--resampled-windows` draws from the runs of `--balance-tokens`: a `PlacementError` naming both
    options when it is given without them (`placement.windows.check_resampled`)."""
    check_resampled(resampled_windows, balance_tokens, name="--resampled-windows", runs_name="--balance-tokens")


def ray_cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--nodes`, `--address` and `--gpus-per-node` of the commands that serve a model on Ray (`serve`,
    `generate --model`); the command receives `nodes`, `address` and `workers_per_node`."""
    for option in reversed((
        click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Plan nodes; without --address, simulated Ray nodes on this machine."),
        click.option("--address", default=None, help="Join this Ray cluster (ray://... or HOST:PORT) instead."),
        click.option("--gpus-per-node", "--workers-per-node", "workers_per_node", type=click.IntRange(min=1),
                     default=1, show_default=True,
                     help="Expert workers (GPUs) per node; --workers-per-node is its old name."),
    )):
        command = option(command)
    return command


def topology_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--nodes` and `--gpus-per-node`, or `--topology FILE` (the JSON of `switchyard cluster topology
    --out`, or a plan) in their place; and `--slots-per-gpu`. The command receives `nodes` and
    `gpus_per_node` either way."""

    @functools.wraps(command)
    def resolved(*args: Any, topology_file: Path | None, **kwargs: Any) -> Any:
        kwargs["nodes"], kwargs["gpus_per_node"] = _topology_sizes(kwargs["nodes"], kwargs["gpus_per_node"],
                                                                   topology_file)
        return command(*args, **kwargs)

    for option in reversed((
        click.option("--nodes", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Number of nodes (N)."),
        click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, metavar="G",
                     help="GPUs (expert workers) per node."),
        click.option("--topology", "topology_file", type=INPUT_FILE, default=None,
                     help="Take N and G from this JSON file (`switchyard cluster topology --out`, or a plan)."),
        click.option("--slots-per-gpu", type=click.IntRange(min=1), default=None, metavar="S",
                     help="Expert slots per GPU; slots beyond one per expert hold redundant replicas. "
                          "Default: experts / GPUs."),
    )):
        resolved = option(resolved)
    return resolved


def _topology_sizes(nodes: int | None, gpus_per_node: int | None, topology_file: Path | None) -> tuple[int, int]:
    """`(nodes, gpus_per_node)` from the options or the file; a usage error unless exactly one is given."""
    from switchyard.cluster.kubernetes.topology import read_topology_file

    if topology_file is not None:
        if nodes is not None or gpus_per_node is not None:
            raise UserError("give either --topology or --nodes and --gpus-per-node, not both")
        return read_topology_file(topology_file)  # a TopologyError: one line, exit 2
    if nodes is None or gpus_per_node is None:
        raise UserError("give --nodes and --gpus-per-node, or --topology FILE")
    return nodes, gpus_per_node

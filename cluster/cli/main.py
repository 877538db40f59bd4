"""The `switchyard` command: parse, call the library, format, print.

Commands live in one module per group (`placement`, `trace`, `model`/`generate`, `serve`); this module
is the root and the one place errors become exit codes. Input that click can check (paths, ranges,
choices) is rejected while parsing, with a usage error and exit code 2. Every other error a user can
act on is a `SwitchyardError` (`switchyard.cluster.errors`); it is caught here and printed as one line
`Error: ...` with `exit_code(error.status)`: 2 for bad input (file contents, shapes, ids, topologies,
checkpoints), 1 for a cluster or store that cannot answer. Any other exception is a bug and keeps its
traceback. (Commands that call a gateway print a gRPC error as `STATUS_NAME: message` with the same
exit codes, `params.grpc_errors_exit`.)
"""

from __future__ import annotations

import traceback
from typing import Any

import click

from switchyard.cluster.cli.cluster import cluster
from switchyard.cluster.cli.dashboard import register as register_dashboard
from switchyard.cluster.cli.params import is_verbose, verbose_option
from switchyard.cluster.cli.placement import placement
from switchyard.cluster.cli.generate import register as register_runtime
from switchyard.cluster.cli.serve import register as register_serve
from switchyard.cluster.cli.trace import trace
from switchyard.cluster.errors import SwitchyardError, exit_code

class _Root(click.Group):
    """The root group: a `SwitchyardError` becomes one line `Error: ...` with `errors.exit_code` of its
    status (2 for bad input, 1 for a cluster or store that cannot answer); the traceback with --verbose."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwitchyardError as error:
            if is_verbose(ctx):
                traceback.print_exc()
            failure = click.ClickException(str(error))
            failure.exit_code = exit_code(error.status)
            raise failure from error


@click.group("switchyard", cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="switchyard")
@verbose_option
def main() -> None:
    """Switchyard: Mixture-of-Experts serving with traffic-driven expert placement.

    Generate with a model's experts spread over Ray workers, serve it over gRPC; plan, evaluate,
    compare and export expert placements from routing traces.
    """


main.add_command(placement)
main.add_command(trace)
main.add_command(cluster)
register_runtime(main)
register_serve(main)
register_dashboard(main)

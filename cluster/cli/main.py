"""The `switchyard` command: parse, call the library, format, print.

Commands live in one module per group (`cli_placement`, `cli_trace`, `cli_runtime`, `cli_serve`); this
module is the root and the one place errors become exit codes. Input that click can check (paths,
ranges, choices) is rejected while parsing, with a usage error and exit code 2. The library raises
`PlacementError` for everything else a user can get wrong (file contents, shapes, ids, topologies); it
is caught here and printed as one line `Error: ...` with exit code 2. Any other exception is a bug and
keeps its traceback. (`generate --server` prints a gRPC error as `STATUS_NAME: message` instead, see
`cli_serve`.)
"""

from __future__ import annotations

import traceback
from typing import Any

import click

from switchyard.cluster.cli.params import UserError, is_verbose, verbose_option
from switchyard.cluster.cli.placement import placement
from switchyard.cluster.cli.generate import register as register_runtime
from switchyard.cluster.cli.serve import register as register_serve
from switchyard.cluster.cli.trace import trace
from switchyard.placement.errors import PlacementError

class _Root(click.Group):
    """The root group: turns the library's `PlacementError` into a `UserError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PlacementError as error:
            if is_verbose(ctx):
                traceback.print_exc()
            raise UserError(str(error)) from error


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
register_runtime(main)
register_serve(main)

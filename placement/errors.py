"""The project's error base, and the placement library's one error type.

`SwitchyardError` is the base of every error a user or a caller can act on, in every package; it lives
here because `placement` is the package every other one imports (and it stays pure). Each error names
its gRPC status code in `status` (a name, so that no gRPC import is needed); the gateway turns an error
into that code and the CLI into an exit code, both in one place (`switchyard.cluster.errors`).

Everything a user can get wrong about a placement (a file, a shape, an id, a topology) raises
`PlacementError`, a `ValueError`, with a message that names the bad value. Internal invariants use
`assert`.
"""

import numpy as np


class SwitchyardError(Exception):
    """Base of the errors a user or caller can act on; the message names the cause and what to do."""

    status = "INVALID_ARGUMENT"
    """The gRPC status code name of this error (`grpc.StatusCode[status]`)."""


class PlacementError(SwitchyardError, ValueError):
    """Bad placement input: a trace, a plan, a topology or a file that cannot be used as given."""


def positive_int(name: str, value: object, error: type[SwitchyardError] = PlacementError) -> int:
    """`value` as an int if it is a positive integer (not a bool), else `error` naming `name` (the
    cluster passes its `InvalidSetting` for settings)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def unit_interval(name: str, value: object, error: type[SwitchyardError] = PlacementError) -> float:
    """`value` as a float if it is a number in [0, 1] (not a bool), else `error` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value <= 1:
        raise error(f"{name} must be in [0, 1], got {value!r}")
    return float(value)

"""The errors of the serving cluster, and the one mapping from an error to a gRPC status and an exit code.

Every error a caller can act on is a `SwitchyardError` (`switchyard.placement.errors`), which names its
gRPC status code in `status`: `PlacementError` and `CheckpointError` (bad input, INVALID_ARGUMENT),
the gateway's `ServingError`s below, the state store's `StateStoreError`s (`cluster.state.store`) and
`MigrationFailed` (`cluster.runtime.migration`). The gateway answers a call with `error.status`
(`gateway.status.status_of`); the CLI exits with `exit_code(error.status)`, and with the same
function for a gRPC error it received: 2 when the request was at fault, 1 otherwise.
"""

from __future__ import annotations

from switchyard.placement.errors import PlacementError, SwitchyardError
from switchyard.workers.errors import CheckpointError

__all__ = ["CheckpointError", "Conflict", "FailedPrecondition", "InvalidRequest", "InvalidSetting",
           "MigrationAborted", "NotReady", "PlacementError", "QueueFull", "ServingError", "SwitchyardError",
           "WorkerUnavailable", "exit_code"]

CALLER_AT_FAULT = frozenset({
    "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "OUT_OF_RANGE",
    "FAILED_PRECONDITION", "CANCELLED", "DEADLINE_EXCEEDED",
})
"""Status code names that mean the request (or its caller) was at fault."""


def exit_code(status: str) -> int:
    """The CLI's exit code for an error with gRPC status code name `status`: 2 when the caller was at
    fault (bad input, the same as click's usage errors), 1 otherwise (the cluster, the network)."""
    return 2 if status in CALLER_AT_FAULT else 1


class InvalidSetting(SwitchyardError, ValueError):
    """A setting (a CLI option, a configuration value) that cannot be used as given."""


class ServingError(SwitchyardError):
    """Base of the errors the gateway's backend raises for a call."""


class InvalidRequest(ServingError, ValueError):
    """Bad input: INVALID_ARGUMENT."""


class QueueFull(ServingError):
    """Every engine has its configured bound of requests in flight: RESOURCE_EXHAUSTED."""

    status = "RESOURCE_EXHAUSTED"


class NotReady(ServingError):
    """No engine can take the request (starting, draining, an engine gone): UNAVAILABLE."""

    status = "UNAVAILABLE"


class FailedPrecondition(ServingError):
    """The request is fine but the cluster is not in a state to answer it (no statistics yet)."""

    status = "FAILED_PRECONDITION"


class Conflict(ServingError):
    """ABORTED: the active epoch is not the one the caller expected, or another rebalance is running.
    Read the placement again and retry."""

    status = "ABORTED"


class MigrationAborted(ServingError):
    """ABORTED: the live migration failed and was undone; the runtime serves the plan it served before."""

    status = "ABORTED"


class WorkerUnavailable(ServingError):
    """UNAVAILABLE: an expert worker is gone, hung (no answer within the dispatch timeout) or down while
    it is replaced, and the request needed it. `worker` is its index (plan GPU); the engine that raised
    it is fine, and a retry is served once the worker is back (or by another replica)."""

    status = "UNAVAILABLE"

    def __init__(self, worker: int, message: str) -> None:
        super().__init__(message)
        self.worker = worker

    def __reduce__(self) -> tuple[type, tuple[int, str]]:  # crosses Ray as itself, with its worker
        return type(self), (self.worker, str(self))

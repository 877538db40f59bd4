"""The errors a gateway caller can act on: one kind per status code (`gateway.status_of` maps them).

Apart from `serving` so that the modules it builds on (`rebalancing`) raise the same kinds; import
them from either.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of the errors a caller can act on; the message names the cause."""


class InvalidRequest(ServingError, ValueError):
    """Bad input: INVALID_ARGUMENT."""


class QueueFull(ServingError):
    """Every engine has its configured bound of requests in flight: RESOURCE_EXHAUSTED."""


class NotReady(ServingError):
    """No engine can take the request (starting, draining, an engine gone): UNAVAILABLE."""


class FailedPrecondition(ServingError):
    """The request is fine but the cluster is not in a state to answer it (no statistics yet)."""


class Conflict(ServingError):
    """ABORTED: the active epoch is not the one the caller expected, or another rebalance is running.
    Read the placement again and retry."""


class MigrationAborted(ServingError):
    """ABORTED: the live migration failed and was undone; the runtime serves the plan it served before."""

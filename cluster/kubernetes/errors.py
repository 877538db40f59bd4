"""What can go wrong reading a topology from Kubernetes. Each kind is a `SwitchyardError` whose gRPC
status name decides the CLI's exit code (`cluster.errors.exit_code`): 2 when the caller can fix it,
1 when the cluster or the network is at fault (docs/cli.md, "Exit codes")."""

from __future__ import annotations

from switchyard.placement.errors import SwitchyardError


class KubernetesError(SwitchyardError):
    """Base: one line that names the object and what is missing."""

    status = "UNAVAILABLE"


class TopologyError(KubernetesError, ValueError):
    """The pods and nodes do not make a placement topology (no GPUs, mixed GPU counts, no pods)."""

    status = "INVALID_ARGUMENT"


class AccessDenied(KubernetesError):
    """The API server refused (401/403), or there is no configuration to reach it with."""

    status = "PERMISSION_DENIED"


class ClusterNotReady(KubernetesError):
    """Worker pods are pending, not ready, or fewer than expected: try again once they run."""


class ApiUnavailable(KubernetesError):
    """The API server could not be reached or answered with an error."""

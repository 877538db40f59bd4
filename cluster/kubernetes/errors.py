"""What can go wrong reading a topology from Kubernetes, each kind with the CLI exit code it maps to
(docs/cli.md: 2 when the caller can fix it, 1 when the cluster or the network is at fault)."""

from __future__ import annotations


class KubernetesError(Exception):
    """Base: one line that names the object and what is missing."""

    exit_code = 1


class TopologyError(KubernetesError, ValueError):
    """The pods and nodes do not make a placement topology (no GPUs, mixed GPU counts, no pods)."""

    exit_code = 2


class AccessDenied(KubernetesError):
    """The API server refused (401/403), or there is no configuration to reach it with."""

    exit_code = 2


class ClusterNotReady(KubernetesError):
    """Worker pods are pending, not ready, or fewer than expected: try again once they run."""


class ApiUnavailable(KubernetesError):
    """The API server could not be reached or answered with an error."""

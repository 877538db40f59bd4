"""The API calls behind `switchyard cluster topology`: one LIST of pods, one GET per node.

These are the only verbs the chart's RBAC grants (`list` pods in the namespace, `get` nodes). The
responses are kept as the API's JSON (`_preload_content=False`), the shape `topology.derive_topology`
reads and the tests record. The `kubernetes` client is imported only here, when called.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switchyard.cluster.kubernetes.errors import AccessDenied, ApiUnavailable, KubernetesError

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT_S = (5.0, 30.0)
"""(connect, read) seconds per API call: a dead API server fails the command, never hangs it."""


class KubernetesReader:
    """Reads pods and nodes with the configuration of this pod (in a cluster) or of a kubeconfig.

    kubeconfig: its path (default: `$KUBECONFIG` or `~/.kube/config`); context: one of its contexts.
    Inside a pod (`KUBERNETES_SERVICE_HOST` set) without a kubeconfig given, the pod's service
    account is used.
    """

    def __init__(self, kubeconfig: Path | None = None, context: str | None = None) -> None:
        import os

        from kubernetes import client, config

        self.default_namespace = "default"
        try:
            if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
                if IN_CLUSTER_NAMESPACE.is_file():
                    self.default_namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
            else:
                path = None if kubeconfig is None else str(kubeconfig)
                config.load_kube_config(config_file=path, context=context)
                contexts, active = config.list_kube_config_contexts(config_file=path)
                entry = next((c for c in contexts if c["name"] == context), active) if context else active
                self.default_namespace = entry.get("context", {}).get("namespace") or "default"
        except config.ConfigException as error:
            raise AccessDenied(f"no Kubernetes configuration: {error} (run inside a pod with a service "
                               "account, or give --kubeconfig / set KUBECONFIG)") from None
        configuration = client.Configuration.get_default_copy()
        configuration.retries = 1
        self.host = configuration.host
        self.api = client.CoreV1Api(client.ApiClient(configuration))

    def worker_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """`items` of the v1 PodList of `namespace` matching the label `selector`."""
        return self._call(lambda: self.api.list_namespaced_pod(namespace, label_selector=selector,
                                                               _preload_content=False,
                                                               _request_timeout=REQUEST_TIMEOUT_S),
                          f"list pods in namespace {namespace}")["items"]

    def nodes(self, names: set[str]) -> dict[str, dict[str, Any]]:
        """The v1 Node of each name."""
        return {name: self._call(lambda name=name: self.api.read_node(name, _preload_content=False,
                                                                      _request_timeout=REQUEST_TIMEOUT_S),
                                 f"get node {name}")
                for name in sorted(names)}

    def _call(self, request: Callable[[], Any], what: str) -> dict[str, Any]:
        """The JSON body of `request()`; API and network errors become one-line `KubernetesError`s."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = request()
            return json.loads(response.data)
        except ApiException as error:
            raise _api_error(error, what) from None
        except HTTPError as error:
            raise ApiUnavailable(f"cannot reach the Kubernetes API server at {self.host} to {what}: "
                                 f"{type(error).__name__}") from None
        except ValueError as error:
            raise ApiUnavailable(f"the API server's answer to {what} is not JSON: {error}") from None


def _api_error(error: Any, what: str) -> KubernetesError:
    """An `ApiException` as one line: 401/403 name the missing permission, the rest the status."""
    reason = error.reason or ""
    try:
        reason = json.loads(error.body).get("message") or reason
    except (TypeError, ValueError, AttributeError):
        pass
    if error.status in (401, 403):
        return AccessDenied(f"may not {what} ({error.status} {'Unauthorized' if error.status == 401 else 'Forbidden'}): "
                            f"{reason}; the chart's Role grants `list` on pods and its ClusterRole `get` on "
                            "nodes (rbac.create=true)")
    return ApiUnavailable(f"could not {what}: {error.status} {reason}")

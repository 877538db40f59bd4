"""From Kubernetes objects to a placement topology: pure functions on the API's JSON, no client.

Glossary: a *worker pod* is one pod of a RayCluster's GPU worker groups (the chart labels them
`app.kubernetes.io/component=worker`); it is one Ray node and so one Switchyard node: its GPUs
each hold an expert worker, and its engines reach them through shared memory. A *Kubernetes node*
is the machine a pod runs on; its zone (`topology.kubernetes.io/zone`) and GPU model
(`nvidia.com/gpu.product`, from NVIDIA's GPU feature discovery) are reported. Placement's
topology is `num_nodes x gpus_per_node`, so every worker pod must have the same number of GPUs.

Switchyard node indices follow (zone, Kubernetes node, pod name): nodes of one zone get adjacent
indices, and so do pods that share a machine.

Input shapes are those of the v1 API: `pods` the `items` of a `PodList`, `nodes` `Node` objects
keyed by name (camelCase keys, as `kubectl get -o json` prints them).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from switchyard.cluster.kubernetes.errors import ClusterNotReady, TopologyError

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
"""Zone labels, newest first (the second is the deprecated one older clouds still set)."""
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GROUP_LABEL = "ray.io/group"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class WorkerNode:
    """One worker pod: Switchyard node `index`, on Kubernetes node `node`, with `gpus` GPUs."""

    index: int
    pod: str
    node: str
    zone: str | None
    gpus: int
    gpu_product: str | None
    group: str | None


@dataclass(frozen=True)
class ClusterTopology:
    """The worker pods of a cluster, in Switchyard node order, and the uniform GPUs per node."""

    nodes: tuple[WorkerNode, ...]
    gpus_per_node: int

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def zones(self) -> dict[str, list[int]]:
        """Zone -> the Switchyard node indices in it (`"unknown"` for nodes without a zone label)."""
        zones: dict[str, list[int]] = {}
        for node in self.nodes:
            zones.setdefault(node.zone or "unknown", []).append(node.index)
        return zones

    def flags(self) -> str:
        """The `placement plan` / `compare` options of this topology."""
        return f"--nodes {self.num_nodes} --gpus-per-node {self.gpus_per_node}"

    def to_dict(self) -> dict[str, Any]:
        """JSON with `num_nodes` and `gpus_per_node` (what `placement plan --topology` reads) and the
        per-node details."""
        return {"num_nodes": self.num_nodes, "gpus_per_node": self.gpus_per_node,
                "zones": self.zones, "nodes": [asdict(node) for node in self.nodes]}


def derive_topology(pods: list[dict[str, Any]], nodes: dict[str, dict[str, Any]], *,
                    gpu_resource: str = DEFAULT_GPU_RESOURCE, gpus_per_node: int | None = None,
                    expect_nodes: int | None = None, where: str = "the selected pods") -> ClusterTopology:
    """The topology of the worker `pods` running on `nodes`.

    gpu_resource: the extended resource that counts GPUs.  gpus_per_node: for pods without GPUs, the
    expert workers (CPU slots, placement's "GPUs") per pod; None: every pod must request GPUs.  expect_nodes:
    the number of worker pods the deployment asks for (the chart's `nodes`); fewer running is
    `ClusterNotReady`.  where: names the selection in messages (namespace and selector).

    Raises `TopologyError` when the objects cannot make a topology (no pods, a pod without GPUs, a
    node without allocatable GPUs, different GPU counts) and `ClusterNotReady` when pods are not
    yet running and ready.
    """
    live = [pod for pod in pods if not pod.get("metadata", {}).get("deletionTimestamp")]
    if not live:
        raise TopologyError(f"no worker pods in {where}; check the namespace and the label selector")
    waiting = [f"{_name(pod)} ({_state(pod)})" for pod in live if _state(pod) != "ready"]
    if waiting:
        raise ClusterNotReady(f"{len(waiting)} of {len(live)} worker pod(s) in {where} are not ready: "
                              + ", ".join(sorted(waiting)))
    if expect_nodes is not None and len(live) != expect_nodes:
        raise ClusterNotReady(f"{len(live)} worker pod(s) run in {where}, the deployment expects {expect_nodes}")
    entries = []
    for pod in live:
        node_name = pod["spec"]["nodeName"]
        node = nodes.get(node_name)
        if node is None:
            raise TopologyError(f"pod {_name(pod)} runs on node {node_name}, which the API server did not return")
        gpus = pod_gpus(pod, gpu_resource)
        if gpus == 0:
            if gpus_per_node is None:
                raise TopologyError(f"pod {_name(pod)} requests no {gpu_resource}: it holds no GPU expert "
                                    "workers (select only the GPU worker pods, or give --gpus-per-node for "
                                    "CPU expert workers)")
            gpus = gpus_per_node
        else:
            allocatable = _quantity(node.get("status", {}).get("allocatable", {}).get(gpu_resource))
            if allocatable == 0:
                raise TopologyError(f"node {node_name} (pod {_name(pod)}) has no allocatable {gpu_resource}: "
                                    "is the GPU device plugin running on it?")
            if gpus > allocatable:
                raise TopologyError(f"pod {_name(pod)} has {gpus} {gpu_resource} but node {node_name} "
                                    f"allocates only {allocatable}")
        labels = node.get("metadata", {}).get("labels", {})
        entries.append((next((labels[key] for key in ZONE_LABELS if labels.get(key)), None), node_name,
                        _name(pod), gpus, labels.get(GPU_PRODUCT_LABEL),
                        pod.get("metadata", {}).get("labels", {}).get(GROUP_LABEL)))
    counts = Counter(entry[3] for entry in entries)
    if len(counts) > 1:
        detail = ", ".join(f"{entry[2]}: {entry[3]}" for entry in sorted(entries, key=lambda e: e[2]))
        raise TopologyError(f"worker pods have different GPU counts ({detail}); a placement topology needs "
                            "the same number on every node: select pods of one size")
    entries.sort(key=lambda entry: (entry[0] or "", entry[1], entry[2]))
    workers = tuple(WorkerNode(index, pod, node, zone, gpus, product, group)
                    for index, (zone, node, pod, gpus, product, group) in enumerate(entries))
    return ClusterTopology(workers, next(iter(counts)))


def pod_gpus(pod: dict[str, Any], gpu_resource: str = DEFAULT_GPU_RESOURCE) -> int:
    """GPUs of a pod: the sum over its containers of the resource's limit (extended resources have
    limit = request; a request alone counts too). Init containers run before and hold none after."""
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(gpu_resource, (resources.get("requests") or {}).get(gpu_resource))
        total += _quantity(value)
    return total


def read_topology_file(path: Path) -> tuple[int, int]:
    """`(num_nodes, gpus_per_node)` from a JSON file with those keys: the output of
    `switchyard cluster topology --out`, or a plan file. Raises `TopologyError` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise TopologyError(f"{path}: not a readable JSON file ({error})") from None
    sizes = []
    for key in ("num_nodes", "gpus_per_node"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TopologyError(f"{path}: {key} must be a positive integer, got {value!r} "
                                "(write the file with `switchyard cluster topology --out`)")
        sizes.append(value)
    return sizes[0], sizes[1]


def _name(pod: dict[str, Any]) -> str:
    return pod.get("metadata", {}).get("name", "?")


def _state(pod: dict[str, Any]) -> str:
    """`ready`, or why not: the phase (`Pending`, `Failed`, ...), `unscheduled` or `not ready`."""
    status = pod.get("status", {})
    phase = status.get("phase", "Unknown")
    if phase != "Running":
        return phase
    if not pod.get("spec", {}).get("nodeName"):
        return "unscheduled"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    return "ready" if ready else "not ready"


def _quantity(value: Any) -> int:
    """An integer resource quantity (`"4"`, `4`, or None for absent -> 0). GPUs are whole numbers;
    anything else is an API object this code does not understand."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        raise TopologyError(f"GPU quantity {value!r} is not a whole number") from None

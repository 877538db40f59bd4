"""`switchyard cluster topology`: the placement topology of a Switchyard deployment on Kubernetes.

Reads the worker pods (a label selector) and their nodes from the API server, derives nodes x GPUs
per node (`cluster.kubernetes.topology`), prints one row per node and the `placement plan` options,
and with `--out` writes the JSON that `placement plan --topology` reads. A `KubernetesError` is a
`SwitchyardError`: the root command prints it as one line `Error: ...` and exits 2 when the caller can
fix it (no permission, no configuration, pods that make no topology), 1 when the cluster is not ready
or unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from switchyard.cluster.cli.formatting import topology_table
from switchyard.cluster.cli.params import OUTPUT_FILE, verbose_option
from switchyard.cluster.kubernetes.topology import DEFAULT_GPU_RESOURCE, derive_topology

DEFAULT_SELECTOR = "app.kubernetes.io/name=switchyard,app.kubernetes.io/component=worker"
"""The chart's labels of GPU worker pods (every release in the namespace: add `app.kubernetes.io/instance=`)."""


@click.group("cluster")
def cluster() -> None:
    """A Switchyard deployment on Kubernetes (the Helm chart's RayService)."""


@cluster.command("topology")
@click.option("--namespace", "-n", default=None,
              help="Namespace of the pods. Default: the pod's own (in a cluster) or the kubeconfig context's.")
@click.option("--selector", "-l", default=DEFAULT_SELECTOR, show_default=True,
              help="Label selector of the GPU worker pods.")
@click.option("--gpu-resource", default=DEFAULT_GPU_RESOURCE, show_default=True,
              help="Extended resource that counts GPUs in pod limits and node allocatable.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None,
              help="For pods without GPUs: expert workers (CPU slots) per pod. Default: pods must have GPUs.")
@click.option("--expect-nodes", type=click.IntRange(min=1), default=None,
              help="Fail (exit 1) unless exactly this many worker pods run: the deployment's node count.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Kubeconfig file. Default: in-cluster service account, else $KUBECONFIG or ~/.kube/config.")
@click.option("--context", default=None, help="Kubeconfig context.")
@click.option("--out", type=OUTPUT_FILE, default=None,
              help="Write the topology as JSON (num_nodes, gpus_per_node, zones, nodes) for `placement plan --topology`.")
@click.option("--json", "as_json", is_flag=True, help="Also print the topology as one JSON object on the last line.")
@verbose_option
def topology(namespace: str | None, selector: str, gpu_resource: str, gpus_per_node: int | None,
             expect_nodes: int | None, kubeconfig: Path | None, context: str | None, out: Path | None,
             as_json: bool) -> None:
    """Derive the placement topology (nodes, GPUs per node, zones) from the worker pods and their nodes."""
    from switchyard.cluster.kubernetes.reader import KubernetesReader

    reader = KubernetesReader(kubeconfig, context)
    namespace = namespace or reader.default_namespace
    pods = reader.worker_pods(namespace, selector)
    nodes = reader.nodes({pod["spec"]["nodeName"] for pod in pods if pod.get("spec", {}).get("nodeName")})
    result = derive_topology(pods, nodes, gpu_resource=gpu_resource, gpus_per_node=gpus_per_node,
                             expect_nodes=expect_nodes, where=f"namespace {namespace} ({selector})")
    click.echo(topology_table(result))
    click.echo(f"topology: {result.num_nodes} node(s) x {result.gpus_per_node} GPU(s); "
               f"placement options: {result.flags()}")
    if out is not None:
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {out}")
    if as_json:
        click.echo(json.dumps(result.to_dict()))


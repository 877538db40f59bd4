"""`switchyard serve` as a process: listens, turns SERVING once loaded, serves, publishes routing statistics
to the state store (embedded, or Redis with `--redis`), serves the dashboard's metrics, drains on SIGTERM, exits 0; a bad or unreachable
state store stops it at once with one line."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from switchyard.cluster.cli.serve import serve
from switchyard.cluster.gateway.client import Client
from switchyard.cluster.settings import REDIS_URL_ENV
from switchyard.workers.checkpoints import init_checkpoint

pytestmark = pytest.mark.ray

SERVE = "from switchyard.cluster.cli.serve import serve; serve()"
REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT, NEW_TOKENS = [1, 2, 3], 3
FORWARDED = len(PROMPT) + NEW_TOKENS - 1  # tokens the engines count for the one request


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_checkpoint("qwen3-moe", "tiny", tmp_path_factory.mktemp("serve") / "qwen3", seed=1)


@contextlib.contextmanager
def _existing_cluster(num_nodes: int):
    """`--address` arguments for a running 2-node Ray cluster that serve joins (and leaves running)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(num_nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield ["--address", cluster.address, "--nodes", str(num_nodes)]
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("joins", [False, pytest.param(True, marks=pytest.mark.redis)],
                         ids=["ephemeral-cluster", "joins-address-with-redis"])
def test_serve_until_sigterm(model_dir, joins: bool, fresh_redis_store):
    if not joins:  # the embedded store, seen through GetStats and GetPlacement
        _serve_generate_and_stop(model_dir, [])
        return
    with fresh_redis_store("test-serve") as store, _existing_cluster(2) as cluster_args:
        store_args = ["--redis", REDIS_URL, "--deployment", store.deployment]
        _serve_generate_and_stop(model_dir, cluster_args + store_args)
        assert store.active_plan()[1] == 1
        assert store.window("time", 600).num_tokens == FORWARDED  # `stop` published the last entries


@pytest.mark.parametrize(("url", "code", "message"), [
    pytest.param("ftp://x", 2, "unsupported state store URL 'ftp://x'", id="bad-url"),
    pytest.param("redis://127.0.0.1:notaport", 2, "bad Redis URL", id="bad-port"),
    pytest.param("redis://127.0.0.1:1", 1, "the state store at redis://127.0.0.1:1 is unreachable", id="unreachable"),
])
@pytest.mark.parametrize("from_env", [False, True], ids=["option", "env"])
def test_bad_or_unreachable_store_is_one_line(model_dir, monkeypatch, url: str, code: int, message: str,
                                              from_env: bool):
    if from_env:
        monkeypatch.setenv(REDIS_URL_ENV, url)
    result = CliRunner().invoke(serve, ["--model", str(model_dir), *([] if from_env else ["--redis", url])])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert result.output.count("\n") == 1 and message in result.output


def test_bad_deployment_is_a_usage_error(model_dir):
    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--deployment", "a:b"])
    assert result.exit_code == 2 and "bad deployment name 'a:b'" in result.output


def _serve_generate_and_stop(model_dir, extra_args: list[str]) -> None:
    process = subprocess.Popen([sys.executable, "-c", SERVE, "--model", str(model_dir), "--port", "0",
                                "--stats-interval", "0.5", *extra_args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = ""
        while (match := re.search(r"gateway listening on 127\.0\.0\.1:(\d+)", log)) is None:
            line = process.stdout.readline()
            assert line, f"serve exited (code {process.wait()}) before listening:\n{log}"
            log += line
        with Client(f"127.0.0.1:{match.group(1)}") as client:
            deadline = time.monotonic() + 120
            while client.health() != "SERVING":
                assert time.monotonic() < deadline, "not SERVING after 120 s"
                time.sleep(0.5)
            assert len(client.generate(PROMPT, max_new_tokens=NEW_TOKENS).token_ids) == NEW_TOKENS
            assert client.placement().epoch == 1  # recorded at start
            while (stats := client.stats()).num_tokens < FORWARDED:  # published within --stats-interval
                assert time.monotonic() < deadline, f"{stats.num_tokens} of {FORWARDED} tokens published"
                time.sleep(0.2)
            assert stats.num_tokens == FORWARDED and stats.window_seconds == 60
        while (board := re.search(r"dashboard at (http://\S+) ", log)) is None:  # logged once attached
            line = process.stdout.readline()
            assert line, f"serve exited (code {process.wait()}) without a dashboard:\n{log}"
            log += line
        with urllib.request.urlopen(board.group(1) + "metrics", timeout=60) as response:
            assert "switchyard_requests_started_total 1.0" in response.read().decode()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, log + rest
        assert "draining" in rest and "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("args", "message"), [
    (["--auto-min-gain", "1.5"], "--auto-min-gain"), (["--auto-min-balancedness", "-0.1"], "--auto-min-balancedness"),
    (["--auto-interval", "0"], "--auto-interval"), (["--auto-policy", "fastest"], "--auto-policy"),
])
def test_bad_automatic_rebalance_options_are_one_line(model_dir, args: list[str], message: str):
    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--auto-rebalance", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1


def test_dashboard_port_in_use_is_one_line_before_ray_starts(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(serve, ["--model", str(model_dir), "--dashboard-port", str(port)])
    assert result.exit_code == 1 and f"the dashboard cannot listen on 127.0.0.1:{port}" in result.output
    assert result.output.count("\n") == 1

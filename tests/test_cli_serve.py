"""`switchyard serve` as a process: listens, turns SERVING once loaded, serves, publishes routing statistics
to the state store (embedded, or Redis with `--redis`), serves the dashboard's metrics, drains on SIGTERM, exits 0; a bad or unreachable
state store stops it at once with one line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
import transformers
from click.testing import CliRunner

from switchyard.cluster.cli.serve import serve
from switchyard.cluster.gateway.client import Client
from switchyard.cluster.settings import REDIS_URL_ENV
from switchyard.workers.checkpoints import init_checkpoint
from bench.ports import free_port
from waiting import wait_until

pytestmark = pytest.mark.ray

SERVE = "from switchyard.cluster.cli.serve import serve; serve()"
REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT, NEW_TOKENS = [1, 2, 3], 3
FORWARDED = len(PROMPT) + NEW_TOKENS - 1  # tokens the engines count for the one request


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_checkpoint("qwen3-moe", "tiny", tmp_path_factory.mktemp("serve") / "qwen3", seed=1)


@pytest.mark.parametrize("joins", [False, pytest.param(True, marks=pytest.mark.redis)],
                         ids=["ephemeral-cluster", "joins-address-with-redis"])
def test_serve_until_sigterm(request, model_dir, joins: bool, fresh_redis_store):
    """Without --address serve starts (and stops) its own cluster; with it, serve joins the session's cluster
    (a process's actors die with it, so a failed serve leaves nothing behind there). Both plan their
    rebalances on 8 windows drawn from runs of 4 tokens of store entries (--balance-tokens,
    --resampled-windows), the first as its log says."""
    planning_args = ["--balance-tokens", "4", "--resampled-windows", "8"]
    if not joins:  # the embedded store, seen through GetStats and GetPlacement
        log = _serve_generate_and_stop(model_dir, planning_args)
        assert "planning on the last 1 window(s), each older one weighted 0.5 of the next, as 8 windows drawn " \
               "from their runs of 4 tokens (1 window(s) read)" in log
        return
    cluster_args = ["--address", request.getfixturevalue("ray_address"), "--nodes", "2"]
    with fresh_redis_store("test-serve") as store:
        store_args = ["--redis", REDIS_URL, "--deployment", store.deployment, *planning_args]
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


def _serve_generate_and_stop(model_dir, extra_args: list[str]) -> str:
    """Serve, generate, read the statistics, dry-run a rebalance and stop on SIGTERM; the serve's output."""
    process = subprocess.Popen([sys.executable, "-c", SERVE, "--model", str(model_dir), "--port", "0",
                                "--stats-interval", "0.5", *extra_args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = ThreadPoolExecutor(1)
    try:
        log = ""
        while (match := re.search(r"gateway listening on 127\.0\.0\.1:(\d+)", log)) is None:
            line = process.stdout.readline()
            assert line, f"serve exited (code {process.wait()}) before listening:\n{log}"
            log += line
        with Client(f"127.0.0.1:{match.group(1)}") as client:
            wait_until(lambda: client.health() == "SERVING", "SERVING", timeout_s=120, poll_s=0.5)
            assert len(client.generate(PROMPT, max_new_tokens=NEW_TOKENS).token_ids) == NEW_TOKENS
            assert client.placement().epoch == 1  # recorded at start
            stats = wait_until(lambda: (s := client.stats()).num_tokens >= FORWARDED and s,
                               f"{FORWARDED} tokens published (within --stats-interval)", timeout_s=120)
            assert stats.num_tokens == FORWARDED and stats.window_seconds == 60
            proposal = client.rebalance(policy="affinity")  # a dry run on the planning windows
            assert proposal.window_tokens == FORWARDED and not proposal.applied
        while (board := re.search(r"dashboard at (http://\S+) ", log)) is None:  # logged once attached
            line = process.stdout.readline()
            assert line, f"serve exited (code {process.wait()}) without a dashboard:\n{log}"
            log += line
        with urllib.request.urlopen(board.group(1) + "metrics", timeout=60) as response:
            assert "switchyard_requests_started_total 1.0" in response.read().decode()
        process.send_signal(signal.SIGTERM)
        # read() goes through what readline() buffered already, which communicate() would skip
        rest = reader.submit(process.stdout.read).result(timeout=60)
        assert process.wait(timeout=60) == 0, log + rest
        assert "draining" in rest and "stopped" in rest
        return log + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.shutdown(wait=False)


def test_serve_ray_serve_until_sigterm(model_dir):
    """`serve --ray-serve` deploys the chart's Serve application on its own 2-node cluster: health turns
    SERVING, Generate gives transformers' greedy tokens, SIGTERM deletes the application and exits 0."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVE, "--model", str(model_dir), "--ray-serve",
                                "--nodes", "2", "--port", str(port), "--no-dashboard"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            wait_until(lambda: process.poll() is not None or _health(client) == "SERVING",
                       "the Serve application's gateway SERVING", timeout_s=240, poll_s=0.5)
            assert process.poll() is None, process.communicate()[0]
            assert list(client.generate(PROMPT, max_new_tokens=NEW_TOKENS).token_ids) == _greedy(model_dir)
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=120)
        assert process.returncode == 0, log
        assert "Ray Serve application" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _health(client: Client) -> str:
    """The gateway's health, "" while nothing listens yet."""
    try:
        return client.health()
    except grpc.RpcError:
        return ""


def _greedy(model_dir) -> list[int]:
    """transformers' greedy tokens of `PROMPT`."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        output = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                do_sample=False)
    return output[0, len(PROMPT):].tolist()


@pytest.mark.parametrize(("args", "message"), [
    (["--auto-min-gain", "1.5"], "--auto-min-gain"), (["--auto-min-balancedness", "-0.1"], "--auto-min-balancedness"),
    (["--auto-interval", "0"], "--auto-interval"), (["--auto-policy", "fastest"], "--auto-policy"),
])
def test_bad_automatic_rebalance_options_are_one_line(model_dir, args: list[str], message: str):
    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--auto-rebalance", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--stats-history", "0"], "--stats-history"), (["--stats-decay", "1.5"], "--stats-decay"),
    (["--balance-tokens", "0"], "--balance-tokens"), (["--cluster", "h200"], "--cluster"),
])
def test_bad_planning_window_options_are_one_line(model_dir, args: list[str], message: str):
    result = CliRunner().invoke(serve, ["--model", str(model_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_resampled_windows_without_balance_tokens_is_one_line(model_dir):
    """`--resampled-windows` draws from the runs of `--balance-tokens`: without them, exit code 2 and one
    line naming both, before Ray starts."""
    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--resampled-windows", "8"])
    assert result.exit_code == 2, result.output
    assert "--resampled-windows draws windows from the runs of --balance-tokens tokens: give --balance-tokens too" \
        in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(serve, ["--model", str(model_dir), "--balance-tokens", "64", "--resampled-windows", "0"])
    assert result.exit_code == 2 and "--resampled-windows" in result.output, result.output


def test_dashboard_port_in_use_is_one_line_before_ray_starts(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(serve, ["--model", str(model_dir), "--dashboard-port", str(port)])
    assert result.exit_code == 1 and f"the dashboard cannot listen on 127.0.0.1:{port}" in result.output
    assert result.output.count("\n") == 1

"""`switchyard serve` as a process: listens, turns SERVING once loaded, serves, drains on SIGTERM, exits 0."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time

import pytest

from switchyard.cluster.client import Client
from switchyard.workers.checkpoints import init_checkpoint

pytestmark = pytest.mark.ray

SERVE = "from switchyard.cluster.cli_serve import serve; serve()"


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


@pytest.mark.parametrize("joins", [False, True], ids=["ephemeral-cluster", "joins-address"])
def test_serve_until_sigterm(tmp_path, joins: bool):
    model_dir = init_checkpoint("qwen3-moe", "tiny", tmp_path / "qwen3", seed=1)
    with _existing_cluster(2) if joins else contextlib.nullcontext([]) as cluster_args:
        _serve_generate_and_stop(model_dir, cluster_args)


def _serve_generate_and_stop(model_dir, cluster_args: list[str]) -> None:
    process = subprocess.Popen([sys.executable, "-c", SERVE, "--model", str(model_dir), "--port", "0",
                                *cluster_args],
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
            assert len(client.generate([1, 2, 3], max_new_tokens=3).token_ids) == 3
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, log + rest
        assert "draining" in rest and "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

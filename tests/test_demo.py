"""`switchyard.cluster.cli.demo` (`make run`): a server that never serves fails fast; the server is always stopped.

The whole demo against a real server runs as `make run`; `tests/test_cli_serve.py` covers `serve` itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bench.ports import free_port
from switchyard.cluster.cli.demo import main, stop, wait_until_serving


def test_a_server_that_exits_is_reported():
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(SystemExit, match="the server exited with code 3 before serving"):
        wait_until_serving(exited, "127.0.0.1:1", timeout_s=30)


def test_a_server_that_never_serves_times_out():
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(SystemExit, match="was not SERVING after 1 s"):
            wait_until_serving(silent, "127.0.0.1:1", timeout_s=1)
    finally:
        assert stop(silent, grace_s=10) == -signal.SIGTERM


def test_bad_model_exits_with_the_servers_error(tmp_path, capfd):
    with pytest.raises(SystemExit, match="the server exited with code 2 before serving"):
        main(["--model", str(tmp_path / "none"), "--port", "0", "--", "--prompt-ids", "1"])
    assert "no config.json" in capfd.readouterr().err


@pytest.mark.ray
def test_the_demo_generates_rebalances_live_and_generates_the_same_again(tmp_path, capfd):
    """`make run`'s job end to end: serve, generate, rebalance with --apply --yes, generate again."""
    from switchyard.workers.checkpoints import init_checkpoint

    model_dir = init_checkpoint("mixtral", "tiny", tmp_path / "mixtral-tiny", skew=1.0, seed=0)
    code = main(["--model", str(model_dir), "--port", str(free_port()), "--rebalance", "--",
                 "--prompt-ids", "1,2,3,4", "--prompt-ids", "5,6,7", "--max-new-tokens", "8"])
    output = capfd.readouterr().out
    assert code == 0, output
    outputs = [line for line in output.splitlines() if line and line[0].isdigit()]
    assert len(outputs) == 4 and outputs[:2] == outputs[2:]  # two prompts, before and after the rebalance
    assert "applied: epoch 2 is active on every engine" in output or "nothing to move" in output

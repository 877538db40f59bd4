"""`make run`: serve a model with `switchyard serve`, ask it with `switchyard generate --server`,
rebalance it live with `switchyard placement rebalance --apply`, stop it.

    python -m switchyard.cluster.cli.demo --model build/demo/mixtral-tiny --nodes 2 --port 50051 --rebalance \\
        -- --prompt-ids 1,2,3,4 --prompt-ids 5,6,7 --max-new-tokens 16 --json

Starts the server as a child process, waits (at most `--ready-timeout` seconds) until its health is
SERVING, runs `switchyard generate --server HOST:PORT` with the arguments after `--`. With
`--rebalance`, once the engines have published the routing statistics of those requests, it runs
`switchyard placement rebalance --server HOST:PORT --apply --yes`: the proposal and its predicted gain,
then the live move, then generate once more on the new plan. Finally it sends the server SIGTERM (it
drains and exits) and waits for it; the server never outlives this script. The exit code is the first
failing command's, or 1 when the server did not come up or did not stop.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from switchyard.cluster.gateway.client import Client

STATS_INTERVAL_S = 1.0  # the server's statistics interval: a rebalance right after generating sees them


def switchyard_command() -> list[str]:
    """The `switchyard` executable beside this interpreter (a venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "switchyard"
    found = str(beside) if beside.is_file() else shutil.which("switchyard")
    if found is None:
        raise SystemExit("demo: no `switchyard` executable beside the interpreter or on PATH; "
                         "install the project (make setup)")
    return [found]


def wait_until_serving(server: subprocess.Popen[bytes], target: str, timeout_s: float) -> None:
    """Poll the health service until SERVING; `SystemExit` if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    with Client(target) as client:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"demo: the server exited with code {server.returncode} before serving")
            try:
                if client.health() == "SERVING":
                    return
            except grpc.RpcError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the server at {target} was not SERVING after {timeout_s:.0f} s")
            time.sleep(0.5)


def stop(server: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM the server and wait for its drain; SIGKILL after `grace_s` more seconds. Its exit code."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            return server.wait(grace_s)
        except subprocess.TimeoutExpired:
            print(f"demo: the server did not stop within {grace_s:.0f} s; killing it", file=sys.stderr)
            server.kill()
    return server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Checkpoint directory to serve.")
    parser.add_argument("--nodes", type=int, default=2, help="Simulated Ray nodes.")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="Seconds to wait for SERVING.")
    parser.add_argument("--stop-timeout", type=float, default=60.0, help="Seconds to wait for the drain.")
    parser.add_argument("--rebalance", action="store_true",
                        help="After generating, rebalance live from the statistics, then generate again.")
    parser.add_argument("generate_args", nargs="*", help="Arguments of `switchyard generate` (after --).")
    args = parser.parse_args(argv)
    target = f"127.0.0.1:{args.port}"
    switchyard = switchyard_command()
    serve = switchyard + ["serve", "--model", args.model, "--nodes", str(args.nodes), "--port", str(args.port),
                          "--stats-interval", str(STATS_INTERVAL_S)]
    generate = switchyard + ["generate", "--server", target, *args.generate_args]
    rebalance = switchyard + ["placement", "rebalance", "--server", target, "--apply", "--yes"]
    steps = [generate] + ([rebalance, generate] if args.rebalance else [])
    print("$", " ".join(serve[1:]), "&", flush=True)
    server = subprocess.Popen(serve)
    try:
        wait_until_serving(server, target, args.ready_timeout)
        code = 0
        for step in steps:
            if step is rebalance:
                time.sleep(STATS_INTERVAL_S + 0.5)  # the engines publish the statistics it plans on
            print("$", " ".join(step[1:]), flush=True)
            code = subprocess.run(step).returncode
            if code != 0:
                break
    finally:
        stopped = stop(server, args.stop_timeout)
    if stopped != 0:
        print(f"demo: the server exited with code {stopped}", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    # A SIGTERM to this script (make killed) unwinds through `main`'s `finally` too: the server goes with it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())

"""Ray's control plane under sustained load: the GCS server's memory with Ray's default task-event
buffer and with Switchyard's (`Settings.ray_task_events_max_in_gcs`).

    python -m bench.gcs_memory --seconds 150 --out docs/benchmarks/gcs_memory.md

Each request through the gateway runs ~20 Ray tasks (submit, polls, expert dispatch to the other
node's worker); the GCS keeps an event record per task, up to `task_events_max_num_task_in_gcs`
(Ray's default 100 000). For each setting: a fresh 2-node local cluster, the runtime and a gateway
(`tiny` Mixtral), `--clients` clients streaming greedy requests of `--new-tokens` for `--seconds`;
the gcs_server's RSS is read every `--every` seconds. Reported: RSS after warm-up and at the end, the
growth, requests served.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from bench.report import describe_checkpoint, main, provenance

from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.cluster.gateway.client import Client
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.runtime.runtime import Runtime, local_cluster, ray_system_config
from switchyard.cluster.settings import DEFAULTS
from switchyard.workers.checkpoints import load_spec

NODES, PROMPT_LEN = 2, 16
RAY_DEFAULT = 100_000  # Ray 2.60's task_events_max_num_task_in_gcs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=150.0, help="Load per setting.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--every", type=float, default=10.0, help="Seconds between two RSS readings.")


def _gcs_rss_mib() -> float:
    """RSS of the gcs_server this process started (the local cluster's head)."""
    (gcs,) = [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.name() == "gcs_server"]
    return gcs.memory_info().rss / 2**20


def soak(model_dir: Path, system_config: dict, args: argparse.Namespace) -> dict:
    """One setting: RSS readings `[(seconds, MiB)]` and requests served."""
    spec = load_spec(model_dir)
    with local_cluster(NODES, system_config):
        runtime = Runtime.start(model_dir, num_nodes=NODES, workers_per_node=1)
        gateway = BackgroundGateway(GatewayConfig(port=0))
        target = f"127.0.0.1:{gateway.start()}"
        gateway.attach(RuntimeBackend(runtime))
        served, stop = [0], threading.Event()

        def client_loop(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with Client(target, timeout_s=120) as client:
                while not stop.is_set():
                    prompt = rng.integers(0, spec.vocab_size, PROMPT_LEN).tolist()
                    client.generate(prompt, max_new_tokens=args.new_tokens)
                    served[0] += 1

        try:
            with Client(target) as warm:
                warm.generate([1, 2, 3], max_new_tokens=2)
            threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            start, readings = time.monotonic(), []
            while (elapsed := time.monotonic() - start) < args.seconds:
                readings.append((elapsed, _gcs_rss_mib()))
                time.sleep(min(args.every, args.seconds - elapsed))
            readings.append((time.monotonic() - start, _gcs_rss_mib()))
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            gateway.drain(0)
            runtime.shutdown()
    return {"readings": readings, "served": served[0], "spec": spec}


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    runs = {f"Ray's default ({RAY_DEFAULT:,} task events)": soak(model_dir, {}, args),
            f"Switchyard's ({DEFAULTS.ray_task_events_max_in_gcs:,} task events)": soak(model_dir, ray_system_config(),
                                                                                       args)}
    rows, series = [], []
    for name, run in runs.items():
        readings = run["readings"]
        first, last = readings[0][1], readings[-1][1]
        rows.append([name, str(run["served"]), f"{first:.0f}", f"{last:.0f}", f"{last - first:+.0f}",
                     f"{(last - first) / max(run['served'], 1) * 1000:.1f}"])
        series.append([name, ", ".join(f"{mib:.0f}" for _, mib in readings)])
    spec = next(iter(runs.values()))["spec"]
    text = "\n".join([
        "# Ray's GCS memory under sustained load",
        "",
        provenance(command),
        "",
        f"{describe_checkpoint(spec)} on {NODES} simulated Ray nodes (1 worker, 1 engine each) behind the gateway; "
        f"{args.clients} clients stream greedy requests ({PROMPT_LEN}-id prompts, {args.new_tokens} new tokens) "
        f"for {args.seconds:g} s per setting, each setting on a fresh cluster.",
        "",
        markdown_table(["task_events_max_num_task_in_gcs", "requests", "gcs_server RSS after warm-up, MiB",
                        "at the end, MiB", "growth, MiB", "MiB per 1000 requests"], rows),
        "",
        f"Readings every {args.every:g} s (MiB):",
        "",
        markdown_table(["setting", "gcs_server RSS"], series),
        "",
        "The GCS keeps one event record per Ray task until its buffer holds `task_events_max_num_task_in_gcs` "
        "of them, then drops the oldest; at Ray's default it grows for the first 100 000 tasks, longer than this run. "
        "`local_cluster` sets Switchyard's bound through Ray's `_system_config`; the Helm chart sets "
        "`RAY_task_events_max_num_task_in_gcs` in every Ray container (`ray.taskEventsMaxInGcs`; docs/reliability.md).",
    ])
    return text, True


if __name__ == "__main__":
    main(__doc__, "bench.gcs_memory", "tiny", add_arguments, measure)

"""Gateway benchmark: what the gRPC gateway adds over calling the runtime directly.

    python -m bench.gateway --out docs/benchmarks/gateway.md

One run, one checkpoint (a fresh `tiny` Mixtral unless `--model` is given) on 2 simulated Ray nodes
(1 expert worker and 1 engine each). For 1, 8 and 32 concurrent clients, each client sends
`--requests` prompts of 16 random ids one after another (greedy, `--new-tokens` each, no early stop),
either straight to the runtime (`Runtime.generate` of one prompt, from a thread per client) or through
the gateway on 127.0.0.1 (a `Client` per thread, streaming). Reported: generated tokens per second over
the whole wave, p50/p99 request latency, and the gateway's p50 time to first token. Outputs of both
paths are checked equal.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench.report import describe_checkpoint, main, provenance

from switchyard.cluster.gateway.client import Client
from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.runtime.runtime import Runtime, local_cluster
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.workers.checkpoints import load_spec

PROMPT_LEN = 16
NODES = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="1,8,32", help="Comma-separated numbers of concurrent clients.")
    parser.add_argument("--requests", type=int, default=3, help="Requests per client, one after another.")
    parser.add_argument("--new-tokens", type=int, default=32)


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    report = run(model_dir, [int(c) for c in args.clients.split(",")], args.requests, args.new_tokens)
    return render(report, command), True


def _wave(clients: int, prompts: list[list[list[int]]], call) -> tuple[float, list[float], list[float], list]:
    """Every client runs its prompts in order; returns wall seconds, latencies, first-token times, outputs."""

    def one_client(own: list[list[int]]) -> list[tuple[float, float, list[int]]]:
        return [call(prompt) for prompt in own]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        per_client = list(pool.map(one_client, prompts))
    wall = time.perf_counter() - start
    flat = [item for own in per_client for item in own]
    return wall, [f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat]


def run(model_dir: Path, client_counts: list[int], requests: int, new_tokens: int) -> dict:
    spec = load_spec(model_dir)
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=new_tokens)
    rows = []
    with local_cluster(NODES):
        runtime = Runtime.start(model_dir, num_nodes=NODES, workers_per_node=1)
        gateway = BackgroundGateway(GatewayConfig(port=0))
        target = f"127.0.0.1:{gateway.start()}"
        gateway.attach(RuntimeBackend(runtime))
        clients_by_thread: dict[int, Client] = {}

        def direct(prompt: list[int]) -> tuple[float, float, list[int]]:
            start = time.perf_counter()
            (output,) = runtime.generate([prompt], params)
            latency = time.perf_counter() - start
            return latency, float("nan"), output

        def through_gateway(prompt: list[int]) -> tuple[float, float, list[int]]:
            import threading

            client = clients_by_thread.setdefault(threading.get_ident(), Client(target))
            start, first, output = time.perf_counter(), None, []
            for tokens in client.stream(prompt, max_new_tokens=new_tokens):
                first = first or time.perf_counter()
                output += tokens
            return time.perf_counter() - start, first - start, output

        try:
            direct([1, 2, 3])  # warm-up: the first forward of each engine
            through_gateway([1, 2, 3])
            for clients in client_counts:
                prompts = rng.integers(0, spec.vocab_size, size=(clients, requests, PROMPT_LEN)).tolist()
                outputs = {}
                for path, call in (("direct runtime", direct), ("gateway (gRPC stream)", through_gateway)):
                    wall, latencies, firsts, outputs[path] = _wave(clients, prompts, call)
                    rows.append({"path": path, "clients": clients,
                                 "tokens_per_s": clients * requests * new_tokens / wall,
                                 "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
                                 "ttft_p50": float(np.nanpercentile(firsts, 50)) if path.startswith("gateway") else None})
                assert outputs["direct runtime"] == outputs["gateway (gRPC stream)"], "the two paths disagree"
        finally:
            for client in clients_by_thread.values():
                client.close()
            gateway.drain(0)
            runtime.shutdown()
    return {"spec": spec, "rows": rows, "requests": requests, "new_tokens": new_tokens}


def render(report: dict, command: str) -> str:
    spec, rows = report["spec"], report["rows"]
    table = [[row["path"], str(row["clients"]), f"{row['tokens_per_s']:.1f}", f"{1e3 * row['p50']:.0f}",
              f"{1e3 * row['p99']:.0f}", "" if row["ttft_p50"] is None else f"{1e3 * row['ttft_p50']:.0f}"]
             for row in rows]
    overhead = []
    for clients in sorted({row["clients"] for row in rows}):
        pair = {row["path"]: row for row in rows if row["clients"] == clients}
        direct, gateway = pair["direct runtime"], pair["gateway (gRPC stream)"]
        overhead.append([str(clients), f"{1e3 * (gateway['p50'] - direct['p50']):+.0f}",
                         f"{gateway['p50'] / direct['p50'] - 1:+.0%}",
                         f"{gateway['tokens_per_s'] / direct['tokens_per_s'] - 1:+.0%}"])
    return "\n".join([
        "# Gateway benchmark",
        "",
        provenance(command),
        "",
        f"{describe_checkpoint(spec)}, on {NODES} simulated Ray nodes (1 worker, "
        f"1 engine each). Every client sends {report['requests']} prompts of {PROMPT_LEN} random ids one after "
        f"another; {report['new_tokens']} new tokens each, greedy. Both paths produced the same tokens.",
        "",
        "## Throughput and latency",
        "",
        markdown_table(["path", "clients", "tokens/s", "p50 ms", "p99 ms", "first token p50 ms"], table),
        "",
        "## What the gateway adds",
        "",
        markdown_table(["clients", "p50 latency added, ms", "p50 latency added", "throughput change"], overhead),
        "",
        "The direct path is `Runtime.generate` of one prompt per call (the engine returns the whole output "
        "at once); the gateway path streams over gRPC: the gateway picks the engine with the fewest requests "
        "in flight and polls each busy engine with one `Engine.poll` Ray call per step for all its requests. "
        "The clients, the gateway and the Ray driver run in the benchmark process, on the same 2 cores as the engines and workers, so client and server CPU time both count against the gateway path; the machine is shared with other jobs, and two runs differed by up to 40 points in the 8-client row.",
    ])


if __name__ == "__main__":
    main(__doc__, "bench.gateway", "tiny", add_arguments, measure)

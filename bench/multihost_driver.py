"""The part of `bench.multihost` that runs inside the head node's namespace, as a Ray driver.

    python -m bench.multihost_driver CONFIG.json     (started by bench.multihost; prints one JSON line)

CONFIG: {"address", "model", "nodes", "workers_per_node", "trace" (replayed: its second half),
"plans": {name: plan JSON path}, "mode": "points" or "rebalance", and
  points:    "batches", "prompt_len", "new_tokens": for every plan and batch, one batch of prompts
             served at once (greedy, no early stop), replaying the served rows from their start;
  rebalance: "from", "to" (plan names), "concurrency", "seconds", "switch_at" (seconds), "window":
             requests kept in flight for `seconds`, a live migration to "to" at `switch_at`.}
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import ray

from bench.runtime import stream_arrivals
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.runtime.migration import migrate
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.placement.formats import load_plan, load_trace
from switchyard.placement.trace import RoutingTrace


def points(runtime: Runtime, config: dict, replay: RoutingTrace) -> list[dict]:
    """One measurement per plan and batch size: rate, inter-token latency, traffic, tokens replayed."""
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=config["new_tokens"])
    results = []
    for name, path in config["plans"].items():
        for batch in config["batches"]:
            runtime.load(config["model"], load_plan(path), replay=replay)  # counters and replay from zero
            prompts = rng.integers(0, runtime.spec.vocab_size, size=(batch, config["prompt_len"])).tolist()
            start, arrivals = stream_arrivals(runtime, prompts, params)
            elapsed = max(times[-1] for times in arrivals.values()) - start
            gaps = [b - a for times in arrivals.values() for a, b in zip(times, times[1:]) if b > a]
            traffic, timings = runtime.traffic(), runtime.timings()
            results.append({
                "plan": name, "batch": batch, "tokens_per_s": batch * config["new_tokens"] / elapsed,
                "itl_p50_ms": 1e3 * float(np.percentile(gaps, 50)), "itl_p99_ms": 1e3 * float(np.percentile(gaps, 99)),
                "routed_tokens": int(runtime.routing_stats().num_tokens), "cross_node_bytes": traffic["cross_node_bytes"],
                "same_node_bytes": traffic["same_node_bytes"], "steps": timings["steps"]})
    return results


def rebalance(runtime: Runtime, config: dict, replay: RoutingTrace) -> dict:
    """Keep `concurrency` requests in flight; migrate live from `from` to `to` at `switch_at` seconds.

    Returns the arrival time of every token (seconds since the start), the migration's start and end,
    and how many requests completed and failed."""
    runtime.load(config["model"], load_plan(config["plans"][config["from"]]), replay=replay)
    params = SamplingParams(max_new_tokens=config["new_tokens"])
    start = time.perf_counter()
    arrivals: list[float] = []
    outcome = {"completed": 0, "failed": 0, "errors": []}
    lock = threading.Lock()

    def client(index: int) -> None:
        engine = runtime.engines[index % len(runtime.engines)]
        rng = np.random.default_rng(index)
        while time.perf_counter() - start < config["seconds"]:
            prompt = rng.integers(0, runtime.spec.vocab_size, size=config["prompt_len"]).tolist()
            try:
                request_id = ray.get(engine.submit.remote(prompt, params))
                seen = {request_id: 0}
                while True:
                    tokens, done, error = ray.get(engine.poll.remote(seen, 1.0))[request_id]
                    with lock:
                        arrivals.extend([time.perf_counter() - start] * len(tokens))
                    seen[request_id] += len(tokens)
                    if error is not None:
                        raise error
                    if done:
                        break
                with lock:
                    outcome["completed"] += 1
            except Exception as error:  # counted, not hidden: the report prints the failures
                with lock:
                    outcome["failed"] += 1
                    outcome["errors"].append(repr(error)[:200])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(config["concurrency"])]
    for thread in threads:
        thread.start()
    time.sleep(config["switch_at"])
    switch_start = time.perf_counter() - start
    report = migrate(runtime, load_plan(config["plans"][config["to"]]), runtime.epoch + 1)
    switch_end = time.perf_counter() - start
    for thread in threads:
        thread.join()
    return {**outcome, "arrivals": arrivals, "switch_start": switch_start, "switch_end": switch_end,
            "migration_seconds": report.total_seconds}


def main() -> None:
    config = json.loads(open(sys.argv[1]).read())
    replay = load_trace(config["trace"]).split()[1]
    ray.init(address=config["address"], log_to_driver=False)
    first_plan = load_plan(next(iter(config["plans"].values())))
    with Runtime.start(config["model"], config["nodes"], config["workers_per_node"], plan=first_plan,
                       replay=replay, engine_threads=1) as runtime:
        runtime.generate([[1, 2, 3]] * len(runtime.engines), SamplingParams(max_new_tokens=2))  # warm-up
        result = points(runtime, config, replay) if config["mode"] == "points" else rebalance(runtime, config, replay)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

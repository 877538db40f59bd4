"""The part of `bench.multihost` that runs inside the head node's namespace, as a Ray driver.

    python -m bench.multihost_driver CONFIG.json     (started by bench.multihost; prints one JSON line)

CONFIG: {"address", "model", "nodes", "workers_per_node", "trace" (replayed: its second half),
"plans": {name: plan JSON path}, "link_ends": [[namespace, device]] to shape (`bench.netns`),
"shapes": [[rate Mbit/s or null, delay ms]], "batches", "prompt_len", "new_tokens": for every plan,
link shape and batch, one batch of prompts served at once (greedy, no early stop), replaying the
trace from the start of each engine's share; then, if "rebalance" is given ({"shape", "from", "to"
(plan names), "concurrency", "seconds", "switch_at"}): requests kept in flight for `seconds`, a live
migration from "from" to "to" at `switch_at`.}
The driver shapes the links itself (root may run `tc -n` from any namespace), so that one Runtime
serves every shape and the workers load each plan's experts once.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import ray

from bench.netns import LinkShape, shape_links
from bench.runtime import stream_arrivals
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.runtime.migration import migrate
from switchyard.cluster.runtime.runtime import Runtime, replay_shares
from switchyard.placement.formats import load_plan, load_trace
from switchyard.placement.trace import RoutingTrace


def points(runtime: Runtime, config: dict, replay: RoutingTrace) -> list[dict]:
    """One measurement per plan, link shape and batch size: rate, inter-token latency, traffic."""
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=config["new_tokens"])
    shares = replay_shares(replay, len(runtime.engines))
    results = []
    for name, path in config["plans"].items():
        plan = load_plan(path)
        runtime.load(config["model"], plan, replay=replay)  # the workers load the plan's experts once
        for rate_mbit, delay_ms in config["shapes"]:
            applied = shape_links([tuple(end) for end in config["link_ends"]], LinkShape(rate_mbit, delay_ms))
            for batch in config["batches"]:
                # Counters and replay from zero: the engines alone reload (the workers hold the plan).
                ray.get([engine.load.remote(config["model"], plan.to_dict(), runtime.epoch, share)
                         for engine, share in zip(runtime.engines, shares)])
                prompts = rng.integers(0, runtime.spec.vocab_size, size=(batch, config["prompt_len"])).tolist()
                start, arrivals = stream_arrivals(runtime, prompts, params)
                elapsed = max(times[-1] for times in arrivals.values()) - start
                gaps = [b - a for times in arrivals.values() for a, b in zip(times, times[1:]) if b > a]
                traffic = runtime.traffic()
                results.append({
                    "plan": name, "batch": batch, "rate_mbit": rate_mbit, "link": applied.describe(),
                    "delay_applied": applied.delay_ms == delay_ms, "tokens_per_s": batch * config["new_tokens"] / elapsed,
                    "itl_p50_ms": 1e3 * float(np.percentile(gaps, 50)), "itl_p99_ms": 1e3 * float(np.percentile(gaps, 99)),
                    "routed_tokens": int(runtime.routing_stats().num_tokens),
                    "cross_node_bytes": traffic["cross_node_bytes"], "same_node_bytes": traffic["same_node_bytes"]})
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
        result = {"points": points(runtime, config, replay), "rebalance": None}
        if config.get("rebalance"):
            rate_mbit, delay_ms = config["rebalance"]["shape"]
            shape_links([tuple(end) for end in config["link_ends"]], LinkShape(rate_mbit, delay_ms))
            result["rebalance"] = rebalance(runtime, {**config, **config["rebalance"]}, replay)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

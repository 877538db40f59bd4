"""Rebalance benchmark: a live migration to an affinity plan while clients keep sending requests.

    python -m bench.rebalance --out docs/benchmarks/rebalance.md

One run, one skewed checkpoint (a fresh `small` Mixtral, skew 1, unless `--model` is given) on 2
simulated Ray nodes (2 expert workers and 1 engine each) under a linear plan, with `--spare-slots`
slots per worker for replicas (without replicas a token's picks are remote from half the engines
whatever the placement, so only replicas of hot experts on both nodes can cut cross-node bytes). `--clients` threads
each send prompts of 16 random ids one after another (greedy, `--new-tokens` each, no early stop),
to the engines in turn (`Engine.submit` / `result`). After `--seconds` of steady load the affinity
policy plans on `Runtime.routing_stats()` (with the plan in service as `current`) and
`live_migration.migrate` applies the plan; the load goes on for `--seconds` more.

Reported: request latency p50/p99 before the rebalance, during it (requests overlapping planning or
migration) and after it; the migration's phases, copies, bytes and worker-to-worker MiB/s, and the
same for a migration back to the linear plan once the load has stopped (the copy path alone); cross-node bytes per generated
token before and after, both under load (`Runtime.traffic()` deltas per phase over the tokens of that
phase) and on a fixed prompt set run alone before and after (exact). The fixed set's greedy outputs
must be identical before and after, and no request may fail.

With `--rebalances N` (odd; default 3) the load sees N migrations, `--gap` seconds apart: to the
affinity plan, back to the linear plan, to the affinity plan again, ... The requests that overlap any
of them make the `during` latencies: a single ~1 s rebalance overlaps only 4-7 requests, too few for
a p99 that means anything.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from bench.report import describe_checkpoint, main, provenance

from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.runtime.migration import migrate
from switchyard.cluster.runtime.runtime import Runtime, local_cluster
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.placement.migration import plan_migration
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.workers.checkpoints import load_spec

PROMPT_LEN = 16
NUM_CHECK_PROMPTS = 8
PHASES = ("before", "during", "after")


@dataclass(frozen=True)
class Request:
    """One client request: wall-clock start and end (`time.perf_counter`), tokens generated, error."""

    start: float
    end: float
    tokens: int
    error: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=2, help="Simulated Ray nodes.")
    parser.add_argument("--gpus-per-node", type=int, default=2, help="Expert workers (GPUs) per node.")
    parser.add_argument("--spare-slots", type=int, default=1,
                        help="Slots per worker beyond experts / workers, for the replicas of hot experts.")
    parser.add_argument("--clients", type=int, default=4, help="Concurrent client threads.")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="Steady load before and after the rebalances.")
    parser.add_argument("--rebalances", type=_odd, default=3,
                        help="Migrations under load (odd: the last one is to the affinity plan).")
    parser.add_argument("--gap", type=float, default=5.0, help="Seconds of load between two rebalances.")
    parser.add_argument("--max-moves", type=int, help="The affinity policy's copy budget (default: none).")
    parser.add_argument("--node-weight", type=float, default=1.0,
                        help="The affinity policy's cost of a remote node, in GPUs per token (its default: 1).")


def _odd(text: str) -> int:
    value = int(text)
    if value < 1 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd number of rebalances (1, 3, ...), got {text}")
    return value


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    report = run(model_dir, args)
    return render(report, command), not report["failed"] and report["outputs_equal"] and report["copies_as_planned"]


def run(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec(model_dir)
    rng = np.random.default_rng(0)
    params = SamplingParams(max_new_tokens=args.new_tokens)
    check_prompts = rng.integers(0, spec.vocab_size, size=(NUM_CHECK_PROMPTS, PROMPT_LEN)).tolist()
    client_prompts = rng.integers(0, spec.vocab_size, size=(args.clients, 64, PROMPT_LEN)).tolist()
    topology = Topology(args.nodes, args.gpus_per_node,
                        -(-spec.num_experts // (args.nodes * args.gpus_per_node)) + args.spare_slots)
    uniform = RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts)))
    linear = get_policy("linear").place(uniform, topology)
    with local_cluster(args.nodes), Runtime.start(model_dir, args.nodes, args.gpus_per_node, linear) as runtime:
        runtime.generate(check_prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
        check_before, check_traffic_before = _fixed_set(runtime, check_prompts, params)
        requests: list[Request] = []
        stop = threading.Event()
        turn = itertools.count()  # engines in turn over all clients

        def client(own: list[list[int]]) -> None:
            for prompt in itertools.cycle(own):
                if stop.is_set():
                    return
                engine = runtime.engines[next(turn) % len(runtime.engines)]
                start, tokens, error = time.perf_counter(), 0, None
                try:
                    tokens = len(ray.get(engine.result.remote(ray.get(engine.submit.remote(prompt, params)))))
                except Exception as failure:  # counted and reported; the load goes on
                    error = f"{type(failure).__name__}: {failure}"
                requests.append(Request(start, time.perf_counter(), tokens, error))

        threads = [threading.Thread(target=client, args=(own,), daemon=True) for own in client_prompts]
        marks = {"load": time.perf_counter()}
        traffic = {"load": runtime.traffic()}
        steps = {"load": _steps(runtime)}
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        marks["rebalance"], traffic["rebalance"], steps["rebalance"] = time.perf_counter(), runtime.traffic(), _steps(runtime)
        old_plan = runtime.plan
        options = {"node_weight": args.node_weight, **({} if args.max_moves is None else {"max_moves": args.max_moves})}
        windows_during, migrations, plan_seconds, expected_copies = [], [], [], []  # windows: (start, end, steps)
        for index in range(args.rebalances):
            if index:
                time.sleep(args.gap)
            start, start_steps = time.perf_counter(), _steps(runtime)
            proposed = (get_policy("affinity", **options).place(runtime.routing_stats(), old_plan.topology,
                                                                current=runtime.plan)
                        if index % 2 == 0 else old_plan)
            plan_seconds.append(time.perf_counter() - start)
            expected_copies.append(plan_migration(runtime.plan, proposed).num_copies)
            migrations.append(migrate(runtime, proposed, runtime.epoch + 1))
            windows_during.append((start, time.perf_counter(), _steps(runtime) - start_steps))
        marks["after"], traffic["after"], steps["after"] = time.perf_counter(), runtime.traffic(), _steps(runtime)
        time.sleep(args.seconds)
        marks["stop"], traffic["stop"], steps["stop"] = time.perf_counter(), runtime.traffic(), _steps(runtime)
        stop.set()
        for thread in threads:
            thread.join()
        check_after, check_traffic_after = _fixed_set(runtime, check_prompts, params)
        idle = migrate(runtime, old_plan, runtime.epoch + 1)  # the copy path alone: back, with no load
    windows = {"before": ("load", "rebalance"), "after": ("after", "stop")}
    phase_windows = {"during": windows_during,
                     **{phase: [(marks[a], marks[b], steps[b] - steps[a])] for phase, (a, b) in windows.items()}}
    rates = {phase: _rates(requests, spans) for phase, spans in phase_windows.items()}
    return {
        "spec": spec, "args": args, "requests": requests, "migrations": migrations, "idle_report": idle,
        "plan_seconds": plan_seconds,
        "copies_as_planned": [done.copies for done in migrations] == expected_copies,
        "latency": _latency_by_phase(requests, marks, [(start, end) for start, end, _ in windows_during]),
        "rates": rates,
        "load_traffic": {phase: _per_token(traffic[a], traffic[b], _tokens_in(requests, marks[a], marks[b]))
                         for phase, (a, b) in windows.items()},
        "fixed_traffic": {"before": check_traffic_before, "after": check_traffic_after},
        "failed": [r.error for r in requests if r.error is not None],
        "outputs_equal": check_before == check_after,
    }


def _steps(runtime: Runtime) -> int:
    """Engine steps so far, summed over engines (a stalled engine runs none)."""
    return sum(ray.get([engine.step_count.remote() for engine in runtime.engines]))


def _fixed_set(runtime: Runtime, prompts: list[list[int]], params: SamplingParams
               ) -> tuple[list[list[int]], dict[str, float]]:
    """Greedy outputs of `prompts` run alone, and their traffic per generated token (exact: no other load)."""
    before = runtime.traffic()
    outputs = runtime.generate(prompts, params)
    return outputs, _per_token(before, runtime.traffic(), sum(len(o) for o in outputs))


def _per_token(before: dict[str, Any], after: dict[str, Any], tokens: float) -> dict[str, float]:
    """Cross- and same-node bytes and cross-node token vectors per generated token between two snapshots."""
    keys = ("cross_node_bytes", "same_node_bytes", "cross_node_tokens")
    per_token = {key: (after[key] - before[key]) / max(tokens, 1e-9) for key in keys}
    return {"tokens": tokens, **per_token, "all_bytes": per_token["cross_node_bytes"] + per_token["same_node_bytes"]}


def _rates(requests: list[Request], windows: list[tuple[float, float, int]]) -> dict[str, float]:
    """Generated tokens and engine steps per second over `windows` (start, end, steps run in it)."""
    seconds = sum(end - start for start, end, _ in windows)
    return {"tokens_per_s": sum(_tokens_in(requests, start, end) for start, end, _ in windows) / seconds,
            "steps_per_s": sum(steps for _, _, steps in windows) / seconds}


def _tokens_in(requests: list[Request], start: float, end: float) -> float:
    """Generated tokens that fall in `[start, end]`, spreading each request's tokens evenly over its time."""
    total = 0.0
    for r in requests:
        overlap = min(r.end, end) - max(r.start, start)
        if overlap > 0:
            total += r.tokens * overlap / max(r.end - r.start, 1e-9)
    return total


def _latency_by_phase(requests: list[Request], marks: dict[str, float],
                      windows: list[tuple[float, float]]) -> dict[str, dict[str, float]]:
    """p50/p99 latency of the requests that ended before the first rebalance, overlapped one of the
    rebalance `windows`, or started after the last."""
    phase_of = {"before": lambda r: r.end < marks["rebalance"],
                "during": lambda r: any(r.start <= end and r.end >= start for start, end in windows),
                "after": lambda r: r.start > marks["after"] and r.start < marks["stop"]}
    latency = {}
    for phase in PHASES:
        seconds = [r.end - r.start for r in requests if r.error is None and phase_of[phase](r)]
        latency[phase] = {"count": len(seconds),
                          "p50": float(np.percentile(seconds, 50)) if seconds else float("nan"),
                          "p99": float(np.percentile(seconds, 99)) if seconds else float("nan")}
    return latency


def render(report: dict[str, Any], command: str) -> str:
    spec, args, migrations = report["spec"], report["args"], report["migrations"]
    latency, rates = report["latency"], report["rates"]
    latency_rows = [[phase, str(latency[phase]["count"]), f"{1e3 * latency[phase]['p50']:.0f}",
                     f"{1e3 * latency[phase]['p99']:.0f}",
                     f"{latency[phase]['p50'] / latency['before']['p50']:.2f}x",
                     f"{latency[phase]['p99'] / latency['before']['p99']:.2f}x",
                     f"{rates[phase]['tokens_per_s']:.1f}", f"{rates[phase]['steps_per_s']:.1f}"]
                    for phase in PHASES]
    under_load = [(f"{index + 1}: to the {'affinity' if index % 2 == 0 else 'linear'} plan, under load", f"{plan_s:.2f}",
                   done) for index, (done, plan_s) in enumerate(zip(migrations, report["plan_seconds"]))]
    migration_rows = [[
        when, plan_s, f"{done.stage_seconds:.2f}", f"{done.switch_seconds:.2f}", f"{done.drop_seconds:.3f}",
        f"{done.total_seconds:.2f}", str(done.copies), f"{done.bytes_copied / 2**20:.1f}",
        f"{done.bytes_copied / 2**20 / done.stage_seconds:.0f}", str(done.steps_during_switch)]
        for when, plan_s, done in [*under_load, ("back to the linear plan, idle", "-", report["idle_report"])]]
    traffic_rows = []
    for name, measured in (("under load", report["load_traffic"]), ("fixed prompt set, alone", report["fixed_traffic"])):
        before, after = measured["before"], measured["after"]
        for key, label in (("cross_node_bytes", "cross-node KiB/token"), ("same_node_bytes", "same-node KiB/token"),
                           ("all_bytes", "all KiB/token"),
                           ("cross_node_tokens", "cross-node token vectors/token")):
            scale = 1 / 1024 if key.endswith("bytes") else 1.0
            traffic_rows.append([name, label, f"{before[key] * scale:.2f}", f"{after[key] * scale:.2f}",
                                 f"{after[key] / before[key]:.2f}x" if before[key] else "n/a"])
    topology = migrations[0].plan.topology
    return "\n".join([
        "# Rebalance benchmark",
        "",
        provenance(command),
        "",
        f"{describe_checkpoint(spec)}, router skewed "
        f"(`init_checkpoint(..., skew=1.0)`: hot experts, groups picked together). Served on "
        f"{topology.num_nodes} simulated Ray nodes x {topology.gpus_per_node} expert workers "
        f"({topology.slots_per_gpu} slots each: {topology.num_slots - spec.num_experts} spare for replicas), one "
        f"engine per node, under a linear plan (spare slots repeat experts 0, 1, ...). {args.clients} "
        f"client threads send prompts of {PROMPT_LEN} random ids one after another, to the engines in turn; "
        f"{args.new_tokens} new tokens each, greedy. {args.seconds:g} s of load before the rebalances and "
        f"{args.seconds:g} s after; {args.rebalances} rebalance(s) under load, {args.gap:g} s apart, "
        "alternately to the affinity policy's plan on the engines' routing statistics "
        f"(current plan given, node weight {args.node_weight:g}"
        f"{'' if args.max_moves is None else f', at most {args.max_moves} copies'}) and back to the linear "
        "plan, the last one to the affinity plan, each applied by `live_migration.migrate` while the load runs. "
        "Expert workers run the migration in a thread that takes only otherwise idle cores (`SCHED_IDLE`).",
        "",
        f"Checks: {len(report['requests'])} requests, {len(report['failed'])} failed; greedy outputs of "
        f"{NUM_CHECK_PROMPTS} fixed prompts before and after the rebalance "
        f"{'identical' if report['outputs_equal'] else 'DIFFER'}; copies "
        f"{'equal' if report['copies_as_planned'] else 'DIFFER from'} `plan_migration`'s counts.",
        "",
        "## Request latency",
        "",
        markdown_table(["phase", "requests", "p50 ms", "p99 ms", "p50 vs before", "p99 vs before", "tokens/s",
                        "engine steps/s"], latency_rows),
        "",
        "Latency: `during` counts requests that overlapped a rebalance (planning and migration), `before` "
        "those that ended before the first, `after` those that started after the last. tokens/s and engine "
        "steps/s (summed over engines): over the phase's windows (`during`: from planning to `migrate`'s "
        "return, summed over the rebalances).",
        "",
        "## The migration",
        "",
        markdown_table(["migration", "plan s", "stage s", "switch s", "drop s", "migrate total s", "copies",
                        "MiB copied", "MiB/s worker to worker", "engine steps during switch"], migration_rows,
                       numeric_from=1),
        "",
        "MiB/s worker to worker: MiB copied over the stage phase (every copy's export on its source, the "
        "move, and the new epoch built on its target, all workers at once). `under load`: the "
        "measured rebalances, while the clients' load runs on the same cores. `back to the linear plan, idle`: "
        "after the load and the fixed prompt set, `migrate` back to the linear plan with nothing else "
        "running (the copy path's own speed).",
        "",
        "## Traffic per generated token",
        "",
        markdown_table(["measured", "counter", "before", "after", "after / before"], traffic_rows, numeric_from=2),
        "",
        "Under load: `Runtime.traffic()` deltas over each phase's window divided by the tokens generated in "
        "it (each request's tokens spread evenly over its lifetime, so requests across a window edge are "
        "split). The counters include prompt (prefill) tokens' traffic, divided by generated tokens. Fixed "
        f"prompt set: the {NUM_CHECK_PROMPTS} check prompts run alone before the load and after it (exact).",
    ])


if __name__ == "__main__":
    main(__doc__, "bench.rebalance", "small", add_arguments, measure)

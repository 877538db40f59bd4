"""Overlap benchmark (issue 12, item 5): does a second batch in flight on one node pay?

    python -m bench.overlap --out docs/benchmarks/overlap.md

An engine's forward waits for each MoE layer's experts, so on one node the engine's attention and the
workers' experts never run at the same time. Two batches in flight would let one batch's attention
run while the other's experts compute. This measures that on one simulated node with the `small`
checkpoint, the batch split over two engines (two processes, each with half the requests: the same
work as two micro-batches in one engine, which would also each read the attention weights and the LM
head), against the runtime benchmark's one-node setup (1 engine, 2 workers):

  - `1 engine, 2 workers`: `bench/runtime.py`'s "Switchyard, 1 node";
  - `2 engines, 2 workers, lockstep`: the workers' default, a call waits up to `WINDOW_S` for the other
    engine's call of the same layer and runs both as one (`workers/combiner.py`), so the engines fall
    into step and do not overlap;
  - `2 engines, 2 workers, free`: `combine_window_s=0`: the engines drift apart and one's attention
    overlaps the other's experts, but every engine's call re-reads the layer's expert weights;
  - `1 engine, 1 worker` and `2 engines, 1 worker, free`: the same with all experts in one worker (two
    runnable threads on two cores instead of three).

Setups alternate round by round in one Ray cluster, so that all see the same machine; every round
starts fresh actors, runs a warm-up and then the batch. Every setup's greedy tokens are compared with
the first's. Tokens per second is the median over rounds (the machine is shared: compare within a run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from bench.report import describe_checkpoint, main, positive_int, provenance
from bench.runtime import PROMPT_LEN

from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.runtime.runtime import Runtime, local_cluster
from switchyard.workers.checkpoints import load_spec

SETUPS = {  # name: (engines, workers, combine_window_s; None: the workers' default)
    "1 engine, 2 workers": (1, 2, None),
    "2 engines, 2 workers, lockstep": (2, 2, None),
    "2 engines, 2 workers, free": (2, 2, 0.0),
    "1 engine, 1 worker": (1, 1, None),
    "2 engines, 1 worker, free": (2, 1, 0.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=positive_int, default=3, help="Rounds of every setup (alternating).")


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    spec = load_spec(model_dir)
    prompts = np.random.default_rng(0).integers(0, spec.vocab_size, size=(args.batch, PROMPT_LEN)).tolist()
    params = SamplingParams(max_new_tokens=args.new_tokens)
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    profiles: dict[str, list[dict]] = {name: [] for name in SETUPS}
    outputs: dict[str, list[list[int]]] = {}
    with local_cluster(1):
        for round_ in range(args.rounds):
            for name, (engines, workers, window) in SETUPS.items():
                options = {} if window is None else {"combine_window_s": window}
                with Runtime.start(model_dir, 1, workers, engines_per_node=engines, **options) as runtime:
                    runtime.generate(prompts[:engines], SamplingParams(max_new_tokens=2))  # warm-up
                    runtime.load(model_dir)  # fresh counters
                    start = time.perf_counter()
                    outputs[name] = runtime.generate(prompts, params)
                    rates[name].append(args.batch * args.new_tokens / (time.perf_counter() - start))
                    profiles[name].append(runtime.timings())
                print(f"round {round_ + 1}: {name}: {rates[name][-1]:.1f} tok/s", flush=True)
    reference = outputs[next(iter(SETUPS))]
    equal = {name: outputs[name] == reference for name in SETUPS}
    return render(describe_checkpoint(spec), args, command, rates, profiles, equal), all(equal.values())


def render(checkpoint: str, args: argparse.Namespace, command: str, rates: dict[str, list[float]],
           profiles: dict[str, list[dict]], equal: dict[str, bool]) -> str:
    """The report: per setup the median tokens/s, every round's, the ratio to the first setup, the
    workers' busy time and whether its tokens equal the first setup's."""
    baseline = statistics.median(rates[next(iter(SETUPS))])
    rows = []
    for name, runs in rates.items():
        median = statistics.median(runs)
        busy = sum(sum(p["worker_busy_seconds"]) for p in profiles[name]) / len(profiles[name])
        rows.append([name, f"{median:.1f}", " / ".join(f"{r:.0f}" for r in runs), f"{median / baseline:.2f}x",
                     f"{busy:.2f}", "yes" if equal[name] else "NO"])
    return "\n".join([
        "# Overlap benchmark", "", provenance(command), "",
        f"{checkpoint}. One simulated node; batch {args.batch}, prompts of {PROMPT_LEN} random "
        f"ids, {args.new_tokens} new tokens each, greedy; {args.rounds} rounds of every setup, alternating.", "",
        markdown_table(["setup", "tok/s (median)", "tok/s per round", "vs 1 engine, 2 workers",
                        "worker busy s (sum of workers, per round)", "tokens equal"], rows), "",
        "`worker busy s`: time the workers spent in `forward` for the batch, summed over workers: with two "
        "free engines each engine's call reads a layer's expert weights again, so the experts cost more "
        "in all; lockstep runs the two engines' calls as one.", "",
    ])


if __name__ == "__main__":
    main(__doc__, "bench.overlap", "small", add_arguments, measure)

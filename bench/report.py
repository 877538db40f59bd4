"""What every benchmark shares: its command line, the checkpoint it runs, how it is described, where the
report goes. Imported as `bench.report`: run the benchmarks from the repository root as modules
(`python -m bench.runtime --out docs/benchmarks/runtime.md`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

Measure = Callable[[Path, argparse.Namespace, str], tuple[str, bool]]
"""`measure(model_dir, args, command) -> (markdown report, every check passed)`."""


def provenance(command: str, libraries: tuple[str, ...] = ("torch",)) -> str:
    """The report's first line: the command, the date and the machine (the numbers depend on them)."""
    versions = ", ".join(f"{name} {importlib.import_module(name).__version__}" for name in libraries)
    return (f"Produced by `{command}` in one run, {datetime.date.today().isoformat()}, on {platform.machine()} "
            f"with {os.cpu_count()} CPU cores ({cpu_model()}), Python {platform.python_version()}, {versions}.")


def cpu_model() -> str:
    """The CPU as Linux reports it: model name, widest vector extension and last-level cache. Machines of
    one kind differ (an AVX2 EPYC with a 32 MiB L3, an AVX-512 Xeon sharing a 480 MiB one) and the
    speed ratios move with them."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        return platform.processor() or "unknown CPU"
    info = {key.strip(): value.strip() for key, value in info.items()}
    flags = set(info.get("flags", "").split())
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "no AVX2")
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    size = (caches[-1] / "size").read_text().strip() if caches else ""  # the last level's, e.g. "491520K"
    cache = f", L{(caches[-1] / 'level').read_text().strip()} {int(size[:-1]) // 1024} MiB" if size.endswith("K") else ""
    return f"{info.get('model name', platform.processor() or 'unknown CPU')}, {vector}{cache}"


def positive_int(text: str) -> int:
    """An argparse type for counts such as `--rounds`: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def command_line(module: str) -> str:
    """How this run was started, as the report prints it (`python -m bench.<name> ...`)."""
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def describe_checkpoint(spec: Any) -> str:
    """One sentence for a `ModelSpec`: family, sizes, experts, top-k, vocabulary, dtype."""
    config = spec.config
    intermediate = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    return (f"Checkpoint: {spec.family.name}, hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
            f"{spec.num_experts} experts (FFN {intermediate}), top-{spec.top_k}, vocab {config.vocab_size}, "
            "float32")


def publish(text: str, out: Path | None, echo: bool = True) -> None:
    """Print the report (unless `echo` is False: printed as it went), and write it to `out` (a markdown
    file) when given."""
    if echo:
        print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)


def main(doc: str, module: str, size: str, add_arguments: Callable[[argparse.ArgumentParser], None],
         measure: Measure, arch: str = "mixtral") -> None:
    """The `main` of a checkpoint benchmark: parse `--model`, `--out` and `add_arguments`' options, write
    a fresh `size` checkpoint of `arch` (router skew 1) to a temporary folder unless `--model` names one,
    run `measure`, publish its report; exit 1 when one of its checks failed."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=f"A checkpoint; default: a fresh `{size}` {arch} (skew 1).")
    parser.add_argument("--out", type=Path, help=f"Markdown file to write, e.g. docs/benchmarks/"
                        f"{module.rsplit('.', 1)[-1]}.md.")
    add_arguments(parser)
    args = parser.parse_args()
    from switchyard.workers.checkpoints import init_checkpoint  # torch and transformers only when run

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or init_checkpoint(arch, size, Path(scratch) / f"{arch}-{size}", skew=1.0)
        text, passed = measure(model_dir, args, command_line(module))
    publish(text, args.out)
    if not passed:
        sys.exit(1)

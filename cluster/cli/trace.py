"""`switchyard trace ...`: make a synthetic routing trace, or describe one."""

from __future__ import annotations

from pathlib import Path

import click

from switchyard.cluster.cli.params import INPUT_FILE, OUTPUT_FILE, drop_incomplete_option, verbose_option
from switchyard.cluster.cli.formatting import skew_summary
from switchyard.placement.formats import load_trace, save_trace
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace


@click.group()
def trace() -> None:
    """Make or inspect routing traces (which experts each token picked at each layer)."""


@trace.command("synth")
@click.option("--out", type=OUTPUT_FILE, required=True, help="Trace file to write (.npz).")
@click.option("--layers", type=click.IntRange(min=1), metavar="L", required=True, help="MoE layers (L).")
@click.option("--experts", type=click.IntRange(min=1), metavar="E", required=True,
              help="Experts per layer (E).")
@click.option("--top-k", type=click.IntRange(min=1), metavar="K", required=True,
              help="Experts each token picks (k).")
@click.option("--tokens", type=click.IntRange(min=1), metavar="T", required=True,
              help="Tokens to generate (T).")
@click.option("--seq-len", type=click.IntRange(min=1), metavar="N", default=64, show_default=True,
              help="Tokens per sequence; sequences are spread over nodes round-robin.")
@click.option("--skew", type=click.FloatRange(min=0), metavar="X", default=1.0, show_default=True,
              help="Zipf exponent of expert popularity (0: all experts equally popular).")
@click.option("--clusters", type=click.IntRange(min=1), metavar="N", default=None,
              help="Groups of experts that tokens pick together. Default: about 2k experts per group.")
@click.option("--affinity", type=click.FloatRange(0, 1), metavar="P", default=0.8, show_default=True,
              help="Probability that a pick comes from the token's cluster (0: no co-activation).")
@click.option("--seed", type=int, metavar="SEED", default=0, show_default=True, help="Random seed.")
@verbose_option
def synth(out: Path, layers: int, experts: int, top_k: int, tokens: int, seq_len: int, skew: float,
          clusters: int | None, affinity: float, seed: int) -> None:
    """Write a seeded synthetic trace with hot experts and co-activation structure."""
    if top_k > experts:
        raise click.BadParameter(f"{top_k} exceeds the {experts} experts", param_hint="--top-k")
    routing = synthetic_trace(layers, experts, top_k, tokens, seq_len=seq_len, skew=skew,
                              num_clusters=clusters, affinity=affinity, seed=seed)
    save_trace(routing, out)
    click.echo(f"wrote {out}: {_shape(routing.num_tokens, routing.num_layers, experts, top_k)}, "
               f"{len(routing.seq_lens)} sequences")


@trace.command("info")
@click.option("--trace", "trace_path", type=INPUT_FILE, required=True,
              help="Routing trace (.npz, Mixtral .jsonl, SGLang per_token dump .pt/.json).")
@drop_incomplete_option
@verbose_option
def info(trace_path: Path, drop_incomplete: bool) -> None:
    """Print a trace's shape and how skewed its expert load is."""
    routing = load_trace(trace_path, drop_incomplete=drop_incomplete)
    shape = _shape(routing.num_tokens, routing.num_layers, routing.num_experts, routing.top_k)
    click.echo(f"{trace_path}: {shape}")
    seq_lens = routing.seq_lens
    click.echo(f"sequences: {len(seq_lens)} (tokens each: min {seq_lens.min()}, max {seq_lens.max()})")
    click.echo(f"gate weights: {'yes' if routing.topk_weights is not None else 'no'}")
    click.echo(skew_summary(RoutingStats.from_trace(routing).load))


def _shape(num_tokens: int, num_layers: int, num_experts: int, top_k: int) -> str:
    return f"{num_tokens} tokens x {num_layers} layers, {num_experts} experts, top-{top_k}"

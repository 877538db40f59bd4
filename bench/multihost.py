"""Multi-host benchmark: what placement saves between nodes joined by real, shaped links, on real routing.

    sudo .venv/bin/python -m bench.multihost --out docs/benchmarks/multihost.md [--quick]

Needs root and `ip netns` (`bench/netns.py` builds the nodes) and the ESFT trace (`--trace`, default
`../shared/traces/esft/intent.npz`). One run, one `esft` DeepSeek-V2 checkpoint (26 MoE layers x 64
experts, top-6, hidden 128; written to a temporary folder unless `--model` is given), trace replay on
(`cluster/engine/replay.py`: the engines route every token as the trace says). Plans are made by the
linear, EPLB and affinity policies on the trace's first half; the engines replay its second half.
For 2 x 2 and 4 x 1 (nodes x expert workers, one engine per node), per link shape and plan, one batch
of `--batch` prompts at a time (greedy, `--new-tokens` each):
  - cross-node bytes per routed token from the engines' traffic counters, beside the cost model's
    prediction for the same tokens and plan (`placement.evaluate` with `placement.cost`), and its error;
  - tokens/s and p50 / p99 inter-token latency, as a client polling the engines sees them;
then a live rebalance from EPLB to affinity in the middle of a run (requests kept in flight).
`--quick`: 2 x 2 only, 1 Gbit/s and unshaped, batch 8, a 20 s rebalance run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench.netns import NO_NETEM_NOTE, LinkShape, netns_cluster
from bench.report import describe_checkpoint, main, provenance

from switchyard.cluster.cli.formatting import markdown_table
from switchyard.cluster.runtime.runtime import replay_shares
from switchyard.placement.cost import ClusterSpec
from switchyard.placement.evaluate import evaluate
from switchyard.placement.formats import load_trace, save_plan
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from switchyard.workers.checkpoints import load_spec

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "traces" / "esft" / "intent.npz"
POLICIES = ("linear", "eplb", "affinity")
REDUNDANT_SLOTS_PER_WORKER = 2  # every worker holds experts / workers + 2 slots: room for replicas
UNSHAPED = LinkShape()
SHARED_MEMORY_BYTES_PER_S = 5e9  # the cost model's "NVLink": the same-node shared-memory channel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", type=Path, default=TRACE, help="Routing trace to plan on and replay (.npz).")
    parser.add_argument("--quick", action="store_true", help="2 x 2, 1 Gbit/s and unshaped, batch 8, short.")
    parser.add_argument("--batches", default="8,32", help="Comma-separated batch sizes.")
    parser.add_argument("--new-tokens", type=int, default=6)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--rates", default="500,1000,10000", help="Link rates (Mbit/s) of the 2 x 2 sweep.")
    parser.add_argument("--delay-ms", type=float, default=0.2, help="One-way delay per link end (needs netem).")
    parser.add_argument("--rebalance-seconds", type=float, default=60.0)


def _plan_runs(args: argparse.Namespace) -> list[tuple[tuple[int, int], list[LinkShape]]]:
    """(nodes, workers per node) and the link shapes to measure it under."""
    gigabit = LinkShape(1000, args.delay_ms)
    if args.quick:
        return [((2, 2), [gigabit, UNSHAPED])]
    sweep = [LinkShape(float(rate), args.delay_ms) for rate in args.rates.split(",")]
    return [((2, 2), [*sweep, UNSHAPED]), ((4, 1), [gigabit, UNSHAPED])]


def measure(model_dir: Path, args: argparse.Namespace, command: str) -> tuple[str, bool]:
    if not args.trace.is_file():
        sys.exit(f"the routing trace {args.trace} is missing (see ../shared/traces/README.md)")
    spec, trace = load_spec(model_dir), load_trace(args.trace)
    first, second = trace.split()
    stats = RoutingStats.from_trace(first)
    batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    rows, notes, rebalance = [], [], None
    with tempfile.TemporaryDirectory() as scratch:
        for (nodes, workers_per_node), shapes in _plan_runs(args):
            topology = Topology.for_experts(spec.num_experts, nodes, workers_per_node,
                                            spec.num_experts // (nodes * workers_per_node) + REDUNDANT_SLOTS_PER_WORKER)
            plans = {name: get_policy(name).place(stats, topology) for name in POLICIES}
            paths = {}
            for name, plan in plans.items():
                paths[name] = str(Path(scratch) / f"{nodes}x{workers_per_node}-{name}.json")
                save_plan(plan, paths[name])
            config = {"model": str(model_dir), "nodes": nodes, "workers_per_node": workers_per_node,
                      "trace": str(args.trace), "plans": paths, "prompt_len": args.prompt_len,
                      "new_tokens": args.new_tokens, "batches": batches,
                      "shapes": [[shape.rate_mbit, shape.delay_ms] for shape in shapes]}
            if (nodes, workers_per_node) == (2, 2):
                seconds = 20.0 if args.quick else args.rebalance_seconds
                config["rebalance"] = {"shape": [1000, args.delay_ms], "from": "eplb", "to": "affinity",
                                       "concurrency": 8, "seconds": seconds, "switch_at": seconds / 2}
            with netns_cluster(nodes, shapes[0]) as bed:
                result = _driver(bed, scratch, {**config, "address": bed.ray_address, "link_ends": bed.link_ends})
            for point in result["points"]:
                shape = LinkShape(point["rate_mbit"], args.delay_ms if point["rate_mbit"] else 0.0)
                rows.append({**point, "setup": f"{nodes} x {workers_per_node}",
                             **_predicted(plans[point["plan"]], second, point, nodes, spec, shape, args)})
                if not point["delay_applied"] and NO_NETEM_NOTE not in notes:
                    notes.append(NO_NETEM_NOTE)
            if result["rebalance"] is not None:
                rebalance = {**result["rebalance"], "link": LinkShape(1000, 0.0 if notes else args.delay_ms).describe()}
    report = {"spec": spec, "rows": rows, "rebalance": rebalance, "notes": notes, "batches": batches, "args": args}
    return render(report, command), rebalance is not None and rebalance["failed"] == 0


def _driver(bed, scratch: str, config: dict) -> dict:
    """Run `bench.multihost_driver` with `config` in the head node's namespace; its JSON result."""
    path = Path(scratch) / "config.json"
    path.write_text(json.dumps(config))
    out = bed.run(0, [sys.executable, "-m", "bench.multihost_driver", str(path)], timeout_s=1800, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _predicted(plan, served: RoutingTrace, point: dict, nodes: int, spec, shape: LinkShape,
               args: argparse.Namespace) -> dict:
    """The cost model on exactly the tokens the point replayed: each engine's first tokens of its share
    of `served`, engine e's tokens homed on node e (one sequence per engine, `home_node_of_token`)."""
    per_engine = point["batch"] // nodes * (args.prompt_len + args.new_tokens - 1)
    shares = [share.topk_ids[:per_engine] for share in replay_shares(served, nodes)]
    replayed = RoutingTrace(np.concatenate(shares), np.array([len(s) for s in shares]), served.num_experts)
    network = (shape.rate_mbit or 10_000) * 1e6 / 8  # unshaped: a veth pair moves ~10 Gbit/s here
    cluster = ClusterSpec("netns", gpu_flops=2e10, nvlink_bandwidth=SHARED_MEMORY_BYTES_PER_S,
                          network_bandwidth=network, hidden_size=spec.hidden_size,
                          moe_intermediate_size=int(spec.config.moe_intermediate_size), dtype_bytes=4)
    evaluation = evaluate(plan, replayed, cluster)
    return {"predicted_bytes_per_token": evaluation.cross_node_bytes(spec.hidden_size, 4) / replayed.num_tokens,
            "predicted_layer_s": evaluation.layer_time_s}


def render(report: dict, command: str) -> str:
    rows, batches = report["rows"], report["batches"]
    by_key = {(r["setup"], r["link"], r["plan"], r["batch"]): r for r in rows}
    setups_links = list(dict.fromkeys((r["setup"], r["link"]) for r in rows))
    headers = ["nodes x workers", "link", "plan", "cross-node B/token", "predicted", "error",
               *[f"batch {b} tok/s" for b in batches], *[f"batch {b} ITL p50 / p99 ms" for b in batches]]
    table = []
    for setup, link in setups_links:
        for plan in POLICIES:
            point = [by_key[(setup, link, plan, b)] for b in batches]
            measured = point[0]["cross_node_bytes"] / point[0]["routed_tokens"]
            predicted = point[0]["predicted_bytes_per_token"]
            table.append([setup, link, plan, f"{measured:.0f}", f"{predicted:.0f}", f"{predicted / measured - 1:+.1%}",
                          *[f"{p['tokens_per_s']:.1f}" for p in point],
                          *[f"{p['itl_p50_ms']:.0f} / {p['itl_p99_ms']:.0f}" for p in point]])
    big = batches[-1]
    ratios = []
    for setup, link in setups_links:
        def get(plan: str, key: str, batch: int = batches[0]) -> float:
            point = by_key[(setup, link, plan, batch)]
            return point[key] / point["routed_tokens"] if key == "cross_node_bytes" else point[key]

        affinity, eplb, linear = (get(p, "cross_node_bytes") for p in ("affinity", "eplb", "linear"))
        predicted = {p: by_key[(setup, link, p, big)]["predicted_layer_s"] for p in ("affinity", "eplb")}
        ratios.append([setup, link, f"{1 - affinity / eplb:.0%}", f"{1 - affinity / linear:.0%}",
                       f"{get('affinity', 'tokens_per_s', big) / get('eplb', 'tokens_per_s', big):.2f}x",
                       f"{predicted['eplb'] / predicted['affinity']:.2f}x"])
    parts = [
        "# Multi-host benchmark: placement over real links, on real routing", "",
        provenance(command, ("torch", "ray")), "",
        describe_checkpoint(report["spec"]) + "; trace replay of the ESFT `intent` trace (benchmark mode: "
        "the gate runs, its choices are replaced by the trace's; the generated text is not meaningful).", "",
        "## Cross-node bytes and speed per plan", "",
        markdown_table(headers, table), "",
        "## Ratios (targets: affinity >= 25% fewer cross-node bytes than EPLB and >= 40% fewer than linear; "
        f"affinity's batch-{big} tokens/s >= 1.15x EPLB's on 1 Gbit/s)", "",
        markdown_table(["nodes x workers", "link", "affinity vs EPLB bytes", "affinity vs linear bytes",
                        f"affinity / EPLB tok/s, batch {big}", "cost model's speed-up"], ratios), "",
    ]
    rebalance = report["rebalance"]
    if rebalance is not None:
        parts += _render_rebalance(rebalance)
    parts += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    parts += [METHOD]
    return "\n".join(parts)


def _render_rebalance(rebalance: dict) -> list[str]:
    arrivals = np.sort(np.asarray(rebalance["arrivals"]))
    start, end = rebalance["switch_start"], rebalance["switch_end"]
    window = min(start, 10.0)
    before = np.count_nonzero((arrivals >= start - window) & (arrivals < start)) / window
    rows = [["before (EPLB)", f"{start - window:.0f}-{start:.0f}", f"{before:.1f}"]]
    last = float(arrivals[-1]) if arrivals.size else end
    for lo in np.arange(end, last, window):
        hi = min(lo + window, last)
        if hi - lo < window / 2:
            break
        rows.append(["after (affinity)", f"{lo:.0f}-{hi:.0f}",
                     f"{np.count_nonzero((arrivals >= lo) & (arrivals < hi)) / (hi - lo):.1f}"])
    return ["## Live rebalance EPLB -> affinity, 2 x 2, " + rebalance["link"], "",
            f"8 requests kept in flight; the migration ran from {start:.1f} s to {end:.1f} s "
            f"({rebalance['migration_seconds']:.1f} s of copying and switching). Requests completed: "
            f"{rebalance['completed']}, failed: {rebalance['failed']}.", "",
            markdown_table(["plan", "seconds", "tokens/s"], rows), "",
            *[f"- failure: `{error}`" for error in rebalance["errors"][:5]], ""]


METHOD = """## Setup, and how to rerun it

Each node is a Linux network namespace (`bench/netns.py`): a veth pair joins it to a bridge in a
namespace of its own, it has an address in 198.18.0.0/15, and `tc` shapes its link in both
directions (htb at the link rate; a netem delay under it where the kernel has netem). Node 0 runs the
Ray head, the others `ray start --address`; one engine per node, the expert workers pinned to their
nodes; the driver (`bench/multihost_driver.py`) runs in node 0's namespace. Shared memory carries
only an engine's calls to workers on its own node (the Unix socket is in the namespace's abstract
socket space, so it cannot reach another node); every other call crosses the shaped links through Ray.

Cross-node bytes per token are the engines' counters (hidden states, slot ids and gate weights out,
hidden states back) over every routed token (prompt and generated). The prediction is
`placement.evaluate` on exactly those trace tokens, with engine e's tokens homed on its node: it
counts hidden states only, both ways, so it sits below the counters by the slot ids and weights
(6 x 12 bytes per worker call and token). The cost model's speed-up is its MoE-layer time of EPLB over
affinity on the same tokens, with the link rate as the network bandwidth; it ignores per-call latency
and the CPU cost of each Ray call, which dominate on this two-core machine.

Rerun (root, from the repository root; the whole table takes ~10 minutes here, `--quick` ~3):

    sudo .venv/bin/python -m bench.multihost --out docs/benchmarks/multihost.md
    sudo .venv/bin/python -m bench.multihost --quick
    sudo .venv/bin/python -m pytest tests/test_multihost.py -m netns   # the end-to-end check
"""


if __name__ == "__main__":
    main(__doc__, "bench.multihost", "esft", add_arguments, measure, arch="deepseek-v2")

"""What affinity's refinement costs at DeepSeek-V3 scale, piece by piece (issue 17's 2 s target).

    python -m bench.placement_v3_floor --out docs/benchmarks/placement-v3-floor.md   (~3 min)

On the statistics `bench.placement` times (58 layers x 256 experts, top-8, 4096 tokens, seed 0) and
issue 17's topology (32 nodes x 8 GPUs x 9 slots = 2304 slots per layer), times each step the policy
takes before and during refinement, summed over the 58 layers: the seeding-only plan, its METIS and
lockstep-seeding parts, the sampled rows, one score of the start (the model of the runtime's rule,
`set_routing.route_sets`, then the counts) per layer, called layer by layer and for all layers at once
(`partition.score_layers`, as the policy's lockstep refinement does), and one round's swap table
(`partition._ranked_swaps`) on 512 candidate vertices. A plan with refinement costs at least the
seeding plus one score of every layer; each round adds a swap table per layer and at least one more
score. Each time is the median of `REPEATS` runs.

Then the whole plan against the target (`V3_PLAN_S`): `AffinityPolicy(sampled_rounds=...)` seeded only,
refined one round and the benchmark's `V3_SAMPLED_ROUNDS`, planned in one process and with the layers split
over one forked process per CPU (`processes=None`, `placement.forked`), the runs alternating, and
whether the two plans are the same.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.placement import V3_EXPERTS, V3_LAYERS, V3_PLAN_S, V3_SAMPLED_ROUNDS, V3_TOKENS, V3_TOP_K, V3_TOPOLOGIES
from bench.report import command_line, provenance, publish
from switchyard.cluster.cli.formatting import markdown_table
from switchyard.placement.partition import (Layout, LoadCap, _ranked_swaps, _swap_candidates, expert_vertices, score,
                                            score_layers)
from switchyard.placement.policies.affinity import (_SWAP_VERTICES, AffinityPolicy, _sampled_row_count, layer_rows,
                                                    sampled_rows)
from switchyard.placement.seeding import graph_partition, initial_layouts, replica_counts
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace

REPEATS = 3
ROW_COUNTS = (256, 1024)  # sampled rows per layer: the policy's (at 2304 slots) and 4x more
TARGET_ROUNDS = (0, 1, V3_SAMPLED_ROUNDS)  # `sampled_rounds` of the plans timed against the target (0: seeding)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown file to write.")
    args = parser.parse_args()
    lines = ["# Affinity refinement at DeepSeek-V3 scale: what each step costs", "",
             provenance(command_line("bench.placement_v3_floor"), ("numpy",)), ""]
    stats = RoutingStats.from_trace(synthetic_trace(V3_LAYERS, V3_EXPERTS, V3_TOP_K, V3_TOKENS, seed=0))
    lines += floor_section(stats)
    lines += ["", *target_section(stats)]
    publish("\n".join(lines), args.out)


def floor_section(stats: RoutingStats) -> list[str]:
    """The table of steps and their seconds over all layers, with the sentence that sums them."""
    topology = V3_TOPOLOGIES[2]
    policy = AffinityPolicy()
    layers = range(stats.num_layers)
    caps = stats.load.sum(axis=1) / topology.num_gpus * (1 + policy.max_imbalance)
    replicas = np.stack([replica_counts(load, topology.num_slots, topology.num_gpus) for load in stats.load])
    preferred = np.stack([graph_partition(stats.pair_counts[layer], stats.load[layer], topology, policy.seed)
                          for layer in layers])
    experts, gpus = initial_layouts(stats.pair_counts, stats.load, replicas, preferred, topology, caps)
    vertices = [expert_vertices(experts[layer], stats.num_experts) for layer in layers]
    limits = [LoadCap.per_window(stats.windows[:, layer], topology.num_gpus, policy.max_imbalance) for layer in layers]
    full_rows = [layer_rows(stats, layer, topology, policy.remote_node_weight, np.random.default_rng([policy.seed, layer]))
                 for layer in layers]
    sampled = {count: [sampled_rows(rows, count, np.random.default_rng([policy.seed, layer]))
                       for layer, rows in enumerate(full_rows)] for count in ROW_COUNTS}
    starts = [score(rows, vertices[layer], gpus[layer], topology, limits[layer])
              for layer, rows in enumerate(sampled[ROW_COUNTS[0]])]

    def swap_tables() -> None:
        for layer, rows in enumerate(sampled[ROW_COUNTS[0]]):
            subset = _swap_candidates(rows, starts[layer], experts[layer], gpus[layer], topology, limits[layer],
                                      _SWAP_VERTICES)
            _ranked_swaps(rows, starts[layer], experts[layer], gpus[layer], topology, limits[layer], subset)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("plan, seeding only (`AffinityPolicy().place`)", lambda: policy.place(stats, topology)),
        ("of which, METIS, nodes then GPUs (`seeding.graph_partition`)",
         lambda: [graph_partition(stats.pair_counts[layer], stats.load[layer], topology, policy.seed)
                  for layer in layers]),
        ("of which, lockstep seeding under the cap (`seeding.initial_layouts`)",
         lambda: initial_layouts(stats.pair_counts, stats.load, replicas, preferred, topology, caps)),
        (f"rows: every layer's sets, sampled to {ROW_COUNTS[0]} (`layer_rows`, `sampled_rows`)",
         lambda: [sampled_rows(layer_rows(stats, layer, topology, policy.remote_node_weight, rng), ROW_COUNTS[0], rng)
                  for layer, rng in ((layer, np.random.default_rng([policy.seed, layer])) for layer in layers)]),
    ]
    for count in ROW_COUNTS:
        steps.append((f"one score per layer, {count} rows (`partition.score`: routing and counts)",
                      lambda rows=sampled[count]: [score(one, vertices[layer], gpus[layer], topology, limits[layer])
                                                   for layer, one in enumerate(rows)]))
        steps.append((f"the same scores, all layers in one call (`partition.score_layers`), {count} rows",
                      lambda rows=sampled[count]: score_layers(
                          [Layout(one, vertices[layer], gpus[layer], limits[layer]) for layer, one in enumerate(rows)],
                          topology)))
    steps.append((f"one round's swap table per layer, {_SWAP_VERTICES} vertices, {ROW_COUNTS[0]} rows "
                  "(`_swap_candidates`, `_ranked_swaps`)", swap_tables))
    seconds = {name: _median_seconds(step) for name, step in steps}
    rows = [[name, f"{value:.3f}", f"{value / stats.num_layers * 1000:.1f}"] for name, value in seconds.items()]
    plan, start, table = (seconds[steps[0][0]], seconds[steps[5][0]], seconds[steps[-1][0]])
    work = _sampled_row_count(topology)
    return [
        f"{stats.num_layers} layers x {topology.num_slots} slots ({topology.describe()}), statistics of a "
        f"{V3_TOKENS}-token synthetic trace (seed 0); the policy samples {work} rows per layer at this size. "
        f"Seconds over all layers and milliseconds per layer, median of {REPEATS} runs.", "",
        markdown_table(["step", "seconds, all layers", "ms per layer"], rows, numeric_from=1), "",
        f"Before the first swap a refined plan costs the seeding plus one score of every layer, all in one "
        f"call: {plan:.2f} + {start:.2f} = {plan + start:.2f} s; each round adds a swap table per layer "
        f"({table:.2f} s) and at least one more score.",
    ]


def target_section(stats: RoutingStats) -> list[str]:
    """The plan's seconds, in one process and in one per CPU, against `V3_PLAN_S`."""
    topology = V3_TOPOLOGIES[2]
    processes = AffinityPolicy(processes=None).process_count(stats, topology)
    rows = []
    for rounds in TARGET_ROUNDS:
        plans, times = {}, {count: [] for count in sorted({1, processes})}
        for _ in range(REPEATS):  # alternating, so that both see the same load on the machine
            for count in times:
                started = time.perf_counter()
                plans[count] = AffinityPolicy(sampled_rounds=rounds, processes=count).place(stats, topology)
                times[count].append(time.perf_counter() - started)
        seconds = {count: statistics.median(values) for count, values in times.items()}
        same = plans[1].physical_to_logical.tobytes() == plans[processes].physical_to_logical.tobytes()
        for count in times:
            met = "met" if seconds[count] <= V3_PLAN_S else f"missed by {seconds[count] - V3_PLAN_S:.2f} s"
            rows.append([f"`sampled_rounds={rounds}`" if rounds else "none (seeding only)", str(count), f"{seconds[count]:.2f}",
                         f"{seconds[1] / seconds[count]:.2f}x", met, "yes" if same else "NO"])
    return [
        f"## The plan against the {V3_PLAN_S:.0f} s target, in one process and in {processes}", "",
        f"`AffinityPolicy(sampled_rounds=R, processes=n).place` on the same statistics and topology, in one "
        f"process and in {processes} (`processes=None`: one per CPU this process may use; layer i in process "
        f"i mod {processes}, process 0 this one, the others forked). Seconds, median of {REPEATS} runs; the runs "
        "of a row pair alternate.", "",
        markdown_table(["refinement", "processes", "seconds", "speed-up", f"{V3_PLAN_S:.0f} s target",
                        "same plan as 1 process"], rows, numeric_from=1),
    ]


def _median_seconds(step: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()

"""The DeepSeek-V3 floor benchmark's stacked routing: one `route_sets` call over all layers gives each
layer the pins of its own call, which is what lets the benchmark compare the two timings."""

from __future__ import annotations

import numpy as np

from bench.placement_v3_floor import stacked_routing
from switchyard.placement.partition import LayerRows, expert_vertices
from switchyard.placement.seeding import graph_partition, initial_layouts, replica_counts
from switchyard.placement.set_routing import route_sets
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology


def test_stacked_routing_gives_every_layer_its_own_pins() -> None:
    topology = Topology(2, 4, 8)  # 64 slots for 32 experts: 6 to 7 replicas of the busiest, so picks spread
    stats = RoutingStats.from_trace(synthetic_trace(3, 32, 4, 2000, skew=1.5, seed=0))
    replicas = np.stack([replica_counts(load, topology.num_slots, topology.num_gpus) for load in stats.load])
    preferred = np.stack([graph_partition(stats.pair_counts[layer], stats.load[layer], topology, 0)
                          for layer in range(stats.num_layers)])
    experts, gpus = initial_layouts(stats.pair_counts, stats.load, replicas, preferred, topology,
                                    np.full(stats.num_layers, np.inf))
    # Whole token counts: the water-filling's running sums over the picks of a call are then exact,
    # whichever other layers' picks share the call (with fractional weights they round differently).
    rng = np.random.default_rng(0)
    rows = [LayerRows(sets, counts, rng.integers(topology.num_nodes, size=len(sets)), counts)
            for sets, counts in zip(stats.topk_sets, stats.set_counts)]
    vertices = [expert_vertices(experts[layer], stats.num_experts) for layer in range(stats.num_layers)]
    assert len({table.shape[1] for table in vertices}) > 1  # layers of different widths are padded
    stacked = stacked_routing(rows, vertices, gpus, topology.node_of_gpu)
    for layer, one in enumerate(rows):
        pins, _ = route_sets(one.sets, one.weight, one.home, vertices[layer], gpus[layer], topology.node_of_gpu)
        assert stacked[layer].tolist() == pins.tolist()

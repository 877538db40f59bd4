"""Round-robin placement: experts dealt to GPUs like cards, expert e on GPU e % G.

Slots are dealt in rounds: the i-th slot dealt is slot i // G of GPU i % G, so every GPU gets exactly S.
The i-th slot holds expert `(i + i // M) % E` with `M = lcm(E, G)`:
- the first E slots hold experts 0 .. E-1, so expert e lands on GPU e % G;
- redundant slots continue the cycle 0, 1, 2, ... (a load-agnostic baseline has no reason to prefer
  an expert);
- every M slots the cycle shifts by one. Without the shift, GPU g would meet the same expert again
  after M / G of its slots, i.e. hold it twice whenever S > E / gcd(E, G) (64 experts on 8 GPUs with
  9 slots each). A lap of M slots gives GPU g the experts of one residue class mod gcd(E, G) and the
  shift moves the next lap to the next class, so a GPU repeats an expert only if S > E, which
  `check_capacity` rules out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from switchyard.placement.plan import Plan
from switchyard.placement.policies.base import check_capacity
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology


@dataclass(frozen=True)
class RoundRobinPolicy:
    """Strided placement: the same in every layer, independent of the load."""

    name: ClassVar[str] = "round-robin"

    def place(self, stats: RoutingStats, topology: Topology, current: Plan | None = None) -> Plan:
        num_experts, num_gpus, slots_per_gpu = stats.num_experts, topology.num_gpus, topology.slots_per_gpu
        check_capacity(num_experts, topology)
        lap = math.lcm(num_experts, num_gpus)
        # [S, G] int64: the deal order, row j = the j-th slot of every GPU.
        dealt = np.arange(topology.num_slots, dtype=np.int64).reshape(slots_per_gpu, num_gpus)
        experts = (dealt + dealt // lap) % num_experts
        # Slot p = g * S + j, so GPU-major order is the transpose.
        row = experts.T.reshape(-1)
        return Plan(np.tile(row, (stats.num_layers, 1)), topology, num_experts)

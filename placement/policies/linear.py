"""The trivial placement: slot p holds expert p % E.

Experts fill the slots in id order, GPU by GPU; when there are redundant slots the list starts again
from expert 0. This is what SGLang's `init_trivial` and vLLM without EPLB do, and the baseline every
other policy is measured against. It ignores the statistics except for their shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from switchyard.placement.plan import Plan
from switchyard.placement.policies.base import check_capacity
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology


@dataclass(frozen=True)
class LinearPolicy:
    """Contiguous placement: GPU g holds experts g*S .. g*S + S - 1 (mod E), the same in every layer.

    A GPU's S consecutive ids are distinct because S <= E (checked), so the plan is always valid.
    """

    name: ClassVar[str] = "linear"

    def place(self, stats: RoutingStats, topology: Topology, current: Plan | None = None) -> Plan:
        num_experts = stats.num_experts
        check_capacity(num_experts, topology)
        # [P] int64: the logical expert of every slot.
        row = np.arange(topology.num_slots, dtype=np.int64) % num_experts
        return Plan(np.tile(row, (stats.num_layers, 1)), topology, num_experts)

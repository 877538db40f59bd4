"""What every placement policy is: a stateless function of routing statistics and a topology.

A policy answers "which expert goes in which slot" and nothing else: when to rebalance is the
rebalancer's job (`cluster/`), how weights move is the workers' (`workers/`), and keeping replicas that
are already in place in their slots is `migration.plan_migration`'s.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology


class Policy(Protocol):
    """A placement policy. Implementations hold only their options and keep no state between calls."""

    name: ClassVar[str]  # the registry key in `POLICIES`, e.g. "eplb"

    def place(self, stats: RoutingStats, topology: Topology, current: Plan | None = None) -> Plan:
        """A plan for `stats.num_layers` layers of `stats.num_experts` experts on `topology`.

        `current` is the plan in use, for policies that weigh the cost of moving experts; policies that
        plan from the statistics alone ignore it.
        """
        ...


def check_capacity(num_experts: int, topology: Topology) -> None:
    """Raise `PlacementError` unless every expert can have a replica and no GPU must repeat one.

    Every expert needs a slot (P >= E), and a GPU with more slots than there are experts would have to
    hold some expert twice, which a `Plan` forbids (S <= E).
    """
    if topology.num_slots < num_experts:
        raise PlacementError(
            f"{topology.describe()} has {topology.num_slots} slots per layer, fewer than the "
            f"{num_experts} experts; use at least {-(-num_experts // topology.num_gpus)} slots per GPU"
        )
    if topology.slots_per_gpu > num_experts:
        raise PlacementError(
            f"slots_per_gpu={topology.slots_per_gpu} exceeds the {num_experts} experts, so some GPU would "
            "hold one expert twice; use fewer slots per GPU"
        )

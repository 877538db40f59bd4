"""Switchyard's affinity policy inside vLLM's own EPLB loop.

vLLM rebalances experts by calling `rebalance_experts` on the class named by its EPLB config
(`vllm.distributed.eplb.policy.EPLB_POLICIES`). `AffinityEplbPolicy` implements that contract with
`placement.policies.affinity.AffinityPolicy`, so a vLLM deployment can run Switchyard's optimiser
where it runs DeepSeek's EPLB today (for example by registering it in that table from a vLLM plugin).

What vLLM passes is only the load window, `[layers, logical experts]` token counts: no co-activation.
With load alone the affinity policy has nothing to co-locate, so here it balances load (its imbalance
cap is 0: every GPU as close to the mean as swaps can bring it) and spreads the replicas of hot
experts over nodes, which keeps more picks on their home node. The locality gains of the affinity
policy need top-k sets, which Switchyard's own runtime records.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy

from switchyard.placement.errors import PlacementError
from switchyard.placement.migration import plan_migration
from switchyard.placement.plan import Plan
from switchyard.placement.policies.affinity import AffinityPolicy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology


class AffinityEplbPolicy(AbstractEplbPolicy):
    """vLLM's EPLB policy contract, answered by the affinity policy on load alone (module docstring)."""

    @classmethod
    def rebalance_experts(
        cls,
        weight: torch.Tensor,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The new physical-to-logical map.

        weight: `[L, E]` load of every logical expert in the window.
        num_replicas: physical experts per layer (P), a multiple of `num_ranks`.
        num_groups: expert groups of group-limited routing; unused (the policy places experts one by
            one, so every group layout is allowed).
        num_nodes: N; num_ranks: GPUs (G), a multiple of N.
        old_global_expert_indices: `[L, P]` the map in use, or None; when given, experts that stay on
            a GPU keep their slot there (fewer weight copies), as vLLM's default policy does.
        Returns `[L, P]` int64: the logical expert of every physical slot.
        """
        if num_ranks % num_nodes or num_replicas % num_ranks:
            raise PlacementError(
                f"num_ranks={num_ranks} must be a multiple of num_nodes={num_nodes} and "
                f"num_replicas={num_replicas} a multiple of num_ranks"
            )
        stats = RoutingStats.from_load(weight.float().cpu().numpy().astype(np.float64))
        topology = Topology(num_nodes, num_ranks // num_nodes, num_replicas // num_ranks)
        plan = AffinityPolicy(max_imbalance=0.0).place(stats, topology)
        if old_global_expert_indices is not None:
            old = old_global_expert_indices.cpu().numpy()
            if old.shape == plan.physical_to_logical.shape and old.min() >= 0:
                plan = plan_migration(Plan(old, topology, stats.num_experts), plan).aligned
        return torch.from_numpy(plan.physical_to_logical.copy())

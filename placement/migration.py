"""From the plan in service to a proposed one: which expert weights must be copied where.

A policy says which experts each GPU should hold, not in which of its slots; slot order within a GPU
is free. So the proposed plan is first *aligned* to the current one: on every GPU, each expert it
already holds and keeps stays in its current slot, and the experts it gains fill the slots it frees,
in the proposed plan's slot order. Only the gained experts are copied. Copies read the current plan's
weights, which stay in service until every engine has switched (DESIGN.md: copy in, switch epoch,
drop old copies), so copies do not depend on one another.

Source choice for a copy, best first: a replica on the target's GPU, then on the target's node (NVLink),
then anywhere (network); ties go to the lowest slot. After alignment no expert is gained by a GPU that
already holds it, so the first case never arises; the order is stated for completeness of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from switchyard.placement.plan import Plan

COPY_DTYPE = np.dtype([("layer", np.int64), ("expert", np.int64), ("source_slot", np.int64),
                       ("target_slot", np.int64)])


@dataclass(frozen=True, eq=False)
class Migration:
    """The copies that turn `current` into `aligned`.

    aligned: the proposed plan with slots re-ordered within each GPU so kept replicas stay in place;
      equal to the proposed plan up to slot order within each GPU.
    copies: `[C]` structured array of COPY_DTYPE, one row per slot whose expert changes, sorted by
      (layer, target_slot): copy `expert` from `source_slot` of the current plan into `target_slot`.
    """

    aligned: Plan
    copies: np.ndarray

    @property
    def num_copies(self) -> int:
        return len(self.copies)

    def bytes_moved(self, expert_bytes: int) -> int:
        """Bytes copied when one expert's weights are `expert_bytes` (`ClusterSpec.expert_bytes`)."""
        return self.num_copies * int(expert_bytes)


def plan_migration(current: Plan, proposed: Plan) -> Migration:
    """Align `proposed` to `current` and list the copies it needs.

    Raises `PlacementError` when the plans differ in topology, layer count or expert count.
    """
    current.topology.check_same(proposed.topology, "cannot migrate between topologies: the proposed plan")
    proposed.check_matches(current.num_layers, current.num_logical_experts, "the current plan")
    topology = current.topology
    num_layers, num_gpus, num_experts = current.num_layers, topology.num_gpus, current.num_logical_experts
    old, new = current.gpu_experts, proposed.gpu_experts  # [L, G, S] each
    layer = np.arange(num_layers)[:, None, None]
    gpu = np.arange(num_gpus)[None, :, None]
    holds_old = np.zeros((num_layers, num_gpus, num_experts), dtype=bool)  # [L, G, E]
    holds_old[layer, gpu, old] = True
    holds_new = np.zeros_like(holds_old)
    holds_new[layer, gpu, new] = True
    kept = holds_new[layer, gpu, old]  # [L, G, S] current slots whose expert stays on its GPU
    gained = ~holds_old[layer, gpu, new]  # [L, G, S] proposed experts the GPU does not hold yet
    # Per GPU the freed slots and the gained experts are equally many; row-major order pairs them up
    # GPU by GPU, freed slots ascending, gained experts in proposed slot order.
    aligned = old.copy()
    aligned[~kept] = new[gained]
    aligned_plan = Plan(aligned.reshape(num_layers, -1), topology, num_experts)

    copy_layer, target = np.nonzero(~kept.reshape(num_layers, -1))  # [C] each, sorted by (layer, slot)
    expert = aligned_plan.physical_to_logical[copy_layer, target]
    sources = current.logical_to_physical[copy_layer, expert]  # [C, R] -1 padded
    distance = (2 * (topology.node_of_slot[sources] != topology.node_of_slot[target][:, None])
                + (topology.gpu_of_slot[sources] != topology.gpu_of_slot[target][:, None]))
    key = np.where(sources >= 0, distance * topology.num_slots + sources, np.iinfo(np.int64).max)
    source = sources[np.arange(len(sources)), key.argmin(axis=1)]
    copies = np.empty(len(target), dtype=COPY_DTYPE)
    copies["layer"], copies["expert"], copies["source_slot"], copies["target_slot"] = (
        copy_layer, expert, source, target)
    return Migration(aligned_plan, copies)

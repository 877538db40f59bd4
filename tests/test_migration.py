"""Migration plans: which replicas stay put, which are copied, and from where."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.cost import PRESETS
from switchyard.placement.errors import PlacementError
from switchyard.placement.migration import plan_migration
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology

# 1 node x 2 GPUs x 2 slots: GPU 0 holds experts 0, 1 (slots 0, 1); GPU 1 holds 2, 3 (slots 2, 3).
LINEAR = Plan(np.array([[0, 1, 2, 3]]), Topology(1, 2, 2), 4)


def copies_of(migration) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in row) for row in migration.copies.tolist()]


@pytest.mark.parametrize(
    "proposed",
    [[[0, 1, 2, 3]], [[1, 0, 3, 2]]],
    ids=["identical", "reordered-within-gpus"],
)
def test_same_experts_per_gpu_need_no_copies(proposed):
    migration = plan_migration(LINEAR, Plan(np.array(proposed), LINEAR.topology, 4))
    assert migration.num_copies == 0
    assert migration.aligned == LINEAR
    assert migration.bytes_moved(PRESETS["h100"].expert_bytes) == 0


def test_swap_copies_both_experts():
    # Experts 1 and 2 trade GPUs. GPU 0 keeps 0 in slot 0 and gains 2 in its freed slot 1; GPU 1 keeps
    # 3 in slot 3 and gains 1 in slot 2. Sources are the only replicas (other GPU, same node).
    migration = plan_migration(LINEAR, Plan(np.array([[0, 2, 1, 3]]), LINEAR.topology, 4))
    assert migration.aligned.physical_to_logical.tolist() == [[0, 2, 1, 3]]
    assert copies_of(migration) == [(0, 2, 2, 1), (0, 1, 1, 2)]
    assert migration.num_copies == 2
    assert migration.bytes_moved(1000) == 2000


def test_kept_replicas_stay_in_their_slots():
    # Proposed GPU 0 lists (3, 0): expert 0 stays in slot 0 and 3 fills slot 1, whatever the proposed order.
    migration = plan_migration(LINEAR, Plan(np.array([[3, 0, 1, 2]]), LINEAR.topology, 4))
    assert migration.aligned.physical_to_logical.tolist() == [[0, 3, 2, 1]]
    assert copies_of(migration) == [(0, 3, 3, 1), (0, 1, 1, 3)]


def test_source_prefers_the_target_node():
    # 2 nodes x 2 GPUs x 2 slots; expert 0 on slot 0 (node 0) and slot 5 (GPU 2, node 1).
    topology = Topology(2, 2, 2)
    current = Plan(np.array([[0, 1, 2, 3, 4, 0, 5, 2]]), topology, 6)
    # GPU 3 (node 1) swaps expert 2 for a third replica of expert 0: slot 5 on its own node beats the
    # lower slot 0 on node 0.
    migration = plan_migration(current, Plan(np.array([[0, 1, 2, 3, 4, 0, 5, 0]]), topology, 6))
    assert copies_of(migration) == [(0, 0, 5, 7)]


@pytest.mark.parametrize("seed", range(5), ids=lambda seed: f"seed{seed}")
def test_aligned_plan_invariants(seed, random_plan):
    rng = np.random.default_rng(seed)
    topology = Topology(2, 2, 4)
    current, proposed = (random_plan(rng, topology, num_layers=3, num_experts=12) for _ in range(2))
    migration = plan_migration(current, proposed)
    aligned = migration.aligned
    # Equal to the proposed plan up to slot order within each GPU.
    np.testing.assert_array_equal(np.sort(aligned.gpu_experts, axis=2), np.sort(proposed.gpu_experts, axis=2))
    # A slot changes exactly when its current expert leaves that GPU, and then it is copied.
    old, new = current.gpu_experts, aligned.gpu_experts
    leaves = ~(old[..., :, None] == proposed.gpu_experts[..., None, :]).any(axis=3)
    np.testing.assert_array_equal(new != old, leaves)
    changed = np.argwhere(aligned.physical_to_logical != current.physical_to_logical)
    copies = migration.copies
    assert migration.num_copies == len(changed)
    np.testing.assert_array_equal(np.stack([copies["layer"], copies["target_slot"]], axis=1), changed)
    np.testing.assert_array_equal(aligned.physical_to_logical[copies["layer"], copies["target_slot"]],
                                  copies["expert"])
    np.testing.assert_array_equal(current.physical_to_logical[copies["layer"], copies["source_slot"]],
                                  copies["expert"])


@pytest.mark.parametrize(
    ("proposed", "message"),
    [
        (Plan(np.array([[0, 1, 2, 3]]), Topology(2, 1, 2), 4), "topologies"),
        (Plan(np.array([[0, 1, 2, 3]] * 2), Topology(1, 2, 2), 4), "2 layers"),
        (Plan(np.array([[0, 1, 2, 0]]), Topology(1, 2, 2), 3), "places 3 experts"),
    ],
    ids=["topology", "layers", "experts"],
)
def test_mismatched_plans_raise(proposed, message):
    with pytest.raises(PlacementError, match=message):
        plan_migration(LINEAR, proposed)

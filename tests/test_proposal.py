"""Rebalance proposals (`placement.proposal`): valid plans, gains on a clustered trace, the move budget."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.cost import PRESETS
from switchyard.placement.errors import PlacementError
from switchyard.placement.policies import get_policy
from switchyard.placement.policies.affinity import AffinityPolicy
from switchyard.placement.proposal import evaluate_proposal, memory_dict, memory_text, propose, set_traces
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology

H100 = PRESETS["h100"]


@pytest.fixture(scope="module")
def window():
    """Stats of a clustered trace (4 layers x 16 experts, top-4) and the linear plan in service."""
    stats = RoutingStats.from_trace(synthetic_trace(4, 16, 4, 2048, skew=1.2, seed=3))
    topology = Topology.for_experts(16, 2, 2, 5)
    return stats, get_policy("linear").place(stats, topology)


def test_affinity_proposal_is_valid_and_gains_over_linear(window):
    stats, current = window
    proposal = propose(stats, current, "affinity", cluster=H100)
    plan = proposal.proposed
    assert plan.topology == current.topology and (plan.replica_count >= 1).all()
    per_gpu = np.sort(plan.gpu_experts, axis=2)
    assert not (per_gpu[:, :, 1:] == per_gpu[:, :, :-1]).any()  # no GPU holds an expert twice
    assert proposal.migration.num_copies > 0
    assert proposal.bytes_moved == proposal.migration.num_copies * H100.expert_bytes
    assert proposal.copies_per_layer.sum() == proposal.migration.num_copies
    assert proposal.after.gpus_per_token < proposal.before.gpus_per_token
    assert proposal.after.layer_time_s is not None and proposal.after.layer_time_s < proposal.before.layer_time_s
    assert proposal.evaluated_tokens == 4 * 2048  # every sampled token, one set per token
    summary = proposal.to_dict()
    assert summary["replicas_moved"] == proposal.migration.num_copies and summary["policy"] == "affinity"


def test_affinity_plans_for_the_cluster_the_proposal_models(window):
    """A rebalance's affinity plan is `AffinityPolicy(cluster=...)`'s for the cluster the proposal is
    modelled on (remote nodes and load above the cap priced by it), from the plan in service: a slower
    network gives another plan; without a cluster, the unpriced one. Four nodes of one GPU, where the
    network's price decides most (on 2 x 2 GPUs both presets' best layouts here are the same)."""
    stats, _ = window
    current = get_policy("linear").place(stats, Topology.for_experts(16, 4, 1, 5))
    proposed = {}
    for cluster in (H100, PRESETS["h100-100gbit"], None):
        proposed[cluster] = propose(stats, current, "affinity", cluster=cluster).proposed
        planned = AffinityPolicy(cluster=cluster).place(stats, current.topology, current=current)
        assert proposed[cluster] == evaluate_proposal(stats, current, planned, cluster).proposed
    assert proposed[H100] != proposed[PRESETS["h100-100gbit"]] and proposed[H100] != proposed[None]


def test_zero_moves_keeps_the_plan_and_its_figures(window):
    stats, current = window
    proposal = propose(stats, current, "affinity", max_moves=0, cluster=H100)
    assert proposal.migration.num_copies == 0 and proposal.bytes_moved == 0
    assert proposal.proposed == current
    assert proposal.after == proposal.before


def test_policies_that_plan_afresh_are_aligned_and_refuse_a_budget(window):
    stats, current = window
    proposal = propose(stats, current, "eplb")
    kept = (proposal.proposed.physical_to_logical == current.physical_to_logical).sum()
    assert kept + proposal.migration.num_copies == current.physical_to_logical.size
    assert proposal.bytes_moved == 0 and proposal.after.layer_time_s is None  # no cluster given
    with pytest.raises(PlacementError, match="cannot bound the moves"):
        propose(stats, current, "eplb", max_moves=3)


def test_load_only_statistics_give_balancedness_only(window):
    stats, current = window
    proposal = propose(RoutingStats.from_load(stats.load), current, "eplb")
    assert proposal.evaluated_tokens == 0 and proposal.after.gpus_per_token is None
    assert proposal.after.balancedness >= proposal.before.balancedness


@pytest.mark.parametrize("change, message", [
    (lambda s: RoutingStats.from_load(np.zeros_like(s.load), 0.0), "no tokens"),
    (lambda s: RoutingStats.from_load(s.load[:, :8]), "statistics"),
], ids=["empty", "shape"])
def test_bad_windows_are_placement_errors(window, change, message):
    stats, current = window
    with pytest.raises(PlacementError, match=message):
        propose(change(stats), current)
    with pytest.raises(PlacementError, match="unknown policy"):
        propose(stats, current, "nope")


def test_set_traces_scale_large_windows(window):
    stats, _ = window
    traces = set_traces(stats, max_tokens=100)
    assert [trace.num_tokens for trace in traces] == [100] * 4
    assert traces[0].topk_ids.shape[1:] == (1, 4) and len(traces[0].seq_lens) == traces[0].num_tokens


def test_what_a_proposal_was_planned_on_in_json_and_words():
    """The memory alone, with resampled draws, and an event recorded before draws were reported."""
    assert memory_dict(None, (4, 8.0)) is None
    plain, drawn = memory_dict((3, 0.5)), memory_dict((3, 0.5), (16, 250.0))
    assert plain == {"windows": 3, "decay": 0.5, "resampled": None}
    assert drawn == {"windows": 3, "decay": 0.5, "resampled": {"windows": 16, "run_tokens": 250.0}}
    assert memory_text(plain) == memory_text({"windows": 3, "decay": 0.5}) == \
        "the last 3 window(s), each older one weighted 0.5 of the next"
    assert memory_text(drawn) == ("the last 3 window(s), each older one weighted 0.5 of the next, "
                                  "as 16 windows drawn from their runs of 250 tokens")

"""The balance feedback: the served balance gap to EPLB sets affinity's price of overload, window by
window, in `serve_windows` and across the gateway's rebalances alike."""

from __future__ import annotations

import pytest

from switchyard.cluster.rebalance.feedback import FeedbackMemory
from switchyard.cluster.state.store import MAX_PRICED, PricedPlan
from switchyard.placement.cost import PRESETS
from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import evaluate
from switchyard.placement.feedback import BalanceFeedback, applies_to, at_level
from switchyard.placement.policies import get_policy, planning_policy
from switchyard.placement.proposal import evaluate_proposal, served_gap
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.windows import serve_windows

CLUSTER = PRESETS["h100"]
TRACE = synthetic_trace(2, 32, 4, 2048, seq_len=64, seed=3)
TOPOLOGY = Topology(2, 2, 8)


@pytest.mark.parametrize("level, gap, expected", [
    (0, -0.011, 1), (1, -0.05, 2), (2, -0.5, 2),  # dearer, up to max_level
    (2, 0.011, 1), (0, 0.05, 0),  # cheaper, down to the model's price
    (1, -0.01, 1), (1, 0.0, 1), (1, 0.01, 1),  # within the tolerance: kept
])
def test_the_served_gap_moves_the_level_by_one(level: int, gap: float, expected: int) -> None:
    assert BalanceFeedback().next_level(level, gap) == expected


def test_a_level_is_the_models_price_times_the_step() -> None:
    feedback = BalanceFeedback()
    assert [feedback.factor(level) for level in range(feedback.max_level + 1)] == [1.0, 4.0, 16.0]
    affinity = planning_policy("affinity", CLUSTER)
    priced = at_level(affinity, feedback, 2)
    assert priced.overload_price(TOPOLOGY) == pytest.approx(16 * affinity.overload_price(TOPOLOGY))
    eplb = get_policy("eplb")
    assert applies_to("affinity") and not applies_to("eplb") and not applies_to("fastest")
    assert at_level(eplb, feedback, 2) is eplb


@pytest.mark.parametrize("options, message", [
    ({"tolerance": 0}, "tolerance must be in"), ({"step": 1}, "step must be above 1"),
    ({"max_level": -1}, "max_level must be a non-negative integer"), ({"max_level": 1.5}, "max_level"),
])
def test_bad_feedback_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        BalanceFeedback(**options)


@pytest.mark.parametrize("bad", [0, -1.0, True, "4"])
def test_affinity_refuses_a_bad_overload_factor(bad) -> None:
    with pytest.raises(PlacementError, match="overload_factor must be a positive number"):
        get_policy("affinity", overload_factor=bad)


def test_dearer_overload_trades_locality_for_balance() -> None:
    """The knob the feedback turns: at 4x and 16x the model's price the plan is better balanced on the
    traffic it was made on, and its tokens use more GPUs."""
    stats = RoutingStats.from_trace(TRACE)
    figures = [evaluate(planning_policy("affinity", CLUSTER, overload_factor=factor).place(stats, TOPOLOGY), TRACE)
               for factor in (1, 4, 16)]
    balance = [figure.balancedness for figure in figures]
    gpus = [figure.gpus_per_token for figure in figures]
    assert balance == sorted(balance) and balance[0] < balance[-1]
    assert gpus == sorted(gpus) and gpus[0] < gpus[-1]


def test_serve_windows_moves_the_level_by_each_served_gap() -> None:
    """Every window's affinity plan is priced at the level that the gaps of the windows before it set,
    starting at the model's price; on this trace affinity trails EPLB at first, so the level rises.
    Without EPLB among the policies the feedback plans it for reference: the same levels and plans."""
    feedback = BalanceFeedback()
    policies = {name: planning_policy(name, CLUSTER) for name in ("eplb", "affinity")}
    served = serve_windows(TRACE, TOPOLOGY, policies, 256, 0.5, 3, CLUSTER, feedback=feedback)
    level = 0
    for item in served:
        assert item.levels == {"affinity": level}
        level = feedback.next_level(level, item.evaluations["affinity"].balancedness
                                    - item.evaluations["eplb"].balancedness)
    assert max(item.levels["affinity"] for item in served) > 0
    alone = serve_windows(TRACE, TOPOLOGY, {"affinity": policies["affinity"]}, 256, 0.5, 3, CLUSTER, feedback=feedback)
    assert [item.levels for item in alone] == [item.levels for item in served]
    assert all(list(item.plans) == ["affinity"] and item.plans["affinity"] == twin.plans["affinity"]
               for item, twin in zip(alone, served))
    unfed = serve_windows(TRACE, TOPOLOGY, policies, 256, 0.5, 3, CLUSTER)
    assert all(item.levels == {} for item in unfed)
    assert unfed[0].plans["affinity"] == served[0].plans["affinity"]  # level 0: the model's price


def test_feedback_leaves_policies_without_its_option_alone() -> None:
    """Policies the feedback does not move plan as without it: no levels, no reference."""
    served = serve_windows(TRACE, TOPOLOGY, {"eplb": get_policy("eplb")}, 512, 0.5, 3, CLUSTER,
                           feedback=BalanceFeedback())
    assert all(item.levels == {} and list(item.plans) == ["eplb"] for item in served)


def test_the_gateways_memory_prices_the_next_plan_by_the_one_in_service() -> None:
    """`FeedbackMemory`: the plan in service's record and its served gap on the newest window, measured
    as a proposal measures plans, give the next level; an unknown plan starts at 0, an empty window
    keeps the level, and only the newest `MAX_PRICED` records are remembered (the state store's
    records: tests/test_state_store.py; shared by gateways: tests/test_gateway_rebalance.py)."""
    stats = RoutingStats.from_trace(TRACE)
    affinity = planning_policy("affinity", CLUSTER).place(stats, TOPOLOGY)
    eplb = get_policy("eplb").place(stats, TOPOLOGY)
    gap = served_gap(stats, affinity, eplb, CLUSTER)
    measured = evaluate_proposal(stats, affinity, eplb, CLUSTER)
    assert gap == pytest.approx(measured.before.balancedness - measured.after.balancedness)
    memory = FeedbackMemory(BalanceFeedback())
    assert memory.priced(affinity) is None and memory.next_level(affinity, stats, CLUSTER) == 0
    memory.remember(PricedPlan(affinity, 1, eplb))
    record = memory.priced(affinity)
    assert record is not None and record.level == 1
    assert memory.next_level(affinity, stats, CLUSTER) == BalanceFeedback().next_level(1, gap)
    empty = RoutingStats.from_load(stats.load * 0, 0.0)
    assert memory.next_level(affinity, empty, CLUSTER) == memory.next_level(affinity, None, CLUSTER) == 1
    for _ in range(MAX_PRICED):
        memory.remember(PricedPlan(eplb, 0, eplb))
    assert memory.priced(affinity) is None

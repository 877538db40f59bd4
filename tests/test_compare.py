"""`compare_policies` (plan on one window, evaluate on another) and the tables that show it."""

from __future__ import annotations

import pytest

from switchyard.cluster.cli.formatting import comparison_table, markdown_table
from switchyard.placement.compare import compare_policies, default_windows, token_window
from switchyard.placement.cost import PRESETS
from switchyard.placement.errors import PlacementError
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(3, 16, 2, 600, seq_len=50, seed=2)


@pytest.fixture(scope="module")
def topology():
    return Topology(2, 2, 5)  # 20 slots: 4 redundant


def test_default_windows_are_the_two_halves(trace) -> None:
    assert default_windows(trace) == ((0, 300), (300, None))


@pytest.mark.parametrize("train, test, expected_test_tokens", [
    (None, None, 300),
    ((0, 100), (100, 250), 150),
    ((None, 400), (400, None), 200),
], ids=["halves", "explicit", "open-ends"])
def test_each_policy_is_evaluated_on_the_test_window(trace, topology, train, test,
                                                     expected_test_tokens) -> None:
    results = compare_policies(trace, topology, ["linear", "eplb"], train, test, PRESETS["h100"])
    assert [r.policy for r in results] == ["linear", "eplb"]
    for result in results:
        assert result.evaluation.num_tokens == expected_test_tokens
        assert result.plan.topology == topology
        assert result.evaluation.layer_time_s > 0
        assert result.planning_time_s >= 0


def test_planning_sees_only_the_training_window(trace, topology) -> None:
    """EPLB plans from load, so the same training tokens give the same plan whatever the test window."""
    first = compare_policies(trace, topology, ["eplb"], (0, 200), (200, 300))[0].plan
    second = compare_policies(trace, topology, ["eplb"], (0, 200), (300, 600))[0].plan
    other = compare_policies(trace, topology, ["eplb"], (300, 600), (0, 300))[0].plan
    assert first == second
    assert first != other


def test_balance_tokens_hold_affinitys_cap_on_every_batch(trace, topology) -> None:
    """With `balance_tokens` the training statistics keep each batch's load: affinity, which holds its
    cap on each, plans otherwise; EPLB plans from the total load alone."""
    plans = {(name, tokens): compare_policies(trace, topology, [name], balance_tokens=tokens)[0].plan
             for name in ("affinity", "eplb") for tokens in (None, 50)}
    assert plans["affinity", None] != plans["affinity", 50]
    assert plans["eplb", None] == plans["eplb", 50]


def test_resampled_windows_plan_on_draws_of_the_training_windows_runs(trace, topology) -> None:
    """With `resampled_windows`, every policy plans on that many windows drawn from the training runs,
    each as many runs as the training window holds (`resampled_window`): affinity plans otherwise
    than on the runs themselves, EPLB (the load alone, which the draws keep) the same. Refused without
    `balance_tokens`."""
    from switchyard.placement.policies import planning_policy
    from switchyard.placement.stats import RoutingStats
    from switchyard.placement.windows import resampled_stats

    (result,) = compare_policies(trace, topology, ["affinity"], balance_tokens=50, resampled_windows=6)
    runs = RoutingStats.from_trace(trace.slice_tokens(0, trace.num_tokens // 2), window_tokens=50)
    drawn = resampled_stats(runs, len(runs.windows), 6)
    assert result.plan == planning_policy("affinity", None).place(drawn, topology)
    assert result.plan != compare_policies(trace, topology, ["affinity"], balance_tokens=50)[0].plan
    eplb = {draws: compare_policies(trace, topology, ["eplb"], balance_tokens=50, resampled_windows=draws)[0].plan
            for draws in (None, 6)}
    assert eplb[None] == eplb[6]
    with pytest.raises(PlacementError, match="give balance_tokens too"):
        compare_policies(trace, topology, ["eplb"], resampled_windows=6)


def test_without_a_cluster_there_is_no_time(trace, topology) -> None:
    (result,) = compare_policies(trace, topology, ["linear"])
    assert result.evaluation.layer_time_s is None


def test_an_empty_window_names_itself(trace) -> None:
    with pytest.raises(PlacementError, match="the test window 900: selects no tokens"):
        token_window(trace, (900, None), "the test window")


def test_an_unknown_policy_is_a_placement_error(trace, topology) -> None:
    with pytest.raises(PlacementError, match="unknown policy"):
        compare_policies(trace, topology, ["best"])


def test_markdown_table_aligns_numbers_right() -> None:
    assert markdown_table(["name", "x"], [["a", "1.5"], ["bcd", "10.25"]]).splitlines() == [
        "| name |     x |",
        "| ---- | ----: |",
        "| a    |   1.5 |",
        "| bcd  | 10.25 |",
    ]


def test_comparison_table_has_ratios_to_eplb_only_when_eplb_is_there(trace, topology) -> None:
    results = compare_policies(trace, topology, ["linear", "eplb"], cluster=PRESETS["h100"])
    with_eplb = comparison_table(results).splitlines()
    assert with_eplb[0].count("vs eplb") == 4  # balancedness, GPUs/token, remote nodes/token, time
    eplb_row = next(line for line in with_eplb if line.startswith("| eplb"))
    assert eplb_row.count("1.00x") == 4
    without = comparison_table(results[:1]).splitlines()
    assert "vs eplb" not in without[0] and "MoE time ms" in without[0]
    untimed = comparison_table(compare_policies(trace, topology, ["linear"])).splitlines()
    assert "MoE time ms" not in untimed[0]

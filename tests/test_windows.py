"""Window evaluation: windows cut in order, decayed statistics, plan on window i and serve window i + 1."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import evaluate
from switchyard.placement.plan import Plan
from switchyard.placement.policies.eplb import EplbPolicy
from switchyard.placement.policies.round_robin import RoundRobinPolicy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.cost import PRESETS
from switchyard.placement.windows import (
    FORECAST_WINDOWS, LONGER_MEMORIES, chosen_memory, decayed_stats, forecast_error, planning_stats,
    planning_windows, resampled_stats, serve_windows, split_windows, summarize_served,
)

TRACE = synthetic_trace(2, 16, 2, 3500, seq_len=50, skew=1.0, seed=5)


def test_split_windows_keeps_order_and_drops_the_partial_tail() -> None:
    windows = split_windows(TRACE, 1000)
    assert [w.num_tokens for w in windows] == [1000, 1000, 1000]
    np.testing.assert_array_equal(windows[1].topk_ids, TRACE.topk_ids[1000:2000])
    assert windows[1].seq_lens.sum() == 1000  # sequences cut at the window's edges


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_split_windows_rejects_a_bad_size(bad) -> None:
    with pytest.raises(PlacementError, match="window_tokens must be a positive integer"):
        split_windows(TRACE, bad)


def test_decayed_stats_weigh_older_windows_down() -> None:
    stats = [RoutingStats.from_trace(w) for w in split_windows(TRACE, 1000)]
    merged = decayed_stats(stats, 0.5)
    np.testing.assert_allclose(merged.load, 0.25 * stats[0].load + 0.5 * stats[1].load + stats[2].load)
    np.testing.assert_allclose(merged.pair_counts,
                               0.25 * stats[0].pair_counts + 0.5 * stats[1].pair_counts + stats[2].pair_counts)
    assert merged.num_tokens == pytest.approx(1750)
    assert all(counts.sum() == pytest.approx(1750) for counts in merged.set_counts)
    np.testing.assert_allclose(merged.window_load, [0.25 * stats[0].load, 0.5 * stats[1].load, stats[2].load])
    np.testing.assert_allclose(merged.window_load.sum(axis=0), merged.load)
    np.testing.assert_allclose(merged.decayed(0.5).window_load, 0.5 * merged.window_load)
    assert merged.merge(stats[0]).window_load is None  # a merge is one window again
    assert decayed_stats(stats, 0.0) is stats[-1]
    np.testing.assert_allclose(decayed_stats(stats, 1.0).load, sum(s.load for s in stats))
    with pytest.raises(PlacementError, match="decay must be in"):
        decayed_stats(stats, 1.5)


def test_serve_windows_plans_on_the_past_and_serves_the_next() -> None:
    topology = Topology(2, 2, 5)
    policies = {"eplb": EplbPolicy(), "round-robin": RoundRobinPolicy()}
    served = serve_windows(TRACE, topology, policies, window_tokens=1000)
    assert [s.window for s in served] == [1, 2]
    windows = split_windows(TRACE, 1000)
    for item in served:
        assert set(item.evaluations) == {"eplb", "round-robin"}
        plan = EplbPolicy().place(RoutingStats.from_trace(windows[item.window - 1]), topology)
        expected = evaluate(plan, windows[item.window])
        np.testing.assert_array_equal(item.evaluations["eplb"].gpu_load, expected.gpu_load)
        np.testing.assert_array_equal(item.plans["eplb"].physical_to_logical, plan.physical_to_logical)
    decayed = serve_windows(TRACE, topology, {"eplb": EplbPolicy()}, window_tokens=1000, decay=0.5)
    plan = EplbPolicy().place(decayed_stats([RoutingStats.from_trace(w) for w in windows[:2]], 0.5), topology)
    np.testing.assert_array_equal(decayed[1].evaluations["eplb"].gpu_load, evaluate(plan, windows[2]).gpu_load)


def test_decayed_stats_keep_each_windows_batches() -> None:
    stats = [RoutingStats.from_trace(w, window_tokens=400) for w in split_windows(TRACE, 1000)]
    merged = decayed_stats(stats, 0.5)
    assert merged.window_load.shape == (9, 2, 16)  # 3 windows of 400 + 400 + 200 tokens
    np.testing.assert_allclose(merged.window_load[:3], 0.25 * stats[0].windows)
    np.testing.assert_allclose(merged.window_load[6:], stats[2].windows)
    np.testing.assert_allclose(merged.window_load.sum(axis=0), merged.load)


class _Recording:
    """EPLB that keeps the statistics it was asked to plan on."""

    def __init__(self) -> None:
        self.seen: list[RoutingStats] = []

    def place(self, stats: RoutingStats, topology: Topology, current: Plan | None = None) -> Plan:
        self.seen.append(stats)
        return EplbPolicy().place(stats, topology, current)


def test_serve_windows_plans_on_the_batches_of_the_past_windows() -> None:
    recording = _Recording()
    serve_windows(TRACE, Topology(2, 2, 5), {"eplb": recording}, window_tokens=1000, decay=0.5, history=2,
                  balance_tokens=250)
    windows = split_windows(TRACE, 1000)
    assert [s.windows.shape[0] for s in recording.seen] == [4, 8]
    expected = decayed_stats([RoutingStats.from_trace(w, window_tokens=250) for w in windows[:2]], 0.5)
    np.testing.assert_allclose(recording.seen[1].window_load, expected.window_load)


def test_resampled_stats_draw_runs_with_replacement_and_keep_each_layers_load() -> None:
    """Each resampled window is a sum of runs the stats keep, drawn with replacement, scaled so that every
    layer's windows add up to its load; the draws are the same on every layer and fixed by the seed."""
    stats = RoutingStats.from_trace(split_windows(TRACE, 1000)[0], window_tokens=250)
    runs = stats.windows  # [4, L, E]
    single = resampled_stats(stats, 1, 12)
    assert single.windows.shape == (12, 2, 16)
    np.testing.assert_allclose(single.windows.sum(axis=(0, 2)), runs.sum(axis=(0, 2)))
    for window in single.windows:  # one run each, the same run on both layers
        layer_scale = window.sum(axis=1) / runs.sum(axis=2)  # [4, L]: only the run drawn is proportional
        drawn = [run for run in range(4) if np.allclose(window, runs[run] * layer_scale[run][:, None])]
        assert len(drawn) == 1
    drawn = resampled_stats(stats, 4, 8)
    np.testing.assert_allclose(drawn.windows.sum(axis=(0, 2)), stats.load.sum(axis=1))
    np.testing.assert_array_equal(drawn.windows, resampled_stats(stats, 4, 8).windows)
    assert not np.array_equal(drawn.windows, resampled_stats(stats, 4, 8, seed=1).windows)
    np.testing.assert_array_equal(drawn.load, stats.load)  # what a plan minimises is the same traffic
    for bad in ({"runs_per_window": 0, "draws": 4}, {"runs_per_window": 2, "draws": 0}):
        with pytest.raises(PlacementError, match="must be a positive integer"):
            resampled_stats(stats, **bad)


def test_serve_windows_plans_on_resampled_windows_of_the_past_runs() -> None:
    recording = _Recording()
    serve_windows(TRACE, Topology(2, 2, 5), {"eplb": recording}, window_tokens=1000, decay=0.5, history=2,
                  balance_tokens=250, resampled_windows=6)
    expected = decayed_stats([RoutingStats.from_trace(w, window_tokens=250) for w in split_windows(TRACE, 1000)[:2]],
                             0.5)
    assert [s.windows.shape[0] for s in recording.seen] == [6, 6]
    np.testing.assert_array_equal(recording.seen[1].windows, resampled_stats(expected, 4, 6).windows)
    for balance_tokens, message in ((None, "give balance_tokens too"),
                                    (1500, "balance_tokens must be at most the window's 1000 tokens, got 1500")):
        with pytest.raises(PlacementError, match=message):
            serve_windows(TRACE, Topology(2, 2, 5), {"eplb": EplbPolicy()}, window_tokens=1000,
                          balance_tokens=balance_tokens, resampled_windows=6)


def test_serve_windows_needs_two_windows() -> None:
    with pytest.raises(PlacementError, match="make 1 window"):
        serve_windows(TRACE, Topology(1, 2, 8), {"eplb": EplbPolicy()}, window_tokens=2000)


def test_summarize_served_takes_medians_against_the_baseline_window_by_window() -> None:
    """Medians over the served windows of each figure, and of each against the baseline's in the same
    window; the share of windows where a policy is faster is a mean, not a median."""
    policies = {"eplb": EplbPolicy(), "round-robin": RoundRobinPolicy()}
    trace = synthetic_trace(2, 16, 2, 4500, seq_len=50, skew=1.0, seed=6)
    served = serve_windows(trace, Topology(2, 2, 5), policies, window_tokens=900, cluster=PRESETS["h100"])
    assert len(served) == 4
    eplb, spread = summarize_served(served, "eplb")
    ours = [item.evaluations["round-robin"] for item in served]
    theirs = [item.evaluations["eplb"] for item in served]
    assert spread.policy == "round-robin"
    assert spread.balancedness == pytest.approx(np.median([e.balancedness for e in ours]))
    assert spread.balance_gap == pytest.approx(np.median([a.balancedness - b.balancedness
                                                          for a, b in zip(ours, theirs)]))
    assert spread.gpus_ratio == pytest.approx(np.median([a.gpus_per_token / b.gpus_per_token
                                                         for a, b in zip(ours, theirs)]))
    assert spread.time_ratio == pytest.approx(np.median([a.layer_time_s / b.layer_time_s
                                                         for a, b in zip(ours, theirs)]))
    assert spread.faster == pytest.approx(np.mean([a.layer_time_s < b.layer_time_s for a, b in zip(ours, theirs)]))
    assert (eplb.balance_gap, eplb.gpus_ratio, eplb.time_ratio, eplb.faster) == (0.0, 1.0, 1.0, 0.0)
    # One node: no remote nodes, so no ratio; no cluster: no time; no baseline: nothing against it.
    one_node = serve_windows(trace, Topology(1, 4, 5), policies, window_tokens=900)
    summary = summarize_served(one_node, "eplb")[1]
    assert summary.remote_nodes_per_token == 0 and summary.remote_ratio is None
    assert summary.layer_time_s is None and summary.time_ratio is None and summary.faster is None
    alone = summarize_served(one_node, "affinity")[1]
    assert (alone.balance_gap, alone.gpus_ratio, alone.remote_ratio) == (None, None, None)
    assert alone.balancedness == summary.balancedness


def _windows_of(*loads: list[float]) -> list[RoutingStats]:
    """One-layer load-only statistics per window, oldest first."""
    return [RoutingStats.from_load(np.array([load], dtype=np.float64)) for load in loads]


def test_forecast_error_is_the_distance_of_load_shares_from_the_windows_before() -> None:
    swinging = _windows_of([3, 1], [1, 3], [3, 1], [1, 3], [3, 1], [1, 3], [3, 1])
    # The last window alone forecasts the opposite shares: |0.75 - 0.25| twice, every time.
    assert forecast_error(swinging, (1, 0.0)) == pytest.approx(1.0)
    # Window 1 is forecast by window 0 alone (1.0); window 2 by windows 0 and 1 alike, i.e. 1:1 (0.5).
    assert forecast_error(swinging[:3], (6, 1.0)) == pytest.approx((1.0 + 0.5) / 2)
    assert forecast_error(swinging[:1], (1, 0.0)) is None
    with pytest.raises(PlacementError, match="history must be a positive integer"):
        forecast_error(swinging, (0, 0.5))
    with pytest.raises(PlacementError, match="decay must be in"):
        forecast_error(swinging, (3, 1.5))


def test_chosen_memory_is_long_on_a_stationary_mix_and_short_on_drift() -> None:
    memories = ((1, 0.0), (6, 1.0))
    swinging = _windows_of([3, 1], [1, 3], [3, 1], [1, 3], [3, 1], [1, 3], [3, 1])
    drifting = _windows_of(*([10 - k, k] for k in range(8)))
    assert chosen_memory(swinging, memories) == (6, 1.0)
    assert chosen_memory(drifting, memories) == (1, 0.0)
    assert chosen_memory(swinging[:1], ((6, 1.0), (1, 0.0))) == (6, 1.0)  # nothing to tell by: the first
    constant = _windows_of([2, 2], [2, 2], [2, 2])
    assert chosen_memory(constant, ((6, 1.0), (1, 0.0))) == (6, 1.0)  # a tie: the first


def test_planning_stats_decay_the_chosen_memory_of_the_newest_windows() -> None:
    """Fixed: the last `history` windows decayed. Adaptive: the memory `chosen_memory` picks on the
    newest `FORECAST_WINDOWS` only, so a regime that has gone does not vote: on a mix that drifted
    steadily and then swings back and forth, the swing's windows choose 6 windows weighted alike,
    though all the windows would choose the short memory."""
    memories = ((2, 0.5), *LONGER_MEMORIES)
    drifting = _windows_of(*([12 - k, k] for k in range(12)))
    swinging = _windows_of(*([3, 1] if k % 2 else [1, 3] for k in range(FORECAST_WINDOWS)))
    stats, memory = planning_stats(drifting + swinging, (2, 0.5), adaptive=False)
    assert memory == (2, 0.5)
    np.testing.assert_allclose(stats.load, 0.5 * swinging[-2].load + swinging[-1].load)
    assert chosen_memory(drifting + swinging, memories) == (2, 0.5)
    stats, memory = planning_stats(drifting + swinging, (2, 0.5), adaptive=True)
    assert memory == chosen_memory(swinging, memories) == (6, 1.0)
    np.testing.assert_allclose(stats.load, sum(window.load for window in swinging[-6:]))
    assert planning_stats(drifting, (2, 0.5), adaptive=True)[1] == (2, 0.5)
    assert planning_stats(drifting[:1], (2, 0.5), adaptive=False)[1] == (1, 0.5)  # the windows there are
    assert (planning_windows((3, 0.5), False), planning_windows((3, 0.5), True)) == (3, FORECAST_WINDOWS)
    assert planning_windows((20, 0.5), True) == 20


def test_planning_stats_resample_the_merged_windows_runs() -> None:
    """With `resampled_windows`, the plan's statistics are that many draws (`resampled_stats`) from the
    runs of the windows merged, each draw as many runs as a merged window holds on average (3 and 5
    runs: 4), the load as without; the windows a plan is not made on do not count."""
    trace = TRACE.slice_tokens(0, 2000)
    old, short, long = (RoutingStats.from_trace(trace.slice_tokens(0, 500), window_tokens=500),
                        RoutingStats.from_trace(trace.slice_tokens(500, 1100), window_tokens=200),
                        RoutingStats.from_trace(trace.slice_tokens(1100, 2000), window_tokens=180))
    assert [len(window.windows) for window in (old, short, long)] == [1, 3, 5]
    stats, memory = planning_stats([old, short, long], (2, 0.5), adaptive=False, resampled_windows=7)
    expected = decayed_stats([short, long], 0.5)
    assert memory == (2, 0.5)
    np.testing.assert_array_equal(stats.windows, resampled_stats(expected, 4, 7).windows)
    np.testing.assert_array_equal(stats.load, expected.load)


def test_serve_windows_with_adaptive_memory_plans_on_the_chosen_memory() -> None:
    topology = Topology(2, 2, 5)
    served = serve_windows(TRACE, topology, {"eplb": EplbPolicy()}, window_tokens=500, decay=0.5, history=3,
                           adaptive_memory=True)
    windows = split_windows(TRACE, 500)
    stats = [RoutingStats.from_trace(w) for w in windows]
    assert [item.memory for item in served[:1]] == [(1, 0.5)]  # one past window: nothing to choose by
    assert any(item.memory[1] != 0.5 for item in served)  # a longer memory chosen
    for item in served:
        history, decay = chosen_memory(stats[:item.window], ((3, 0.5), *LONGER_MEMORIES))
        assert item.memory == (min(history, item.window), decay)  # the windows merged, fewer at first
        plan = EplbPolicy().place(decayed_stats(stats[:item.window][-history:], decay), topology)
        np.testing.assert_array_equal(item.evaluations["eplb"].gpu_load, evaluate(plan, windows[item.window]).gpu_load)
    assert {item.memory for item in serve_windows(TRACE, topology, {"eplb": EplbPolicy()}, window_tokens=500,
                                                  decay=0.5, history=3)} == {(1, 0.5), (2, 0.5), (3, 0.5)}

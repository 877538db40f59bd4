"""The placement benchmark's own figures. The one-node time figures: the time at perfectly balanced
compute (traffic as routed) is below the modelled time, equal with every GPU equally loaded; the bound
is the busiest source GPU's sends in expectation over where the sequences start, on a hand-checked
window, and the GPUs per token the time target needs are where the bound meets it. Balance without
drift: windows drawn from the sequence pieces of the planning windows, and the split of the served gap
they give."""

from __future__ import annotations

import numpy as np
import pytest

from bench.placement import (CHEAPER_PRICES, WINDOW_CAP_PRICES, _positions_note, _prices_text, _served_policies,
                             balanced_compute_time, balanced_time_bound, drift_split, gpus_needed_for_time,
                             in_processes, resampled_windows)
from switchyard.placement.cost import PRESETS
from switchyard.placement.evaluate import Evaluation, evaluate
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from switchyard.placement.windows import serve_windows, split_windows

CLUSTER = PRESETS["h100"]


@pytest.mark.parametrize("policy", ["eplb", "affinity", "linear"])
def test_one_node_time_figures_are_ordered(policy: str) -> None:
    trace = synthetic_trace(3, 32, 4, 2000, seq_len=100, skew=1.2, seed=3)
    topology = Topology(1, 8, 5)
    plan = get_policy(policy).place(RoutingStats.from_trace(trace.slice_tokens(0, 1000)), topology)
    window = trace.slice_tokens(1000, 2000)
    evaluation = evaluate(plan, window, CLUSTER)
    balanced = balanced_compute_time(evaluation, CLUSTER)
    assert balanced <= evaluation.layer_time_s
    if not np.all(evaluation.gpu_load == evaluation.gpu_load[:, :1]):
        assert balanced < evaluation.layer_time_s  # some GPU was above the mean: its compute is taken off
    # Where the bound meets a target, the GPUs per token it needs are the plan's own.
    ratio = balanced_time_bound(evaluation, window, topology, CLUSTER) / evaluation.layer_time_s
    assert gpus_needed_for_time(evaluation, window, topology, CLUSTER, ratio) == pytest.approx(1.0)


def test_the_bound_is_the_busiest_source_gpus_sends_in_expectation() -> None:
    """4 tokens pick experts 0 and 1, one per GPU of 1 x 4 x 1: each uses 2 GPUs. Sequence 0 (3 tokens)
    starts on GPU 0, sequence 1 on GPU 1. Where sequence 0 starts on GPU 0 or 1 it sends 1 hidden state
    a token, on GPU 2 or 3 it sends 2: 4.5 in expectation over the 4 GPUs, `3 * 2 * (4 - 1) / 4`. The
    compute: 8 picks over 4 GPUs."""
    ids = np.tile(np.array([[[0, 1]]]), (4, 1, 1))
    window = RoutingTrace(ids, np.array([3, 1]), 4)
    topology = Topology(1, 4, 1)
    evaluation = evaluate(get_policy("linear").place(RoutingStats.from_trace(window), topology), window, CLUSTER)
    pick = CLUSTER.flops_per_pick / CLUSTER.gpu_flops
    transfer = 2 * CLUSTER.hidden_bytes / CLUSTER.nvlink_bandwidth  # out and back
    assert balanced_time_bound(evaluation, window, topology, CLUSTER) == pytest.approx(2 * pick + 4.5 * transfer)
    with pytest.raises(ValueError, match="one-node"):
        balanced_time_bound(evaluation, window, Topology(2, 2, 1), CLUSTER)


def test_balanced_compute_time_equals_the_time_when_every_gpu_serves_alike() -> None:
    ids = np.array([[[0, 1]], [[2, 3]]])  # 2 tokens, 1 layer, top-2: each of 4 experts picked once
    trace = RoutingTrace(ids, np.array([2]), 4)
    topology = Topology(1, 4, 1)
    plan = get_policy("linear").place(RoutingStats.from_trace(trace), topology)
    evaluation = evaluate(plan, trace, CLUSTER)
    assert balanced_compute_time(evaluation, CLUSTER) == pytest.approx(evaluation.layer_time_s)


def test_resampled_window_draws_whole_pieces_of_the_weighted_windows() -> None:
    trace = synthetic_trace(2, 16, 2, 3000, seq_len=70, seed=5)
    windows = split_windows(trace, 1000)
    draw, second = resampled_windows(windows, np.array([0.0, 1.0, 1.0]), 1000, 2, np.random.default_rng(0))
    assert draw.num_tokens == 1000 and draw.num_layers == 2 and draw.num_experts == 16
    pieces = {window.topk_ids[end - length:end].tobytes()
              for window in windows[1:] for end, length in zip(np.cumsum(window.seq_lens), window.seq_lens)}
    ends = np.cumsum(draw.seq_lens)
    for end, length in zip(ends[:-1], draw.seq_lens[:-1]):  # the last piece is cut at 1000 tokens
        assert draw.topk_ids[end - length:end].tobytes() in pieces  # never from window 0, weighted 0
    assert second.num_tokens == 1000 and not np.array_equal(second.topk_ids, draw.topk_ids)
    again = resampled_windows(windows, np.array([0.0, 1.0, 1.0]), 1000, 1, np.random.default_rng(0))[0]
    np.testing.assert_array_equal(again.topk_ids, draw.topk_ids)


def test_drift_split_without_drift_is_the_planned_and_the_served_balance() -> None:
    """Every token picks the same experts: a draw of the planning windows is the served window, so the
    three balance figures are one; on traffic that varies they are medians of what they name."""
    same = RoutingTrace(np.tile([[[0, 5], [2, 9]]], (3000, 1, 1)), np.full(30, 100), 16)
    topology = Topology(1, 4, 5)
    split = drift_split(same, serve_windows(same, topology, _served_policies(CLUSTER), window_tokens=1000))
    for name in ("eplb", "affinity"):
        assert split[name]["planned"] == split[name]["no drift"] == split[name]["served"]
    assert split["gap"]["no drift"] == pytest.approx(split["affinity"]["served"] - split["eplb"]["served"])

    trace = synthetic_trace(2, 16, 2, 4000, seq_len=100, seed=7)
    served = serve_windows(trace, topology, _served_policies(CLUSTER), window_tokens=1000, decay=0.5, history=2)
    split = drift_split(trace, served)
    served_balance = [item.evaluations["affinity"].balancedness for item in served]
    assert split["affinity"]["served"] == pytest.approx(np.median(served_balance))
    windows = split_windows(trace, 1000)
    planned = [evaluate(item.plans["affinity"], windows[item.window - 1]).balancedness for item in served]
    assert split["affinity"]["planned"] == pytest.approx(np.median(planned))


def test_cells_in_processes_come_back_in_order() -> None:
    """The benchmark's cells run in forked processes and come back in the order given, so its tables
    read as a run in one process would print them; a job's exception reaches the caller."""
    assert list(in_processes(divmod, [(7, 2), (9, 4), (1, 1)])) == [(3, 1), (2, 1), (1, 0)]
    with pytest.raises(ZeroDivisionError):
        list(in_processes(divmod, [(1, 0)]))


def _evaluation(gpu_load: list[int], gpus_per_token: float) -> Evaluation:
    """One layer's evaluation with this load per GPU and these GPUs per token (nothing else counted)."""
    return Evaluation(np.array([gpu_load]), np.array([gpus_per_token]), np.zeros(1), np.zeros(1, dtype=np.int64),
                      None, 10)


def test_a_half_half_miss_shows_the_positions_that_meet_the_cut_and_the_balance_together() -> None:
    """A half/half target's note (9 slots: at most 0.75x EPLB's GPUs per token): each position's GPUs
    over EPLB's and balance gap, and the positions that meet the cut within 0.01 of EPLB's balance
    (none: a conflict between the two targets). EPLB: balance 1, 2 GPUs per token."""
    eplb = _evaluation([10, 10], 2.0)
    local_unbalanced = _evaluation([8, 12], 1.4)  # 0.70x, balance 10/12: 0.167 short
    local_balanced = _evaluation([10, 10], 1.48)  # 0.74x at EPLB's balance
    spread = _evaluation([10, 10], 1.6)  # 0.80x: short of the cut
    note, both = _positions_note("cheaper overload", [("1/4", spread), ("1/16", local_unbalanced)], eplb, 9)
    assert note == " (cheaper overload: 1/4 0.800x at +0.000, 1/16 0.700x at -0.167)" and both == []
    assert _positions_note("window caps", [("x1", local_unbalanced), ("x4", local_balanced), ("resampled", spread)],
                           eplb, 9)[1] == ["x4"]
    assert _positions_note("cheaper overload", [], eplb, 9) == ("", [])
    assert _prices_text(CHEAPER_PRICES) == "1/4, 1/16, 1/64" and _prices_text(WINDOW_CAP_PRICES) == "x1, x2, x4, x8, x16"


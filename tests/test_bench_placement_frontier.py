"""The placement trade-off benchmark: every knob position served on the same windows, marked against
issue 17's targets."""

from __future__ import annotations

import math

from bench.placement import RESAMPLED_RUN_TOKENS, RESAMPLED_WINDOWS, RUNTIME_BATCH
from bench.placement_frontier import PRICE_FACTORS, frontier, frontier_cell, met, positions
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology


def test_frontier_serves_every_position_on_the_same_windows() -> None:
    trace = synthetic_trace(2, 16, 2, 3000, seq_len=100, seed=0)  # 3 windows of 1000 tokens: 2 served
    chosen = {name: position for name, position in positions().items()
              if name in ("price x1", "batch x1", "resampled x1", "cap 0")}
    rows = frontier(trace, Topology(1, 4, 5), chosen)
    assert [row["position"] for row in rows] == ["price x1", "batch x1", "resampled x1", "cap 0"]
    for row in rows:
        assert all(math.isfinite(row[key]) for key in ("gap", "time", "gpus", "balanced"))
        assert row["balanced"] <= row["time"]  # balancing compute only takes time off
    # The same policy with its cap held on each batch of 256 tokens instead of each window: another plan.
    assert (rows[0]["gap"], rows[0]["gpus"]) != (rows[1]["gap"], rows[1]["gpus"])


def test_positions_go_from_the_cheapest_overload_to_the_cap_first() -> None:
    chosen = positions()
    names = list(chosen)
    assert names[0] == "price x0.25" and names[-1] == "cap 0"
    prices = [position.policy.overload_price(Topology(1, 8, 8)) for position in chosen.values()]
    windows = len(PRICE_FACTORS)
    assert prices[:windows] == sorted(prices[:windows]) and math.isinf(prices[-1])
    assert chosen["batch x1"].balance_tokens == RUNTIME_BATCH and chosen["price x1"].balance_tokens is None
    assert chosen["batch x1"].policy == chosen["price x1"].policy == chosen["resampled x1"].policy
    assert (chosen["resampled x1"].balance_tokens, chosen["resampled x1"].resampled_windows) == (
        RESAMPLED_RUN_TOKENS, RESAMPLED_WINDOWS)


def test_targets_are_marked_per_slot_count() -> None:
    row = {"gap": -0.01, "time": 0.85, "gpus": 0.76}
    assert met(row, 8) == (True, True, True)
    assert met(row, 9) == (True, True, False)  # 9 slots ask for 25 % fewer GPUs per token


def test_a_cell_gives_its_table_and_its_summary_row() -> None:
    # What one process of the benchmark's pool sends back: the table of every position, and the row
    # of the summary (positions meeting all three targets, the cheapest balanced one, the least traffic).
    trace = synthetic_trace(2, 16, 2, 3000, seq_len=100, seed=0)
    block, row = frontier_cell("tiny 1x2x9", trace, 1, 2, 9)
    assert block.startswith("### tiny 1x2x9 (")
    assert all(f"| {name} " in block for name in positions())
    assert row[0] == "tiny 1x2x9" and len(row) == 4
    assert row[3].endswith(")") and row[3].split("x (")[1][:-1] in positions()

"""The placement trade-off benchmark: every knob position served on the same windows, marked against
issue 17's targets."""

from __future__ import annotations

import math

from bench.placement_frontier import frontier, met, positions
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology


def test_frontier_serves_every_position_on_the_same_windows() -> None:
    trace = synthetic_trace(2, 16, 2, 3000, seq_len=100, seed=0)  # 3 windows of 1000 tokens: 2 served
    chosen = {name: policy for name, policy in positions().items() if name in ("price x1", "cap 0")}
    rows = frontier(trace, Topology(1, 4, 5), chosen)
    assert [row["position"] for row in rows] == ["price x1", "cap 0"]
    for row in rows:
        assert all(math.isfinite(row[key]) for key in ("gap", "time", "gpus"))


def test_positions_go_from_the_cheapest_overload_to_the_cap_first() -> None:
    names = list(positions())
    assert names[0] == "price x0.25" and names[-1] == "cap 0"
    prices = [policy.overload_price(Topology(1, 8, 8)) for policy in positions().values()]
    assert prices[:4] == sorted(prices[:4]) and math.isinf(prices[-1])


def test_targets_are_marked_per_slot_count() -> None:
    row = {"gap": -0.01, "time": 0.85, "gpus": 0.76}
    assert met(row, 8) == (True, True, True)
    assert met(row, 9) == (True, True, False)  # 9 slots ask for 25 % fewer GPUs per token

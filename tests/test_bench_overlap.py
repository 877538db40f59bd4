"""`bench.overlap`'s report: per setup the median over rounds, the ratio to the one-engine setup and
whether its tokens equal that setup's. Pure formatting, no Ray."""

from __future__ import annotations

import argparse

from bench.overlap import SETUPS, render


def test_medians_ratios_and_token_equality() -> None:
    names = list(SETUPS)
    rates = {name: [100.0 + 10 * index, 300.0, 200.0 + 10 * index] for index, name in enumerate(names)}
    profiles = {name: [{"worker_busy_seconds": [1.0, 2.0]}] * 3 for name in names}
    equal = {name: name != names[2] for name in names}
    args = argparse.Namespace(batch=32, new_tokens=64, rounds=3)
    text = render("Checkpoint: test", args, "python -m bench.overlap", rates, profiles, equal)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "engine" in line.split("|")[1]}
    assert rows[names[0]] == ["200.0", "100 / 300 / 200", "1.00x", "3.00", "yes"]
    assert rows[names[1]][:3] == ["210.0", "110 / 300 / 210", "1.05x"]
    assert rows[names[2]][-1] == "NO"
    assert "batch 32" in text and "3 rounds" in text

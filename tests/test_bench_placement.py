"""The placement benchmark's one-node time figures: the bound (sends spread evenly) is below the time at
perfectly balanced compute (traffic as routed), which is below the modelled time; with every GPU
equally loaded the last two are equal."""

from __future__ import annotations

import numpy as np
import pytest

from bench.placement import balanced_compute_time, balanced_time_bound
from switchyard.placement.cost import PRESETS
from switchyard.placement.evaluate import evaluate
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace

CLUSTER = PRESETS["h100"]


@pytest.mark.parametrize("policy", ["eplb", "affinity", "linear"])
def test_one_node_time_figures_are_ordered(policy: str) -> None:
    trace = synthetic_trace(3, 32, 4, 2000, seq_len=100, skew=1.2, seed=3)
    topology = Topology(1, 8, 5)
    plan = get_policy(policy).place(RoutingStats.from_trace(trace.slice_tokens(0, 1000)), topology)
    evaluation = evaluate(plan, trace.slice_tokens(1000, 2000), CLUSTER)
    bound = balanced_time_bound(evaluation, topology, CLUSTER)
    balanced = balanced_compute_time(evaluation, CLUSTER)
    assert bound <= balanced <= evaluation.layer_time_s
    if not np.all(evaluation.gpu_load == evaluation.gpu_load[:, :1]):
        assert balanced < evaluation.layer_time_s  # some GPU was above the mean: its compute is taken off


def test_balanced_compute_time_equals_the_time_when_every_gpu_serves_alike() -> None:
    ids = np.array([[[0, 1]], [[2, 3]]])  # 2 tokens, 1 layer, top-2: each of 4 experts picked once
    trace = RoutingTrace(ids, np.array([2]), 4)
    topology = Topology(1, 4, 1)
    plan = get_policy("linear").place(RoutingStats.from_trace(trace), topology)
    evaluation = evaluate(plan, trace, CLUSTER)
    assert balanced_compute_time(evaluation, CLUSTER) == pytest.approx(evaluation.layer_time_s)

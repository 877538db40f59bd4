"""Automatic rebalance: when a proposal is worth applying (pure), and the loop against a real backend
(Ray runtime, embedded store): it applies once, then waits out its interval."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from switchyard.cluster.rebalance.auto import AutoRebalancer, AutoRebalanceSettings, predicted_gain, rebalance_reason
from switchyard.placement.cost import PRESETS
from switchyard.placement.policies import get_policy
from switchyard.placement.proposal import PlanMetrics, propose
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology


@pytest.fixture(scope="module")
def proposal():
    """An affinity proposal over a linear plan on a clustered window: it moves replicas."""
    stats = RoutingStats.from_trace(synthetic_trace(4, 16, 4, 2048, skew=1.2, seed=3))
    current = get_policy("linear").place(stats, Topology.for_experts(16, 2, 2, 5))
    made = propose(stats, current, "affinity", cluster=PRESETS["h100"])
    assert made.migration.num_copies > 0
    return made


def _with(proposal, before: PlanMetrics, after: PlanMetrics):
    return dataclasses.replace(proposal, before=before, after=after)


def test_gain_over_the_threshold_applies(proposal):
    before, after = PlanMetrics(0.95, 3.0, 1.0, 1.0), PlanMetrics(0.95, 2.0, 0.5, 0.85)
    assert predicted_gain(before, after) == pytest.approx(0.15)
    assert "15.0% lower" in rebalance_reason(_with(proposal, before, after), AutoRebalanceSettings(min_gain=0.1))
    assert rebalance_reason(_with(proposal, before, after), AutoRebalanceSettings(min_gain=0.2)) is None


def test_low_balancedness_applies_only_when_the_proposal_is_better_balanced(proposal):
    settings = AutoRebalanceSettings(min_balancedness=0.8, min_gain=0.5)
    better = _with(proposal, PlanMetrics(0.6, 3.0, 1.0, 1.0), PlanMetrics(0.9, 3.0, 1.0, 1.0))
    assert "balancedness 0.600 is below 0.8" in rebalance_reason(better, settings)
    worse = _with(proposal, PlanMetrics(0.6, 3.0, 1.0, 1.0), PlanMetrics(0.5, 3.0, 1.0, 1.0))
    assert rebalance_reason(worse, settings) is None


def test_nothing_to_move_or_no_sets_never_applies(proposal):
    still = dataclasses.replace(proposal, migration=dataclasses.replace(
        proposal.migration, copies=proposal.migration.copies[:0]))
    assert rebalance_reason(still, AutoRebalanceSettings(min_balancedness=1.0, min_gain=0.01)) is None
    load_only = _with(proposal, PlanMetrics(0.95, None, None, None), PlanMetrics(0.97, None, None, None))
    assert predicted_gain(load_only.before, load_only.after) is None
    assert rebalance_reason(load_only, AutoRebalanceSettings(min_gain=0.01)) is None


@pytest.mark.parametrize(("field", "value", "message"), [
    ("min_balancedness", 1.5, "min_balancedness must be in"), ("min_gain", 0.0, "min_gain must be in"),
    ("interval_s", 0.0, "must be positive"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        AutoRebalanceSettings(**{field: value})


@pytest.mark.ray
def test_applies_once_then_waits_for_the_interval(ray_connected, tmp_path):
    from switchyard.cluster.runtime.runtime import Runtime
    from switchyard.cluster.engine.sampling import SamplingParams
    from switchyard.cluster.gateway.backend import RuntimeBackend
    from switchyard.cluster.state.store import EmbeddedStateStore
    from switchyard.cluster.state.publisher import StatsPublisher
    from switchyard.workers.checkpoints import init_checkpoint

    model_dir = init_checkpoint("mixtral", "tiny", tmp_path / "mixtral", skew=2.0, seed=11)
    now = [1000.0]
    settings = AutoRebalanceSettings(min_balancedness=1.0, min_gain=0.01, interval_s=60.0)
    with Runtime.start(model_dir, 2, 2) as runtime:
        store = EmbeddedStateStore()
        store.set_active_plan(runtime.plan, 0)
        backend = RuntimeBackend(runtime, store=store)
        rebalancer = AutoRebalancer(backend, settings, clock=lambda: now[0])

        async def scenario() -> None:
            assert await rebalancer.check() is None  # no statistics yet: nothing to propose
            runtime.generate([[1, 5, 9, 33], [4, 8, 15], [300, 2, 7], [77, 78]], SamplingParams(16))
            StatsPublisher(store, runtime.engines).publish_once()
            applied = await rebalancer.check()
            assert applied is not None and applied.applied is not None
            assert runtime.epoch == applied.applied.epoch == 2 and store.active_plan()[1] == 2
            assert any(event.get("kind") == "rebalance" and str(event.get("by", "")).startswith("auto:")
                       for event in store.events())
            now[0] += 30.0  # inside the interval: not even a dry run
            assert await rebalancer.check() is None and runtime.epoch == 2

        asyncio.run(scenario())

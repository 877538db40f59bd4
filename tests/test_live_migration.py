"""Live migration on a simulated 2-node Ray cluster: requests keep running and outputs do not change.

One Ray cluster and one runtime (tiny skewed Mixtral, 2 nodes x 2 workers, one engine per node) serve
every case but the destructive one, which starts its own small runtime on the same cluster. Each case
starts from whatever epoch the previous one left, so the cases also run alone.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from switchyard.cluster.runtime.migration import MigrationFailed, migrate
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.placement.errors import PlacementError
from switchyard.placement.migration import plan_migration
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.workers.checkpoints import init_checkpoint
from waiting import wait_until

pytestmark = pytest.mark.ray

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77]]
PARAMS = SamplingParams(max_new_tokens=40)
NODES, WORKERS_PER_NODE = 2, 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("models") / "mixtral", skew=0.5, seed=7)


@pytest.fixture(scope="module")
def runtime(ray_connected, model_dir):
    with Runtime.start(model_dir, NODES, WORKERS_PER_NODE) as started:
        yield started


@pytest.fixture(scope="module")
def baseline(runtime) -> list[list[int]]:
    """Greedy outputs under the plan the runtime started with."""
    return runtime.generate(PROMPTS, PARAMS)


def _permuted(plan: Plan, seed: int) -> Plan:
    """The same topology with every layer's experts shuffled over the slots (most experts move)."""
    rng = np.random.default_rng(seed)
    table = np.stack([rng.permutation(plan.physical_to_logical[layer]) for layer in range(plan.num_layers)])
    return Plan(table, plan.topology, plan.num_logical_experts)


def _engine_epochs(runtime: Runtime) -> list[int]:
    return ray.get([engine.epoch.remote() for engine in runtime.engines])


def _held_epochs(workers: list[Any]) -> list[list[int]]:
    return ray.get([worker.held_epochs.remote() for worker in workers])


def _assert_serves(runtime: Runtime, plan: Plan, epoch: int) -> None:
    """Every engine dispatches under `epoch` and every worker holds exactly `plan`'s experts for it."""
    assert runtime.epoch == epoch and runtime.plan == plan
    assert _engine_epochs(runtime) == [epoch] * len(runtime.engines)
    assert _held_epochs(runtime.workers) == [[epoch]] * len(runtime.workers)
    held = ray.get([worker.slot_experts.remote() for worker in runtime.workers])
    assert held == [plan.gpu_experts[:, gpu].tolist() for gpu in range(plan.topology.num_gpus)]


def _wait_for_steps(runtime: Runtime, steps: int, timeout_s: float = 60.0) -> None:
    """Block until every engine has run `steps` more steps (the requests are under way)."""
    def counts() -> np.ndarray:
        return np.array(ray.get([engine.step_count.remote() for engine in runtime.engines]))

    target = counts() + steps
    wait_until(lambda: (counts() >= target).all(), "the requests to start", timeout_s)


def test_migrate_while_requests_run(runtime, baseline):
    old_plan, new_epoch = runtime.plan, runtime.epoch + 1
    proposed = _permuted(old_plan, seed=0)
    expected = plan_migration(old_plan, proposed)
    assert expected.num_copies >= 8  # a migration that moves most experts
    calls = [runtime.engines[i % len(runtime.engines)].generate.remote([prompt], PARAMS)
             for i, prompt in enumerate(PROMPTS)]
    _wait_for_steps(runtime, 3)

    report = migrate(runtime, proposed, new_epoch)

    running, _ = ray.wait(calls, num_returns=len(calls), timeout=0)
    assert len(running) < len(calls), "the migration should overlap the requests; make them longer"
    assert [ray.get(call)[0] for call in calls] == baseline
    assert report.epoch == new_epoch and report.plan == expected.aligned
    assert report.copies == expected.num_copies
    spec = runtime.spec
    expert_bytes = 3 * spec.hidden_size * spec.config.intermediate_size * 4  # gate, up, down; float32
    assert report.bytes_copied == report.copies * expert_bytes
    assert isinstance(report.steps_during_switch, int) and report.steps_during_switch >= 0
    assert min(report.stage_seconds, report.switch_seconds, report.drop_seconds) >= 0
    _assert_serves(runtime, expected.aligned, new_epoch)
    assert runtime.generate(PROMPTS, PARAMS) == baseline


def test_rejected_commit_undoes_the_migration(runtime, baseline):
    old_plan, old_epoch = runtime.plan, runtime.epoch
    committed: list[Plan] = []

    def reject(plan: Plan) -> None:
        committed.append(plan)
        assert _engine_epochs(runtime) == [old_epoch + 1] * len(runtime.engines)  # switched before commit
        raise RuntimeError("the state store moved on")

    with pytest.raises(MigrationFailed, match="not committed: the state store moved on"):
        migrate(runtime, _permuted(old_plan, seed=1), old_epoch + 1, commit=reject)
    assert len(committed) == 1
    assert runtime.plan is old_plan
    _assert_serves(runtime, old_plan, old_epoch)
    assert runtime.generate(PROMPTS, PARAMS) == baseline


def test_plans_that_do_not_fit_change_nothing(runtime):
    old_plan, old_epoch = runtime.plan, runtime.epoch
    spec = runtime.spec
    linear = get_policy("linear")
    other_topology = linear.place(RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts))),
                                  Topology.for_experts(spec.num_experts, 1, 4))
    more_layers = linear.place(RoutingStats.from_load(np.ones((spec.num_layers + 1, spec.num_experts))),
                               old_plan.topology)
    for proposed, message in [(other_topology, "topolog"), (more_layers, "layers")]:
        with pytest.raises(PlacementError, match=message):
            migrate(runtime, proposed, old_epoch + 1)
        _assert_serves(runtime, old_plan, old_epoch)
    with pytest.raises(MigrationFailed, match=f"already serves epoch {old_epoch}"):
        migrate(runtime, _permuted(old_plan, seed=2), old_epoch)
    _assert_serves(runtime, old_plan, old_epoch)


def test_second_migration_at_once_is_refused(runtime, baseline):
    old_plan, old_epoch = runtime.plan, runtime.epoch
    committing, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold_commit(plan: Plan) -> None:
        committing.set()
        assert release.wait(60), "the test did not release the first migration"

    def first() -> None:
        try:
            outcome["report"] = migrate(runtime, _permuted(old_plan, seed=3), old_epoch + 1, commit=hold_commit)
        except Exception as error:  # reported by the assertions below
            outcome["error"] = error

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert committing.wait(60), f"the first migration did not reach its commit: {outcome}"
        with pytest.raises(MigrationFailed, match="in progress"):
            migrate(runtime, _permuted(old_plan, seed=4), old_epoch + 2)
    finally:
        release.set()
        thread.join(60)
    assert "error" not in outcome, outcome
    report = outcome["report"]
    _assert_serves(runtime, report.plan, old_epoch + 1)
    assert runtime.generate(PROMPTS, PARAMS) == baseline


def test_same_experts_migrate_without_copies(runtime, baseline):
    """A plan that only reorders slots within each worker keeps every expert where it is: no copies."""
    old_plan, new_epoch = runtime.plan, runtime.epoch + 1
    reordered = Plan.from_gpu_experts(old_plan.gpu_experts[:, :, ::-1].copy(), old_plan.topology.num_nodes,
                                      old_plan.topology.gpus_per_node, old_plan.num_logical_experts)
    report = migrate(runtime, reordered, new_epoch)
    assert (report.copies, report.bytes_copied) == (0, 0)
    assert report.plan == old_plan  # aligned back to the slots the experts already occupy
    _assert_serves(runtime, old_plan, new_epoch)
    assert runtime.generate(PROMPTS, PARAMS) == baseline


@pytest.mark.parametrize("victim", ["worker", "engine"])
def test_dead_actor_fails_the_migration(ray_connected, model_dir, baseline, victim):
    """Destructive, so on its own runtime: a killed actor fails the migration and the rest is undone.

    A dead worker fails the stage; a dead engine fails the switch after the other engine switched, so
    that one must be switched back.
    """
    with Runtime.start(model_dir, NODES, WORKERS_PER_NODE) as runtime:
        old_plan, old_epoch = runtime.plan, runtime.epoch
        actors = runtime.workers if victim == "worker" else runtime.engines
        ray.kill(actors[1])
        with pytest.raises(MigrationFailed, match="an actor is gone"):
            migrate(runtime, _permuted(old_plan, seed=5), old_epoch + 1, timeout_s=60)
        assert runtime.epoch == old_epoch and runtime.plan is old_plan
        workers = [w for w in runtime.workers if w is not actors[1]]
        engines = [e for e in runtime.engines if e is not actors[1]]
        assert ray.get([engine.epoch.remote() for engine in engines]) == [old_epoch] * len(engines)
        assert _held_epochs(workers) == [[old_epoch]] * len(workers)
        if victim == "engine":  # every worker is alive: the surviving engine still serves the old plan
            outputs = ray.get([engines[0].generate.remote([prompt], PARAMS) for prompt in PROMPTS])
            assert [output[0] for output in outputs] == baseline

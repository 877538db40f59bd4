"""Rebalance apply and Rollback through the gateway, over the real runtime on a 2-node Ray cluster.

One Ray cluster and one runtime (2 nodes x 2 workers, one engine per node) serve the module; every case
runs against both state stores (embedded, and the redis-server on 127.0.0.1:6379 under a deployment of
its own), each with its own backend and gateway over the same runtime. Cases leave the runtime serving
some valid plan and assert relative to the epoch they find, so they do not depend on their order.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import grpc
import numpy as np
import pytest

from switchyard.cluster.gateway.client import Client, planned_memory
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.state.redis_store import RedisStateStore
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.cluster.state.store import EmbeddedStateStore, StateStoreUnavailable
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import memory_dict
from switchyard.protos.generated import serving_pb2 as pb
from switchyard.workers.checkpoints import init_checkpoint
from waiting import wait_until

pytestmark = pytest.mark.ray

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77]]
NEW_TOKENS = 6
OBSERVE_AFTER_S = 0.5
REDIS_URL = "redis://127.0.0.1:6379/0"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def runtime(ray_connected, tmp_path_factory):
    model_dir = init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("rebalance") / "mixtral", skew=0.5,
                                seed=11)
    with Runtime.start(model_dir, num_nodes=2, workers_per_node=2) as started:
        yield started


def _align(store, runtime: Runtime) -> None:
    """Bring a fresh store to the runtime's epoch, as if it had served this runtime from the start."""
    epoch = 0 if (active := store.active_plan()) is None else active[1]
    while epoch < runtime.epoch:
        epoch = store.set_active_plan(runtime.plan, epoch)


@pytest.fixture(scope="module", params=["embedded", "redis"])
def store(request, runtime, fresh_redis_store):
    if request.param == "embedded":
        yield EmbeddedStateStore()
        return
    with fresh_redis_store("test-rebalance") as opened:
        yield opened


def _gateway(backend: RuntimeBackend, **config) -> tuple[BackgroundGateway, str]:
    gateway = BackgroundGateway(GatewayConfig(port=0, **config))
    port = gateway.start()
    gateway.attach(backend)
    return gateway, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(runtime, store):
    _align(store, runtime)
    gateway, target = _gateway(RuntimeBackend(runtime, store=store, observe_after_s=OBSERVE_AFTER_S))
    try:
        with Client(target, timeout_s=120) as connected:
            yield connected
    finally:
        gateway.drain(0)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def _greedy(client: Client) -> list[list[int]]:
    return [list(result.token_ids) for result in client.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS)]


def _moved(plan: Plan) -> Plan:
    """`plan` with every GPU's experts moved to the next GPU: a valid plan that copies every slot."""
    slots = plan.topology.slots_per_gpu
    return Plan(np.roll(plan.physical_to_logical, slots, axis=1), plan.topology, plan.num_logical_experts)


def _experts_per_gpu(plan: Plan) -> np.ndarray:
    """`[L, G, S]`: each GPU's experts, sorted (slot order within a GPU is free)."""
    return np.sort(plan.gpu_experts, axis=2)


def _served(client: Client) -> tuple[int, Plan]:
    placement = client.placement()
    assert list(placement.engine_epochs) == [placement.epoch] * 2  # every engine serves the active epoch
    return placement.epoch, Plan.from_dict(json.loads(placement.plan_json))


def test_apply_moves_every_engine_to_a_new_epoch_with_identical_outputs(runtime, store, client):
    epoch, plan = _served(client)
    before = _greedy(client)
    store.append_stats("engine-0", runtime.routing_stats(), time.time())  # a window for the policy
    planned = client.rebalance(apply=True, policy="eplb", expected_epoch=epoch)
    assert planned.applied and planned.epoch == epoch and planned.applied_epoch == epoch + 1
    assert planned.policy == "eplb" and planned.apply_seconds > 0
    assert _served(client)[0] == epoch + 1 == runtime.epoch
    moved = _moved(plan)
    answer = client.rebalance(apply=True, plan_json=json.dumps(moved.to_dict()))
    assert answer.applied and answer.policy == "given" and answer.applied_epoch == epoch + 2
    assert answer.replicas_moved > 0 and answer.bytes_copied > 0
    served_epoch, served = _served(client)
    assert served_epoch == epoch + 2
    np.testing.assert_array_equal(_experts_per_gpu(served), _experts_per_gpu(moved))
    assert _greedy(client) == before


def test_rollback_returns_to_the_previous_plan_as_a_new_epoch(client):
    epoch, plan = _served(client)
    client.rebalance(apply=True, plan_json=json.dumps(_moved(plan).to_dict()))
    preview = client.rollback(apply=False)
    assert not preview.applied and preview.epoch == epoch + 1 and preview.policy == "rollback"
    assert _served(client)[0] == epoch + 1  # a dry run moves nothing
    answer = client.rollback(apply=True)
    assert answer.applied and answer.applied_epoch == epoch + 2
    served_epoch, served = _served(client)
    assert served_epoch == epoch + 2
    np.testing.assert_array_equal(_experts_per_gpu(served), _experts_per_gpu(plan))


def _missing_expert(plan: Plan) -> dict:
    data = plan.to_dict()
    table = np.array(data["physical_to_logical_map"])
    table[0][table[0] == 0] = 1  # expert 0 gone from layer 0
    data["physical_to_logical_map"] = table.tolist()
    return data


def test_invalid_plans_and_stale_epochs_change_nothing(client):
    epoch, plan = _served(client)
    other_gpus = {**plan.to_dict(), "gpus_per_node": 1}
    for bad, message in ((other_gpus, "cannot migrate between topologies"), (_missing_expert(plan), "expert 0"),
                         ({"physical_to_logical_map": [[0]]}, "lacks the key")):
        code, details = _code(lambda: client.rebalance(apply=True, plan_json=json.dumps(bad)))
        assert code == Code.INVALID_ARGUMENT and message in details, details
    code, details = _code(lambda: client.rebalance(apply=True, plan_json="{not json"))
    assert code == Code.INVALID_ARGUMENT and "not JSON" in details
    moved = json.dumps(_moved(plan).to_dict())
    code, details = _code(lambda: client.rebalance(apply=True, plan_json=moved, expected_epoch=epoch - 1))
    assert code == Code.ABORTED and f"epoch {epoch}, not {epoch - 1}" in details
    assert _served(client)[0] == epoch


def test_events_record_the_apply_and_its_observed_gain(store, client):
    epoch, plan = _served(client)
    answer = client.rebalance(apply=True, plan_json=json.dumps(_moved(plan).to_dict()))
    _greedy(client)  # traffic after the switch
    wait_until(lambda: any(e["kind"] == "observed" and e["epoch"] == epoch + 1 for e in store.events()),
               "the observed gain's event", timeout_s=20)
    events = store.events()
    applied = next(e for e in events if e["kind"] == "rebalance" and e["epoch"] == epoch + 1)
    assert applied["from_epoch"] == epoch and applied["by"].startswith("admin (no token") and applied["policy"] == "given"
    assert applied["copies"] == answer.replicas_moved and applied["bytes_copied"] == answer.bytes_copied
    assert 0 < applied["predicted_after"]["balancedness"] <= 1 and applied["apply_seconds"] > 0
    assert applied["memory"] == memory_dict(planned_memory(answer))  # the statistics the answer was planned on
    observed = next(e for e in events if e["kind"] == "observed" and e["epoch"] == epoch + 1)
    assert observed["token_vectors_after"] > 0 and observed["cross_node_bytes_per_token_after"] is not None
    assert observed["cross_node_bytes_per_token_before"] > 0 and 0 < observed["balancedness"] <= 1
    _code(lambda: client.rebalance(apply=True, plan_json=json.dumps(plan.to_dict()), expected_epoch=0))
    failed = store.events(1)[0]
    assert failed["kind"] == "rebalance_failed" and failed["action"] == "rebalance" and "not 0" in failed["error"]


class _CommitFailsStore(EmbeddedStateStore):
    """An embedded store that cannot write a plan while `down`, as when Redis goes down mid-rebalance."""

    down = False

    def set_active_plan(self, plan, expected_epoch) -> int:
        if self.down:
            raise StateStoreUnavailable("the test's store went down")
        return super().set_active_plan(plan, expected_epoch)


def test_store_down_is_unavailable_and_the_old_epoch_serves(runtime, store, client):
    epoch, plan = _served(client)
    before = _greedy(client)
    if isinstance(store, RedisStateStore):  # nothing listens there: the first read fails, nothing moves
        down = RedisStateStore("redis://127.0.0.1:1/0", "down", timeout_s=0.5)
    else:  # the read works and the migration runs; its commit fails, which undoes it
        down = _CommitFailsStore()
        _align(down, runtime)
        down.down = True
    gateway, target = _gateway(RuntimeBackend(runtime, store=down))
    try:
        with Client(target, timeout_s=120) as admin:
            moved = json.dumps(_moved(plan).to_dict())
            code, details = _code(lambda: admin.rebalance(apply=True, plan_json=moved))
            assert code == Code.UNAVAILABLE, details
    finally:
        gateway.drain(0)
    assert runtime.epoch == epoch and _served(client)[0] == epoch
    np.testing.assert_array_equal(runtime.plan.physical_to_logical, plan.physical_to_logical)
    assert _greedy(client) == before


class _GatedCommitStore:
    """`store` whose plan commits wait for `gate`: a migration that outlives the call that started it."""

    def __init__(self, store) -> None:
        self.store, self.gate, self.committing = store, threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def set_active_plan(self, plan, expected_epoch) -> int:
        self.committing.set()
        assert self.gate.wait(120), "the test never opened the gate"
        return self.store.set_active_plan(plan, expected_epoch)


def test_a_cancelled_apply_holds_the_lock_until_it_ends_and_records_its_event(runtime, store, client):
    epoch, plan = _served(client)
    gated = _GatedCommitStore(store)
    gateway, target = _gateway(RuntimeBackend(runtime, store=gated))
    try:
        with Client(target, timeout_s=120) as admin:
            moved = json.dumps(_moved(plan).to_dict())
            code, _ = _code(lambda: admin.rebalance(apply=True, plan_json=moved, timeout_s=1.0))
            assert code == Code.DEADLINE_EXCEEDED
            assert gated.committing.wait(60), "the migration went on after its caller left"
            code, details = _code(lambda: admin.rebalance(apply=True, plan_json=json.dumps(plan.to_dict())))
            assert code == Code.ABORTED and "another rebalance is in progress" in details
            gated.gate.set()
            wait_until(lambda: any(e["kind"] == "rebalance" and e["epoch"] == epoch + 1
                                   for e in store.events(20)), "the committed rebalance's event", timeout_s=60)
            assert _served(client)[0] == epoch + 1 == runtime.epoch  # committed, and the store knows it
            answer = admin.rebalance(apply=True, plan_json=json.dumps(plan.to_dict()))  # the lock is free
            assert answer.applied and answer.applied_epoch == epoch + 2
    finally:
        gated.gate.set()
        gateway.drain(0)


def test_defaults_are_dry_runs_a_noop_apply_changes_nothing_and_applies_are_logged(client, caplog):
    caplog.set_level(logging.INFO, logger="switchyard.cluster.rebalance.applier")
    epoch, plan = _served(client)
    moved = json.dumps(_moved(plan).to_dict())
    answer = client.stub.Rebalance(pb.RebalanceRequest(plan_json=moved), timeout=60)  # `apply` unset
    assert not answer.applied and answer.replicas_moved > 0 and _served(client)[0] == epoch
    raw = client.channel.unary_unary("/switchyard.v1.Switchyard/Rollback", request_serializer=None,
                                     response_deserializer=pb.RebalanceResponse.FromString)
    for request in (b"", b"\x08\x01"):  # empty, and the old `dry_run = true`'s bytes: both parse as dry runs
        try:
            assert not raw(request, timeout=60).applied
        except grpc.RpcError as error:  # no earlier plan in this store
            assert error.code() == Code.FAILED_PRECONDITION
        assert _served(client)[0] == epoch
    same = client.rebalance(apply=True, plan_json=json.dumps(plan.to_dict()))
    assert not same.applied and same.applied_epoch == 0 and _served(client)[0] == epoch  # no epoch bump
    assert f"the plan equals the served one (epoch {epoch}); nothing changed" in caplog.text
    applied = client.rebalance(apply=True, plan_json=moved)
    assert applied.applied and _served(client)[0] == epoch + 1
    line = next(r.getMessage() for r in caplog.records if "rebalance applied by" in r.getMessage())
    assert "admin (no token: admin calls are open, ipv4:127.0.0.1:" in line
    assert f"epoch {epoch} -> {epoch + 1}, {applied.replicas_moved} replica(s) moved" in line


def test_the_balance_feedback_prices_each_affinity_plan_by_how_the_served_one_did(runtime, store):
    """`--balance-feedback` (the default) live: the first affinity rebalance is priced at level 0 (the
    plan in service was not priced by the feedback) and says so in its answer and its event; the gateway
    remembers it beside EPLB's plan on the same statistics, in the store, and the next proposal's level
    is that one's, moved by its served balance gap on the traffic since its apply (the store's newest
    window less the entries from before; none yet: the level kept), whichever gateway over the store
    proposes it (`cluster.rebalance.feedback`, tested on its own in tests/test_feedback.py). EPLB and a
    plan given whole are not priced; after one, affinity starts at level 0 again.
    `--no-balance-feedback` prices nothing."""
    _align(store, runtime)
    backend = RuntimeBackend(runtime, store=store, observe_after_s=OBSERVE_AFTER_S)
    gateway, target = _gateway(backend)
    try:
        with Client(target, timeout_s=120) as client:
            epoch, plan = _served(client)
            _greedy(client)
            store.append_stats("engine-0", runtime.routing_stats(), time.time())
            applied = client.rebalance(apply=True, policy="affinity", expected_epoch=epoch)
            assert applied.HasField("feedback_level") and applied.feedback_level == 0
            if applied.applied:
                event = next(e for e in store.events() if e["kind"] == "rebalance" and e["epoch"] == epoch + 1)
                assert event["feedback_level"] == 0
            served = backend.feedback.priced(runtime.plan)
            assert served is not None and served.level == 0 and served.baseline.topology == runtime.plan.topology
            # Judged on what it has served since its apply: nothing yet, so its own level.
            assert client.rebalance(apply=False, policy="affinity").feedback_level == served.level
            _greedy(client)
            store.append_stats("engine-0", runtime.routing_stats(), time.time())
            answer = client.rebalance(apply=False, policy="affinity")
            assert answer.HasField("feedback_level") and answer.feedback_level in (0, 1)  # one step at most
            # The record is the store's: another gateway replica, or this one restarted, prices alike.
            restarted = RuntimeBackend(runtime, store=store)
            assert restarted.feedback.priced(runtime.plan) == served
            _, active, applied_at = store.plan_history(1)[0]
            assert active == runtime.plan
            newest = store.window("time", restarted.stats_window_s, since=applied_at)
            assert newest is not None and newest.num_tokens > 0
            assert restarted.feedback.next_level(runtime.plan, newest, restarted.cluster) == answer.feedback_level
            assert not client.rebalance(apply=False, policy="eplb").HasField("feedback_level")
            given = client.rebalance(apply=True, plan_json=json.dumps(_moved(runtime.plan).to_dict()))
            assert given.applied and not given.HasField("feedback_level")
            assert client.rebalance(apply=False, policy="affinity").feedback_level == 0
    finally:
        gateway.drain(0)
    assert RuntimeBackend(runtime, store=store, balance_feedback=False).feedback is None

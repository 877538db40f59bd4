"""Actor faults on a real 2-node Ray cluster: a worker killed or stopped, engines killed.

The session's Ray cluster and one runtime (2 nodes x 1 worker, one engine per node, the linear plan: each worker
holds the only replica of half the experts) serve the module behind a gateway, with a supervisor
probing every actor. Each fault is real (SIGKILL / SIGSTOP of the actor's process, `ray.kill`); what is
checked is what a client sees: no hang, UNAVAILABLE (never INTERNAL) for what the fault broke, the
actor re-created, health NOT_SERVING during the outage and SERVING after, and greedy tokens equal to
the ones served before the fault.
"""

from __future__ import annotations

import os
import signal
import threading

import grpc
import numpy as np
import pytest
import ray
from grpc_health.v1 import health_pb2

from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.errors import WorkerUnavailable
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.cluster.gateway.client import Client
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.runtime.supervisor import Supervisor
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology
from switchyard.workers.checkpoints import init_checkpoint
from waiting import wait_until

pytestmark = pytest.mark.ray

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77]]
NEW_TOKENS = 8
DISPATCH_TIMEOUT_S = 4.0
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("faults") / "mixtral", skew=0.5, seed=7)


@pytest.fixture(scope="module")
def runtime(ray_connected, model_dir):
    with Runtime.start(model_dir, num_nodes=2, workers_per_node=1,
                       dispatch_timeout_s=DISPATCH_TIMEOUT_S) as started:
        yield started


@pytest.fixture(scope="module")
def reference(runtime):
    """Greedy tokens before any fault: what every later request must still get."""
    return runtime.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS))


@pytest.fixture(scope="module")
def supervisor(runtime, reference):
    started = Supervisor(runtime, probe_interval_s=0.3, probe_timeout_s=2.0).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(runtime, supervisor):
    gateway = BackgroundGateway(GatewayConfig(port=0, health_interval_s=0.1))
    port = gateway.start()
    gateway.attach(RuntimeBackend(runtime, supervisor=supervisor))
    with Client(f"127.0.0.1:{port}") as connected:
        yield connected
    gateway.drain(0)


class HealthWatch:
    """Every status the gateway's health Watch stream sends, collected in a thread."""

    def __init__(self, client: Client) -> None:
        self.statuses: list[str] = []
        self._call = client.health_stub.Watch(health_pb2.HealthCheckRequest())
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        try:
            for response in self._call:
                self.statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        except grpc.RpcError:  # cancelled by `close`
            pass

    def close(self) -> list[str]:
        self._call.cancel()
        return self.statuses


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def _replacements(supervisor: Supervisor, kind: str) -> int:
    """How many actors of `kind` the supervisor has replaced so far (the fixtures are per module)."""
    return sum(entry["kind"] == kind for entry in supervisor.replaced)


def _replaced(supervisor: Supervisor, kind: str, count: int) -> bool:
    return _replacements(supervisor, kind) >= count


def _greedy_outputs(client: Client) -> list[list[int]]:
    return [list(client.generate(prompt, max_new_tokens=NEW_TOKENS, timeout_s=60).token_ids) for prompt in PROMPTS]


def test_a_down_worker_sends_picks_to_live_replicas(runtime, model_dir, reference):
    """Every expert on both workers: with worker 1 marked down, worker 0 serves every pick, same tokens."""
    spec_experts = 8
    full = Plan(np.tile(np.arange(spec_experts), (runtime.spec.num_layers, 2)), Topology(2, 1, spec_experts),
                spec_experts)
    runtime.load(model_dir, full)
    try:
        before = runtime.traffic()["tokens_per_worker"]
        ray.get([engine.mark_workers_down.remote([1]) for engine in runtime.engines])
        assert runtime.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS)) == reference
        after = runtime.traffic()["tokens_per_worker"]
        assert after[1] == before[1] and after[0] > before[0]
    finally:
        for index, engine in enumerate(runtime.engines):  # the same actor back: exercises the swap
            node = runtime.plan.topology.node_of_engine(index)
            ray.get(engine.replace_worker.remote(1, runtime.workers[1],
                                                 runtime.actors.channel(runtime.plan, node, 1, runtime.addresses[1])))
        runtime.load(model_dir)


def test_requests_needing_a_down_worker_fail_alone_and_fast(runtime, reference):
    """Linear plan: worker 1 holds the only replicas of experts 4-7; a request that needs one fails with
    WorkerUnavailable naming it at once (nothing is sent to the worker: no dispatch timeout is waited),
    the others are served."""
    ray.get([engine.mark_workers_down.remote([1]) for engine in runtime.engines])
    try:
        for engine in runtime.engines:
            ids = [ray.get(engine.submit.remote(prompt, SamplingParams(max_new_tokens=NEW_TOKENS)))
                   for prompt in PROMPTS]
            for request_id, expected in zip(ids, reference):
                try:
                    assert ray.get(engine.result.remote(request_id), timeout=60) == expected
                except ray.exceptions.RayTaskError as error:
                    assert isinstance(error.cause, WorkerUnavailable) and error.cause.worker == 1, error
                    assert "expert worker 1 is down" in str(error.cause)
    finally:
        for index, engine in enumerate(runtime.engines):
            node = runtime.plan.topology.node_of_engine(index)
            ray.get(engine.replace_worker.remote(1, runtime.workers[1],
                                                 runtime.actors.channel(runtime.plan, node, 1, runtime.addresses[1])))
    assert runtime.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS)) == reference


def test_worker_killed_mid_stream_is_re_created(runtime, supervisor, client, reference):
    health = HealthWatch(client)
    received: list[int] = []
    outcome: list[object] = []

    def long_stream() -> None:
        try:
            for tokens in client.stream(PROMPTS[0], max_new_tokens=300, timeout_s=120):
                received.extend(tokens)
            outcome.append(received)
        except grpc.RpcError as error:
            outcome.append(error.code())

    streaming = threading.Thread(target=long_stream)
    streaming.start()
    wait_until(lambda: received, "the stream's first tokens", 60)
    replaced_before = _replacements(supervisor, "worker")
    os.kill(_pid(runtime.workers[0]), signal.SIGKILL)
    streaming.join(timeout=60)
    assert not streaming.is_alive(), "the stream hung"
    assert outcome[0] == Code.UNAVAILABLE or len(outcome[0]) == 300, outcome
    wait_until(lambda: _replaced(supervisor, "worker", replaced_before + 1), "the worker's re-creation", 60)
    wait_until(lambda: client.health() == "SERVING", "health SERVING", 10)
    assert _greedy_outputs(client) == reference
    statuses = health.close()
    assert "NOT_SERVING" in statuses and statuses[-1] == "SERVING", statuses


def test_stopped_worker_does_not_hang_requests_and_is_replaced(runtime, supervisor, client, reference):
    pid = _pid(runtime.workers[1])
    replaced_before = _replacements(supervisor, "worker")
    os.kill(pid, signal.SIGSTOP)
    try:
        for prompt in PROMPTS:  # each is served (by the new worker) or UNAVAILABLE, never waits out its deadline
            try:
                client.generate(prompt, max_new_tokens=NEW_TOKENS, timeout_s=60)
            except grpc.RpcError as error:
                assert error.code() == Code.UNAVAILABLE, error
        wait_until(lambda: _replaced(supervisor, "worker", replaced_before + 1), "the stopped worker's replacement",
                   60)
    finally:
        try:  # ray.kill ended it; make sure, whatever happened
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: client.health() == "SERVING", "health SERVING", 10)
    assert _greedy_outputs(client) == reference


def test_requests_sent_to_a_dead_engine_start_over_on_the_other(runtime, supervisor, client, reference):
    """Engine 0 killed: the requests the gateway sends it before it knows (no token yet) go to engine 1."""
    replaced_before = _replacements(supervisor, "engine")
    os.kill(_pid(runtime.engines[0]), signal.SIGKILL)
    assert _greedy_outputs(client) == reference
    wait_until(lambda: _replaced(supervisor, "engine", replaced_before + 1), "the engine's re-creation", 90)


def test_killed_engines_are_re_created_and_placement_and_stats_keep_answering(runtime, supervisor, client,
                                                                                reference):
    health = HealthWatch(client)
    replaced_before = _replacements(supervisor, "engine")
    for engine in list(runtime.engines):
        os.kill(_pid(engine), signal.SIGKILL)
    assert client.placement().epoch == runtime.epoch  # answered while the engines are gone
    client.stats()
    wait_until(lambda: _replaced(supervisor, "engine", replaced_before + 2), "both engines' re-creation", 90)
    wait_until(lambda: client.health() == "SERVING", "health SERVING", 10)
    assert list(client.placement().engine_epochs) == [runtime.epoch] * 2
    assert client.stats().num_tokens >= 0
    results = [client.generate(prompt, max_new_tokens=NEW_TOKENS, timeout_s=60) for prompt in PROMPTS]
    assert [list(r.token_ids) for r in results] == reference
    assert {r.finished.engine for r in results} == {0, 1}
    statuses = health.close()
    assert "NOT_SERVING" in statuses and statuses[-1] == "SERVING", statuses

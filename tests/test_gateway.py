"""The gRPC gateway against a real server on 127.0.0.1, over the real runtime on a 2-node Ray cluster.

One Ray cluster, one runtime (2 nodes x 1 worker, one engine per node) and one gateway serve the module;
gateways with other settings (auth, TLS, a small queue bound, no backend yet) share the same runtime, each
with its own `RuntimeBackend` (a backend belongs to one gateway's event loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import ray
from click.testing import CliRunner
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from switchyard.cluster.cli.main import main
from switchyard.cluster.cli.generate import generate
from switchyard.cluster.gateway.client import Client, sampling
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.gateway.status import status_of
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.cluster.rebalance.planner import model_cluster
from switchyard.cluster.rebalance.startup import record_serving_plan
from switchyard.cluster.state.store import EmbeddedStateStore, StateStoreUnavailable
from switchyard.cluster.state.publisher import StatsPublisher
from switchyard.placement.cost import PRESETS
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats
from switchyard.placement.windows import resampled_stats
from switchyard.protos.generated import serving_pb2 as pb
from switchyard.workers.checkpoints import init_checkpoint
from waiting import wait_until

pytestmark = pytest.mark.ray

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77]]
NEW_TOKENS = 6
VOCAB, CONTEXT = 512, 512  # the tiny Mixtral's
LONG = CONTEXT - 8  # a request that runs for many seconds unless stopped
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def runtime(ray_connected, tmp_path_factory):
    model_dir = init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("gateway") / "mixtral", skew=0.5, seed=7)
    with Runtime.start(model_dir, num_nodes=2, workers_per_node=1) as started:
        yield started


def _gateway(backend, **config):
    gateway = BackgroundGateway(GatewayConfig(port=0, **config))
    port = gateway.start()
    if backend is not None:
        gateway.attach(backend)
    return gateway, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def backend(runtime):
    return RuntimeBackend(runtime)


@pytest.fixture(scope="module")
def server(backend):
    gateway, target = _gateway(backend, max_batch_requests=8)
    yield target
    gateway.drain(0)


@pytest.fixture(scope="module")
def client(server):
    with Client(server) as connected:
        yield connected


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def _wait_idle(runtime, backend, timeout_s: float = 10.0) -> None:
    """Until every engine has collected its requests (cancelled ones leave after their current step)."""
    wait_until(lambda: backend.queue_depths() == [0, 0]
               and ray.get([e.queue_depth.remote() for e in runtime.engines]) == [0, 0],
               "every engine to collect its requests", timeout_s)


def test_stream_and_batch_equal_the_runtime(runtime, client):
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS)
    sampled = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.8, top_p=0.9, seed=3)
    for params in (sampled, greedy):  # greedy last: the stop test below uses its output
        direct = runtime.generate(PROMPTS, params)
        options = {"max_new_tokens": NEW_TOKENS, "temperature": params.temperature, "top_p": params.top_p,
                   "seed": params.seed}
        streamed = [sum(client.stream(prompt, **options), []) for prompt in PROMPTS]
        assert streamed == direct
        batch = client.generate_batch(PROMPTS, **options)
        assert [list(result.token_ids) for result in batch] == direct
    assert {result.finished.node for result in batch} == {0, 1}  # spread over both nodes
    result = client.generate(PROMPTS[0], max_new_tokens=NEW_TOKENS, stop_ids=[direct[0][2]])
    assert pb.FinishReason.Name(result.finished.reason) == "FINISH_REASON_STOP"
    assert list(result.token_ids) == direct[0][:3] and result.finished.prompt_tokens == len(PROMPTS[0])
    assert 0 < result.finished.time_to_first_token_seconds <= result.finished.total_seconds


def test_placement_stats_and_cluster_info(runtime, client):
    placement = client.placement()
    assert placement.epoch == 1 and (placement.num_nodes, placement.gpus_per_node) == (2, 1)
    assert list(placement.engine_epochs) == [1, 1]
    assert '"physical_to_logical_map"' in placement.plan_json
    stats = client.stats()
    assert stats.num_tokens > 0 and len(stats.layers) == 2 and len(stats.layers[0].expert_load) == 8
    assert 0 < stats.balancedness <= 1
    assert stats.traffic.same_node_bytes > 0 and stats.traffic.cross_node_bytes > 0
    info = client.cluster_info()
    assert (info.model.vocab_size, info.model.max_context, info.model.family) == (VOCAB, CONTEXT, "mixtral")
    assert [(e.index, e.node) for e in info.engines] == [(0, 0), (1, 1)]
    assert [e.active_batch for e in info.engines] == [0, 0]  # no request in flight: empty decode batches
    assert len(info.nodes) == 2 and [w.node for w in info.workers] == [0, 1] and info.device == "cpu"
    code, message = _code(lambda: client.rebalance(apply=True, expected_epoch=0))  # moves nothing
    assert code == Code.ABORTED and "not 0" in message


def test_reflection_lists_every_service(client):
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    (response,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in response.list_services_response.service}
    assert {"switchyard.v1.Switchyard", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


BAD_INPUTS = [
    pytest.param({"prompt_ids": []}, "the prompt is empty", id="empty-prompt"),
    pytest.param({"prompt_ids": [1, 99999999]}, "token id 99999999 is outside the vocabulary (512)", id="id-too-big"),
    pytest.param({"prompt_ids": [-1]}, "token id -1 is outside", id="negative-id"),
    pytest.param({"max_new_tokens": 0}, "max_new_tokens must be at least 1", id="zero-new-tokens"),
    pytest.param({"max_new_tokens": -5}, "max_new_tokens must be at least 1", id="negative-new-tokens"),
    pytest.param({"max_new_tokens": CONTEXT}, "exceeds the model's context of 512", id="beyond-context"),
    pytest.param({"temperature": -0.5}, "temperature must be >= 0", id="negative-temperature"),
    pytest.param({"top_p": 0.0}, "top_p must be in (0, 1]", id="top-p-zero"),
    pytest.param({"top_p": 1.5}, "top_p must be in (0, 1]", id="top-p-above-one"),
    pytest.param({"temperature": float("nan")}, "temperature must be >= 0 and finite", id="temperature-nan"),
    pytest.param({"temperature": 1e-300}, "or at least 0.01, got 1e-300", id="temperature-1e-300"),
    pytest.param({"top_p": 1e-46}, "float32's smallest normal number", id="top-p-below-float32-tiny"),
    pytest.param({"stop_ids": [512]}, "stop id 512 is outside the vocabulary (512)", id="stop-id-outside-vocabulary"),
    pytest.param({"prompt_ids": [], "text": "hello"}, "ships none (send prompt_ids)", id="text-without-tokenizer"),
    pytest.param({"text": "hello"}, "send prompt_ids or text, not both", id="ids-and-text"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_input_is_invalid_argument(client, change, message):
    fields = {"prompt_ids": [1, 2, 3], "text": "", **change}
    params = {key: change[key] for key in ("max_new_tokens", "temperature", "top_p", "stop_ids") if key in change}
    request = pb.GenerateRequest(prompt_ids=fields["prompt_ids"], text=fields["text"],
                                 sampling=sampling(**{"max_new_tokens": 2, **params}))
    code, details = _code(lambda: list(client.stub.Generate(request, timeout=10)))
    assert code == Code.INVALID_ARGUMENT and message in details
    code, details = _code(lambda: client.stub.GenerateBatch(pb.GenerateBatchRequest(requests=[request]), timeout=10))
    assert code == Code.INVALID_ARGUMENT and details.startswith("request 0: ") and message in details


def test_batch_bounds(client):
    code, details = _code(lambda: client.generate_batch([[1]] * 9, max_new_tokens=1))
    assert code == Code.INVALID_ARGUMENT and "the batch has 9 requests; at most 8" in details
    code, details = _code(lambda: client.generate_batch([], max_new_tokens=1))
    assert code == Code.INVALID_ARGUMENT and "the batch is empty" in details


def test_queue_bound_is_resource_exhausted(runtime):
    small = RuntimeBackend(runtime, max_queue_per_engine=1)
    gateway, target = _gateway(small)
    try:
        with Client(target) as client:
            streams = [client.stream_responses([1, 2], max_new_tokens=LONG) for _ in range(2)]
            for stream in streams:  # both engines hold one request
                assert next(stream).HasField("tokens")
            code, details = _code(lambda: client.generate([3], max_new_tokens=1))
            assert code == Code.RESOURCE_EXHAUSTED and "every engine has 1 requests in flight" in details
            for stream in streams:
                stream.cancel()
            _wait_idle(runtime, small)
            assert len(client.generate([3], max_new_tokens=2).token_ids) == 2
    finally:
        gateway.drain(0)


def test_deadline_and_cancel_free_the_engine(runtime, backend, client):
    code, _ = _code(lambda: client.generate([1, 2, 3], max_new_tokens=LONG, timeout_s=1.0))
    assert code == Code.DEADLINE_EXCEEDED
    _wait_idle(runtime, backend)
    stream = client.stream_responses([4, 5, 6], max_new_tokens=LONG)
    assert next(stream).HasField("tokens")
    stream.cancel()
    _wait_idle(runtime, backend)
    start = time.perf_counter()
    assert len(client.generate([7, 8], max_new_tokens=2).token_ids) == 2
    assert time.perf_counter() - start < 5  # served at once, not behind a forgotten request


def test_health_through_startup_and_drain(runtime):
    gateway, target = _gateway(None)
    with Client(target) as client:
        assert client.health() == "NOT_SERVING" and client.health("switchyard.v1.Switchyard") == "NOT_SERVING"
        code, details = _code(lambda: client.generate([1], max_new_tokens=1))
        assert code == Code.UNAVAILABLE and "not loaded yet" in details
        gateway.attach(RuntimeBackend(runtime))
        assert client.health() == "SERVING"
        watch = client.health_stub.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = client.stream_responses([1, 2, 3], max_new_tokens=12)
        assert next(in_flight).HasField("tokens")
        with ThreadPoolExecutor(1) as pool:
            drained = pool.submit(gateway.drain, 30)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # as the drain starts
            watch.cancel()  # an open Watch stream would hold the drain for all of its 30 s grace period
            rest = list(in_flight)  # the in-flight call finishes within the grace period
            drained.result()
        assert rest[-1].HasField("finished") and rest[-1].finished.generated_tokens == 12


def test_auth(runtime):
    gateway, target = _gateway(RuntimeBackend(runtime), token="user-secret", admin_token="admin-secret")
    try:
        for token in (None, "wrong"):
            with Client(target, token=token) as client:
                code, details = _code(lambda: client.generate([1], max_new_tokens=1))
                assert code == Code.UNAUTHENTICATED and "Bearer" in details
                assert client.health() == "SERVING"  # probes need no token
                code, _ = _code(lambda: client.rebalance())
                assert code == Code.UNAUTHENTICATED
        with Client(target, token="user-secret") as client:
            assert len(client.generate([1], max_new_tokens=2).token_ids) == 2
            for call in (client.rebalance, client.rollback):
                code, details = _code(call)
                assert code == Code.PERMISSION_DENIED and "admin token" in details
        with Client(target, token="admin-secret") as client:  # past auth; neither moves anything
            assert _code(lambda: client.rebalance(apply=True, expected_epoch=0))[0] == Code.ABORTED
            assert _code(client.rollback)[0] == Code.FAILED_PRECONDITION
            assert len(client.cluster_info().engines) == 2
    finally:
        gateway.drain(0)


def test_tls(runtime, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    gateway, target = _gateway(RuntimeBackend(runtime), tls_cert=cert, tls_key=key)
    try:
        with Client(target, tls_ca=cert) as client:
            assert len(client.generate([1], max_new_tokens=2).token_ids) == 2
        # The placement commands take the CA too (the chart's rebalance job passes it).
        shown = CliRunner().invoke(main, ["placement", "show", "--server", target, "--tls-ca", str(cert), "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output.strip().splitlines()[-1])["epoch"] >= 1
        with Client(target) as plaintext:
            assert _code(lambda: plaintext.generate([1], max_new_tokens=1, timeout_s=5))[0] == Code.UNAVAILABLE
    finally:
        gateway.drain(0)


def test_32_concurrent_streaming_clients(runtime, server):
    prompts = [[(7 * i + j) % VOCAB for j in range(1 + i % 5)] for i in range(32)]
    expected = runtime.generate(prompts, SamplingParams(max_new_tokens=4))

    def one(prompt):
        with Client(server) as client:
            return sum(client.stream(prompt, max_new_tokens=4, timeout_s=120), [])

    with ThreadPoolExecutor(32) as pool:
        assert list(pool.map(one, prompts)) == expected


def test_internal_errors_carry_a_logged_request_id(caplog):
    with caplog.at_level(logging.ERROR, logger="switchyard.cluster.gateway.server"):
        code, message = status_of(RuntimeError("boom"))
    request_id = message.split("request id ")[1].split(";")[0]
    assert code == Code.INTERNAL and "boom" not in message
    assert request_id in caplog.text and "boom" in caplog.text


def test_cli_generate_against_the_server(runtime, server):
    result = CliRunner().invoke(generate, ["--server", server, "--prompt-ids", "1,5,9", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ",".join(map(str, runtime.generate([[1, 5, 9]], SamplingParams(3))[0]))
    result = CliRunner().invoke(generate, ["--server", server, "--prompt-ids", "1,99999999"])
    assert result.exit_code == 2
    assert result.output.strip() == "INVALID_ARGUMENT: token id 99999999 is outside the vocabulary (512)"
    gateway, starting = _gateway(None)
    try:
        result = CliRunner().invoke(generate, ["--server", starting, "--prompt-ids", "1"])
        assert result.exit_code == 1 and result.output.startswith("UNAVAILABLE: ")
    finally:
        gateway.drain(0)


def test_max_message_size(runtime):
    gateway, target = _gateway(RuntimeBackend(runtime), max_message_bytes=1024)
    try:
        with Client(target) as client:
            code, details = _code(lambda: client.generate_batch([[300] * 400] * 2, max_new_tokens=1))
            assert code == Code.RESOURCE_EXHAUSTED and "larger than max" in details
            assert len(client.generate([1, 2], max_new_tokens=2).token_ids) == 2
    finally:
        gateway.drain(0)


def test_text_prompts_with_a_tokenizer(runtime, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(tmp_path)
    gateway, target = _gateway(RuntimeBackend(runtime, tokenizer_dir=tmp_path))
    try:
        with Client(target) as client:
            expected = runtime.generate([[1, 5, 9]], SamplingParams(max_new_tokens=4))[0]
            request = pb.GenerateRequest(text="w1 w5 w9", sampling=sampling(max_new_tokens=4))
            chunks = [r.tokens for r in client.stub.Generate(request, timeout=60) if r.HasField("tokens")]
            assert sum((list(c.token_ids) for c in chunks), []) == expected
            assert "".join(c.text for c in chunks).split() == [f"w{t}" for t in expected]
            (result,) = client.stub.GenerateBatch(pb.GenerateBatchRequest(requests=[request]), timeout=60).results
            assert result.text.split() == [f"w{t}" for t in expected]
            assert client.cluster_info().model.has_tokenizer
    finally:
        gateway.drain(0)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def state_store(request, fresh_redis_store):
    """Each test once per store; Redis under a deployment of its own, its keys deleted afterwards."""
    if request.param == "embedded":
        yield EmbeddedStateStore()
        return
    with fresh_redis_store("test-gateway") as store:
        yield store


def _fresh_engines(runtime, backend) -> None:
    """Idle engines whose statistics since the last take are empty (earlier tests' are not ours)."""
    _wait_idle(runtime, backend)
    ray.get([engine.take_routing_stats.remote() for engine in runtime.engines])


def _forwarded(prompts, new_tokens: int) -> int:
    """Tokens the engines count: each prompt token once, then one per decode step (the last token is
    not forwarded)."""
    return sum(len(prompt) + new_tokens - 1 for prompt in prompts)


def test_statistics_flow_into_the_store_and_get_stats(runtime, backend, state_store):
    _fresh_engines(runtime, backend)
    assert record_serving_plan(state_store, runtime.plan) == 1
    assert record_serving_plan(state_store, runtime.plan) == 1  # a second gateway keeps the active plan
    publisher = StatsPublisher(state_store, runtime.engines, interval_s=0.2, source="test").start()
    gateway, target = _gateway(RuntimeBackend(runtime, store=state_store, stats_window_s=600))
    try:
        with Client(target) as client:
            assert client.stats().num_tokens == 0 and client.stats().window_seconds == 600
            batch = client.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS)
            assert {result.finished.engine for result in batch} == {0, 1}
            tokens = _forwarded(PROMPTS, NEW_TOKENS)
            stats = wait_until(lambda: (s := client.stats()).num_tokens >= tokens and s,
                               f"{tokens} tokens published", timeout_s=20)
            assert stats.num_tokens == tokens  # each token once, however many rounds it took
            loads = np.array([layer.expert_load for layer in stats.layers])  # [L, E]
            np.testing.assert_array_equal(loads.sum(axis=1), tokens * runtime.spec.top_k)
            assert 0 < stats.balancedness <= 1
            placement = client.placement()
            assert placement.epoch == 1 and json.loads(placement.plan_json) == runtime.plan.to_dict()
        window = state_store.window("time", 600)
        assert window.num_tokens == tokens and window.topk_sets is not None  # sampled sets travel too
    finally:
        publisher.stop()
        gateway.drain(0)


def test_a_token_window_holds_the_newest_entries(runtime, state_store):
    """`--stats-window-tokens 100`: of an old entry (500 tokens) and a new one (100 tokens), GetStats sees
    only the new one, and a rebalance plans on both windows, the older one weighted by --stats-decay
    (0.5: 100 + 0.5 * 500 tokens), or on the new one alone with --stats-history 1; a time window of
    600 s holds both. The proposal names how many windows it merged (at most as many as there are)."""
    shape = (runtime.spec.num_layers, runtime.spec.num_experts)
    now = time.time()
    state_store.append_stats("old", RoutingStats.from_load(np.full(shape, 5.0), 500.0), now - 100)
    state_store.append_stats("new", RoutingStats.from_load(np.full(shape, 1.0), 100.0), now)
    cases = ((RuntimeBackend(runtime, store=state_store, stats_window_tokens=100), 100, 0, 100, 350, 2),
             (RuntimeBackend(runtime, store=state_store, stats_window_tokens=100, stats_history=1), 100, 0, 100, 100, 1),
             (RuntimeBackend(runtime, store=state_store, stats_window_s=600), 600, 600, 0, 600, 1),
             (RuntimeBackend(runtime, store=state_store, stats_window_s=60, stats_decay=0.25), 100, 60, 0, 225, 2))
    for backend, tokens, window_s, window_tokens, planned_tokens, merged in cases:
        gateway, target = _gateway(backend)
        try:
            with Client(target) as client:
                stats = client.stats()
                proposal = client.rebalance()
            assert (stats.num_tokens, stats.window_seconds, stats.window_tokens) == (tokens, window_s, window_tokens)
            assert proposal.window_tokens == planned_tokens and not proposal.applied
            assert proposal.planned_windows == merged
        finally:
            gateway.drain(0)
    with pytest.raises(ValueError, match="stats_window_tokens must be positive"):
        RuntimeBackend(runtime, store=state_store, stats_window_tokens=0)
    with pytest.raises(ValueError, match="stats_history must be a positive integer, got 0"):
        RuntimeBackend(runtime, store=state_store, stats_history=0)
    with pytest.raises(ValueError, match=r"stats_decay must be in \[0, 1\], got 1.5"):
        RuntimeBackend(runtime, store=state_store, stats_decay=1.5)


def test_a_rebalance_plans_on_the_memory_that_forecasts_the_store_best(runtime, state_store, caplog):
    """Eight 100-token windows whose expert mix swings back and forth, a stationary mix: by default
    (`--adaptive-memory`) a rebalance plans on the last 6 weighted alike (600 tokens), which forecast
    such a mix best (`placement.windows.planning_stats`); with `--fixed-memory` on the last 3 decayed
    by 0.5 (100 + 50 + 25 tokens)."""
    shape = (runtime.spec.num_layers, runtime.spec.num_experts)
    now = time.time()
    for k in range(8):
        load = np.ones(shape)
        load[:, k % 2] = 8.0
        state_store.append_stats(f"entry-{k}", RoutingStats.from_load(load, 100.0), now - 80 + 10 * k)
    planned = {}
    for adaptive in (True, False):
        gateway, target = _gateway(RuntimeBackend(runtime, store=state_store, stats_window_tokens=100,
                                                  adaptive_memory=adaptive))
        try:
            with Client(target) as client, caplog.at_level(logging.INFO):
                proposal = client.rebalance()
            planned[adaptive] = (proposal.window_tokens, proposal.planned_windows, proposal.planned_decay)
            if adaptive:  # `placement rebalance` says which windows it planned on
                result = CliRunner().invoke(main, ["placement", "rebalance", "--server", target])
                assert "on 600 tokens of statistics (the last 6 window(s), each older one weighted 1 of the next)" \
                    in result.output
        finally:
            gateway.drain(0)
    assert planned == {True: (pytest.approx(600), 6, 1.0), False: (pytest.approx(175), 3, 0.5)}
    assert "planning on the last 6 window(s), each older one weighted 1 of the next (8 window(s) read)" in caplog.text


def test_the_cluster_preset_is_what_rebalances_model_and_plan_for(runtime):
    """`--cluster`: the preset with the model's sizes (default `h100`); an unknown one is refused."""
    assert RuntimeBackend(runtime).cluster == model_cluster(runtime.spec, "h100")
    slow = RuntimeBackend(runtime, cluster_preset="h100-100gbit").cluster
    assert slow == model_cluster(runtime.spec, "h100-100gbit") and slow.hidden_size == runtime.spec.hidden_size
    assert slow.network_bandwidth == PRESETS["h100-100gbit"].network_bandwidth
    with pytest.raises(ValueError, match="unknown cluster preset 'h200'; choose one of h100, h100-100gbit"):
        RuntimeBackend(runtime, cluster_preset="h200")


def test_balance_tokens_keep_the_runs_of_entries_a_rebalance_plans_on(runtime, state_store):
    """`--balance-tokens 100` over four entries of 100 tokens in windows of 200: a rebalance plans on the
    load of each run of 100 tokens (the older window's weighted by --stats-decay), so affinity holds its
    cap on each, and its dry run answers over gRPC; GetStats' window is the merged one. Refused when not
    positive, or without a store to cut runs from."""
    shape = (runtime.spec.num_layers, runtime.spec.num_experts)
    now = time.time()
    for index in range(4):
        state_store.append_stats("engine", RoutingStats.from_load(np.full(shape, index + 1.0), 100.0), now - 3 + index)
    backend = RuntimeBackend(runtime, store=state_store, stats_window_tokens=200, balance_tokens=100)
    planning, memory = asyncio.run(backend._statistics(planning=True))
    np.testing.assert_array_equal(planning.window_load[:, 0, 0], [0.5, 1.0, 3.0, 4.0])
    assert memory == (2, 0.5)
    assert asyncio.run(backend._statistics())[0].window_load is None
    gateway, target = _gateway(backend)
    try:
        with Client(target) as client:
            assert client.stats().num_tokens == 200
            proposal = client.rebalance(policy="affinity")
        assert proposal.window_tokens == 300 and not proposal.applied
    finally:
        gateway.drain(0)
    with pytest.raises(ValueError, match="balance_tokens must be a positive number, got 0"):
        RuntimeBackend(runtime, store=state_store, balance_tokens=0)
    with pytest.raises(ValueError, match="balance_tokens needs a state store"):
        RuntimeBackend(runtime, balance_tokens=100)


def test_resampled_windows_draw_the_windows_a_rebalance_plans_on_from_the_runs(runtime, state_store):
    """`--resampled-windows 5` with `--balance-tokens 100` over the same four entries: a rebalance plans on
    5 windows drawn from the four runs (`planning_stats`, 2 runs a draw, as each window holds), with the
    same load, and its answer (and `placement rebalance`) says so; snapshots read the newest window as
    before. Refused without balance_tokens."""
    shape = (runtime.spec.num_layers, runtime.spec.num_experts)
    now = time.time()
    for index in range(4):
        state_store.append_stats("engine", RoutingStats.from_load(np.full(shape, index + 1.0), 100.0), now - 3 + index)
    plain = RuntimeBackend(runtime, store=state_store, stats_window_tokens=200, balance_tokens=100)
    backend = RuntimeBackend(runtime, store=state_store, stats_window_tokens=200, balance_tokens=100,
                             resampled_windows=5)
    expected, _ = asyncio.run(plain._statistics(planning=True))
    planning, memory = asyncio.run(backend._statistics(planning=True))
    assert memory == (2, 0.5) and planning.window_load.shape == (5, *shape)
    np.testing.assert_array_equal(planning.window_load, resampled_stats(expected, 2, 5).window_load)
    np.testing.assert_array_equal(planning.load, expected.load)
    assert asyncio.run(backend._statistics())[0].window_load is None
    for planner, drawn in ((plain, (0, 0.0)), (backend, (5, 100.0))):  # the answer names the draws, or 0
        gateway, target = _gateway(planner)
        try:
            with Client(target) as client:
                proposal = client.rebalance(policy="affinity")
                assert (proposal.resampled_windows, proposal.resampled_run_tokens) == drawn
            result = CliRunner().invoke(main, ["placement", "rebalance", "--server", target])
            assert result.exit_code == 0, result.output
            assert ("(the last 2 window(s), each older one weighted 0.5 of the next, as 5 windows drawn from their "
                    "runs of 100 tokens)" in result.output) == (planner is backend)
        finally:
            gateway.drain(0)
    with pytest.raises(ValueError, match="resampled_windows draws windows from the runs of balance_tokens"):
        RuntimeBackend(runtime, store=state_store, resampled_windows=5)


class _FlakyStore(EmbeddedStateStore):
    """An embedded store whose appends fail while `down`, as Redis' do in an outage."""

    down = False

    def append_stats(self, engine_id, stats, timestamp) -> None:
        if self.down:
            raise StateStoreUnavailable("the test's store is down")
        super().append_stats(engine_id, stats, timestamp)


def test_publisher_buffers_through_an_outage(runtime, backend):
    _fresh_engines(runtime, backend)
    store = _FlakyStore()
    publisher = StatsPublisher(store, runtime.engines, interval_s=60, source="test")
    store.down = True
    runtime.generate(PROMPTS, SamplingParams(max_new_tokens=2))
    assert publisher.publish_once() == _forwarded(PROMPTS, 2)
    assert [writer.pending for writer in publisher.writers] == [1, 1] and store.window("time", 600) is None
    store.down = False
    assert publisher.publish_once() == 0  # idle engines still flush what waited
    assert [writer.pending for writer in publisher.writers] == [0, 0]
    assert store.window("time", 600).num_tokens == _forwarded(PROMPTS, 2)


def test_rebalance_dry_run_proposes(runtime, client):
    client.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS)  # statistics to plan on
    answer = client.rebalance(apply=False, policy="affinity")
    assert answer.epoch == 1 and not answer.applied and answer.policy == "affinity"
    assert answer.HasField("feedback_level") and answer.feedback_level == 0  # the served plan was not priced
    proposed = Plan.from_dict(json.loads(answer.plan_json))
    assert proposed.topology == runtime.plan.topology and (proposed.replica_count >= 1).all()
    assert answer.bytes_to_copy == answer.replicas_moved * model_cluster(runtime.spec).expert_bytes
    assert sum(answer.replicas_moved_per_layer) == answer.replicas_moved
    assert answer.evaluated_tokens > 0 and answer.window_tokens > 0
    for metrics in (answer.current, answer.proposed):
        assert 0 < metrics.balancedness <= 1 and metrics.HasField("gpus_per_token")
        assert metrics.layer_time_s > 0
    assert answer.balancedness_before == answer.current.balancedness
    kept = client.rebalance(apply=False, max_moves=0)  # the default policy is affinity
    assert kept.replicas_moved == 0 and kept.current == kept.proposed
    assert not client.rebalance(apply=False, policy="eplb").HasField("feedback_level")  # EPLB has no price
    code, details = _code(lambda: client.rebalance(apply=False, policy="eplb", max_moves=1))
    assert code == Code.INVALID_ARGUMENT and "cannot bound the moves" in details
    code, details = _code(lambda: client.rebalance(apply=False, expected_epoch=2))
    assert code == Code.ABORTED and "epoch 1, not 2" in details


def test_rebalance_reads_the_store_window(runtime):
    store = EmbeddedStateStore()
    record_serving_plan(store, runtime.plan)
    gateway, target = _gateway(RuntimeBackend(runtime, store=store))
    try:
        with Client(target) as client:
            code, details = _code(lambda: client.rebalance(apply=False))
            assert code == Code.FAILED_PRECONDITION and "serve some requests" in details
            result = CliRunner().invoke(main, ["placement", "rebalance", "--server", target])
            assert result.exit_code == 2 and result.stderr.startswith("FAILED_PRECONDITION: ")
            client.generate_batch(PROMPTS, max_new_tokens=2)  # statistics, however the tests are ordered
            store.append_stats("engine-0", runtime.routing_stats(), time.time())
            answer = client.rebalance(apply=False, max_moves=1)
            assert answer.epoch == 1 and answer.replicas_moved <= 1 and answer.evaluated_tokens > 0
    finally:
        gateway.drain(0)


def test_cli_placement_show_and_rebalance(runtime, server):
    runner = CliRunner()
    runner.invoke(generate, ["--server", server, "--prompt-ids", "1,5,9", "--prompt-ids", "4,8",
                             "--max-new-tokens", "4"])
    result = runner.invoke(main, ["placement", "show", "--server", server, "--json"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("epoch 1: 8 experts x 2 layers") and "layer 1" in result.output
    shown = json.loads(result.output.splitlines()[-1])
    assert shown["epoch"] == 1 and len(shown["gpu_load"]) == 2 and len(shown["gpu_experts"][0]) == 2
    result = runner.invoke(main, ["placement", "rebalance", "--server", server, "--max-moves", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert "| GPUs/token" in result.output and "replica(s) moved" in result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["replicas_moved"] <= 2 and summary["policy"] == "affinity" and summary["evaluated_tokens"] > 0
    assert summary["feedback_level"] == 0 and "overload priced at balance feedback level 0" in result.output
    runner.invoke(main, ["placement", "rebalance", "--server", server, "--apply"], input="n\n")
    with Client(server) as client:  # declined, so nothing moved (tests/test_gateway_rebalance.py applies)
        assert client.placement().epoch == 1


def test_a_dead_engine_is_not_picked_again(runtime):
    """A second runtime on the same cluster (its actors are ours to kill): after engine 0 dies, its
    request is UNAVAILABLE and every later request goes to engine 1 and succeeds."""
    spare = Runtime.start(runtime.spec.model_dir, num_nodes=2, workers_per_node=1)
    gateway, target = _gateway(RuntimeBackend(spare))
    try:
        with Client(target, timeout_s=60) as spare_client:
            expected = list(spare_client.generate([1, 2, 3], max_new_tokens=4).token_ids)
            ray.kill(spare.engines[0])
            codes = []
            for _ in range(4):
                try:
                    result = spare_client.generate([1, 2, 3], max_new_tokens=4)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    continue
                assert list(result.token_ids) == expected and result.finished.engine == 1
            assert codes in ([], [grpc.StatusCode.UNAVAILABLE])  # only a request sent before it was known dead
    finally:
        gateway.drain(0)
        spare.shutdown()

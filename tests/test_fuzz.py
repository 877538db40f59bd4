"""Property-based tests (hypothesis) of hostile input.

The loaders (plans, traces, statistics) answer any content with a result or a `SwitchyardError`, never
another exception. Every RPC of a real gateway over the real runtime (on the session's Ray
cluster: 2 nodes, one worker and one engine each, started once for the module) answers any request fields, and any request bytes, with a status other
than INTERNAL or UNKNOWN, within its deadline. Examples are derandomized and bounded so the module
stays under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from switchyard.placement.errors import SwitchyardError
from switchyard.placement.formats import load_plan, load_stats, load_trace
from switchyard.placement.formats.plans import plan_of_json
from switchyard.placement.policies import policy_names
from switchyard.protos.generated import serving_pb2 as pb

FEW = settings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
DEADLINE_S = 60.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)
id_tables = st.lists(st.lists(st.integers(-2, 9) | st.floats(-1, 9) | st.booleans(), min_size=1, max_size=6),
                     min_size=1, max_size=4)
plan_dicts = st.fixed_dictionaries(
    {"physical_to_logical_map": id_tables | json_values, "num_nodes": st.integers(-1, 3) | json_values,
     "gpus_per_node": st.integers(-1, 3) | json_values},
    optional={"num_logical_experts": st.integers(-1, 10) | json_values})
arrays = hnp.arrays(st.sampled_from([np.int8, np.int64, np.uint16, np.float32, np.float64, np.bool_]),
                    hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))


def _only_switchyard_errors(load, path: Path) -> None:
    try:
        load(path)
    except SwitchyardError:
        pass


@FEW
@given(content=st.one_of(plan_dicts.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=64)))
def test_plan_loaders_raise_only_switchyard_errors(tmp_path, content):
    try:
        plan_of_json(content)
    except SwitchyardError:
        pass
    path = tmp_path / "plan.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    _only_switchyard_errors(load_plan, path)


@FEW
@given(named=st.dictionaries(st.sampled_from(["topk_ids", "topk_weights", "seq_lens", "num_experts", "other"]),
                             arrays, max_size=4))
def test_npz_traces_raise_only_switchyard_errors(tmp_path, named):
    path = tmp_path / "trace.npz"
    np.savez(path, **named)
    _only_switchyard_errors(load_trace, path)
    _only_switchyard_errors(load_stats, path)


@FEW
@given(suffix=st.sampled_from([".json", ".jsonl", ".npy", ".npz", ".pt"]),
       content=st.one_of(json_values.map(json.dumps),
                         st.fixed_dictionaries({"records": json_values, "logical_count": json_values}).map(json.dumps),
                         st.lists(st.fixed_dictionaries({"problem_id": json_values, "token_idx": json_values,
                                                         "layer": json_values, "experts": json_values,
                                                         "gating_probs": json_values}), max_size=4).map(
                             lambda records: "\n".join(json.dumps(r) for r in records)),
                         st.binary(max_size=64)))
def test_trace_and_stats_files_raise_only_switchyard_errors(tmp_path, suffix, content):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    _only_switchyard_errors(load_trace, path)
    _only_switchyard_errors(load_stats, path)


# ---- every RPC of a real gateway ----

@pytest.fixture(scope="module")
def gateway(ray_connected, tmp_path_factory):
    from switchyard.cluster.gateway.backend import RuntimeBackend
    from switchyard.cluster.gateway.client import Client
    from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
    from switchyard.cluster.rebalance.startup import record_serving_plan
    from switchyard.cluster.runtime.runtime import Runtime
    from switchyard.cluster.state.store import EmbeddedStateStore
    from switchyard.workers.checkpoints import init_checkpoint

    model_dir = init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("fuzz") / "mixtral", skew=0.5, seed=5)
    with Runtime.start(model_dir, num_nodes=2, workers_per_node=1) as runtime:
        store = EmbeddedStateStore()
        record_serving_plan(store, runtime.plan)
        server = BackgroundGateway(GatewayConfig(port=0, max_batch_requests=4))
        port = server.start()
        server.attach(RuntimeBackend(runtime, store=store, observe_after_s=0.5))
        try:
            with Client(f"127.0.0.1:{port}", timeout_s=DEADLINE_S) as client:
                client.generate([1, 2, 3], max_new_tokens=2)  # statistics for the policies
                yield client, runtime
        finally:
            server.drain(0)


def _answers(call) -> None:
    """`call()` either succeeds or fails with a status that names the caller's fault or a busy cluster."""
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() not in SERVER_ERRORS, f"{error.code().name}: {error.details()}"


int64s = st.integers(-2**63, 2**63 - 1)
sampling = st.builds(
    pb.SamplingParams, max_new_tokens=st.none() | st.integers(-3, 6) | st.integers(-2**31, 2**31 - 1),
    temperature=st.floats(width=64) | st.sampled_from([0.0, 1e-300, 0.7]),
    top_p=st.none() | st.floats(width=64) | st.sampled_from([1e-46, 0.9]), seed=st.integers(0, 2**64 - 1),
    stop_ids=st.lists(int64s | st.integers(0, 511), max_size=3))
generate_requests = st.builds(
    pb.GenerateRequest, prompt_ids=st.lists(st.integers(0, 511), max_size=6) | st.lists(int64s, max_size=4),
    text=st.just("") | st.text(max_size=8), sampling=sampling)


@pytest.mark.ray
@FEW
@given(request=generate_requests)
def test_generate_any_fields(gateway, request):
    client, _ = gateway
    _answers(lambda: list(client.stub.Generate(request, timeout=DEADLINE_S)))


@pytest.mark.ray
@settings(FEW, max_examples=20)
@given(requests=st.lists(generate_requests, max_size=5))
def test_generate_batch_any_fields(gateway, requests):
    client, _ = gateway
    _answers(lambda: client.stub.GenerateBatch(pb.GenerateBatchRequest(requests=requests), timeout=DEADLINE_S))


def _plans(runtime) -> st.SearchStrategy[str]:
    """Plan JSON: the served plan (a no-op), its GPUs shifted (a real move), mutations, garbage."""
    served = runtime.plan.to_dict()
    shifted = {**served, "physical_to_logical_map": np.roll(np.array(served["physical_to_logical_map"]),
                                                            runtime.plan.topology.slots_per_gpu, axis=1).tolist()}
    mutated = st.builds(lambda key, value: json.dumps({**served, key: value}),
                        st.sampled_from(sorted(served)), json_values)
    return st.sampled_from([json.dumps(served), json.dumps(shifted), ""]) | mutated | plan_dicts.map(json.dumps) | \
        st.text(max_size=16)


@pytest.mark.ray
@settings(FEW, max_examples=30)
@given(data=st.data())
def test_admin_and_read_calls_any_fields(gateway, data):
    client, runtime = gateway
    request = pb.RebalanceRequest(apply=data.draw(st.booleans()),
                                  policy=data.draw(st.sampled_from(["", *policy_names()]) | st.text(max_size=6)),
                                  plan_json=data.draw(_plans(runtime)))
    if (max_moves := data.draw(st.none() | st.integers(-2**31, 2**31 - 1))) is not None:
        request.max_moves = max_moves
    if (expected := data.draw(st.none() | st.integers(0, 4) | int64s)) is not None:
        request.expected_epoch = expected
    _answers(lambda: client.stub.Rebalance(request, timeout=DEADLINE_S))
    _answers(lambda: client.stub.Rollback(pb.RollbackRequest(apply=data.draw(st.booleans())), timeout=DEADLINE_S))
    limit = data.draw(st.integers(-2**31, 2**31 - 1))
    _answers(lambda: client.stub.GetEvents(pb.GetEventsRequest(limit=limit), timeout=DEADLINE_S))
    for call, message in ((client.stub.GetPlacement, pb.GetPlacementRequest), (client.stub.GetStats, pb.GetStatsRequest),
                          (client.stub.ClusterInfo, pb.ClusterInfoRequest),
                          (client.stub.GetRequestMetrics, pb.GetRequestMetricsRequest)):
        _answers(lambda: call(message(), timeout=DEADLINE_S))


METHODS = [method.name for method in pb.DESCRIPTOR.services_by_name["Switchyard"].methods]


@pytest.mark.ray
@settings(FEW, max_examples=30)
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=48))
def test_every_rpc_any_bytes(gateway, method, payload):
    client, _ = gateway
    streaming = method == "Generate"
    raw = (client.channel.unary_stream if streaming else client.channel.unary_unary)(
        f"/switchyard.v1.Switchyard/{method}", request_serializer=None, response_deserializer=None)
    _answers(lambda: list(raw(payload, timeout=DEADLINE_S)) if streaming else raw(payload, timeout=DEADLINE_S))

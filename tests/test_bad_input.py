"""Hostile input that needs no Ray: sampling fields, plan JSON of any shape, conflicting CLI flags,
`serve`'s start-up checks, and a gateway's answers to a port in use and to undecodable request bytes.

Every case is a row of the "Bad input" table in docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess

import grpc
import pytest
from click.testing import CliRunner

from switchyard.cluster.cli.main import main
from switchyard.cluster.cli.preflight import check_serve_options, wait_for_address
from switchyard.cluster.engine.requests import check_stop_ids, make_params
from switchyard.cluster.errors import InvalidRequest, InvalidSetting
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.settings import RAY_CONNECT_TIMEOUT_ENV
from switchyard.placement.errors import PlacementError
from switchyard.placement.formats import load_plan
from switchyard.placement.formats.plans import plan_of_json
from switchyard.protos.generated import serving_pb2 as pb

GOOD = {"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop_ids": [2]}
PLAN = {"physical_to_logical_map": [[0, 1], [1, 0]], "num_nodes": 1, "gpus_per_node": 2}


@pytest.mark.parametrize(("change", "message"), [
    pytest.param({"temperature": math.nan}, "temperature must be >= 0 and finite", id="temperature-nan"),
    pytest.param({"temperature": math.inf}, "temperature must be >= 0 and finite", id="temperature-inf"),
    pytest.param({"temperature": 1e-300}, "or at least 0.01", id="temperature-1e-300"),
    pytest.param({"temperature": 0.001}, "or at least 0.01", id="temperature-below-the-floor"),
    pytest.param({"top_p": 1e-46}, "float32's smallest normal number", id="top-p-below-float32-tiny"),
    pytest.param({"top_p": math.nan}, "top_p must be in (0, 1]", id="top-p-nan"),
    pytest.param({"top_p": -math.inf}, "top_p must be in (0, 1]", id="top-p-minus-inf"),
    pytest.param({"max_new_tokens": 2**31}, "max_new_tokens must be at least 1", id="max-new-tokens-2-31"),
    pytest.param({"max_new_tokens": 2.5}, "max_new_tokens must be at least 1", id="max-new-tokens-float"),
    pytest.param({"seed": -1}, "seed must be an integer in [0, 2**64)", id="seed-negative"),
    pytest.param({"seed": 2**64}, "seed must be an integer in [0, 2**64)", id="seed-2-64"),
    pytest.param({"stop_ids": [-3]}, "stop id -3 is not a token id", id="stop-id-negative"),
    pytest.param({"stop_ids": [1.5]}, "stop id 1.5 is not a token id", id="stop-id-float"),
    pytest.param({"stop_ids": list(range(1025))}, "at most 1024 stop ids", id="too-many-stop-ids"),
])
def test_bad_sampling_is_invalid_request(change, message):
    with pytest.raises(InvalidRequest) as caught:
        make_params(**{**GOOD, **change})
    assert message in str(caught.value)


def test_good_sampling_passes_and_stop_ids_are_checked_against_the_vocabulary():
    params = make_params(**{**GOOD, "temperature": 0.0, "top_p": float.fromhex("0x1p-126"), "seed": 2**64 - 1})
    assert params.stop_ids == (2,) and params.seed == 2**64 - 1
    check_stop_ids(params, 512)
    with pytest.raises(InvalidRequest, match=r"stop id 600 is outside the vocabulary \(512\)"):
        check_stop_ids(make_params(**{**GOOD, "stop_ids": [600]}), 512)


@pytest.mark.parametrize(("text", "message"), [
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[0, 1e30], [1, 0]]}), "1e+30 is not an expert id",
                 id="id-1e30"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[0, 0.5], [1, 0]]}), "0.5 is not an expert id",
                 id="id-0.5"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[0, 2**70], [1, 0]]}), "is not an expert id",
                 id="id-2-70"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[0, True], [1, 0]]}), "True is not an expert id",
                 id="id-bool"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[0, "1"], [1, 0]]}), "'1' is not an expert id",
                 id="id-string"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[0, 1], [1]]}), "not a rectangular table",
                 id="ragged"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": [[[0, 1]], [[1, 0]]]}), "is not an expert id",
                 id="three-d"),
    pytest.param(json.dumps({**PLAN, "physical_to_logical_map": "0,1"}), "must be 2-D", id="table-string"),
    pytest.param(json.dumps({**PLAN, "num_nodes": 1.0}), "num_nodes must be a positive integer", id="nodes-float"),
    pytest.param(json.dumps({**PLAN, "gpus_per_node": 2**40}), "gpus_per_node must be a positive integer",
                 id="gpus-huge"),
    pytest.param(json.dumps({**PLAN, "num_logical_experts": "2"}), "num_logical_experts must be a positive",
                 id="experts-string"),
    pytest.param(json.dumps([PLAN]), "a plan must be a JSON object", id="a-list"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="nesting-100k"),
    pytest.param("1" * 5000, "not usable JSON", id="5000-digit-integer"),
    pytest.param("{not json", "not JSON", id="not-json"),
    pytest.param(b"\xff\xfe{}", "JSON", id="bad-utf8"),
])
def test_bad_plan_json_is_a_placement_error(tmp_path, text, message):
    with pytest.raises(PlacementError) as caught:
        plan_of_json(text)
    assert message in str(caught.value)
    path = tmp_path / "plan.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PlacementError, match="plan.json"):
        load_plan(path)


def test_good_plan_json_still_loads():
    plan = plan_of_json(json.dumps(PLAN))
    assert plan.physical_to_logical.tolist() == [[0, 1], [1, 0]] and plan.num_logical_experts == 2


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def test_conflicting_rebalance_flags_are_usage_errors(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    for extra, other in ((["--policy", "eplb"], "--policy"), (["--max-moves", "3"], "--max-moves")):
        result = _invoke("placement", "rebalance", "--server", "127.0.0.1:1", "--plan", str(plan), *extra)
        assert result.exit_code == 2 and f"--plan and {other} conflict" in result.output, result.output
    for command in ("rebalance", "rollback"):
        result = _invoke("placement", command, "--server", "127.0.0.1:1", "--dry-run", "--apply")
        assert result.exit_code == 2 and "--dry-run and --apply contradict each other" in result.output


def _serve(*args: str, env: dict[str, str] | None = None):
    """`switchyard serve` with a model that does not exist: the start-up checks come first."""
    result = _invoke("serve", "--model", "/nonexistent/model", "--port", "0", *args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_serve_checks_host_port_and_tls_before_anything_starts(tmp_path):
    result = _serve("--host", "256.1.1.1")
    assert result.exit_code == 2 and "--host 256.1.1.1: not an address" in result.output
    assert result.output.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _invoke("serve", "--model", "/nonexistent/model", "--port", str(port))
    assert result.exit_code == 1 and f"127.0.0.1:{port} is in use" in result.output, result.output
    assert result.output.count("\n") == 1
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = _serve("--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert result.exit_code == 2 and "not a PEM certificate and its unencrypted private key" in result.output
    assert result.output.count("\n") == 1


def test_serve_warns_when_admin_calls_are_open_beyond_loopback(capsys):
    check_serve_options("0.0.0.0", 0, None, None, None, admin_token=None)
    assert "without --admin-token: anyone who can reach the port may call Rebalance" in capsys.readouterr().err
    for host, admin_token in (("127.0.0.1", None), ("0.0.0.0", "secret")):
        check_serve_options(host, 0, None, None, None, admin_token)
        assert capsys.readouterr().err == ""
    result = _serve("--address", "nonsense")
    assert result.exit_code == 2 and "--address nonsense: expected HOST:PORT" in result.output


def test_unreachable_ray_address_is_a_bounded_wait_then_one_line():
    result = _serve("--address", "127.0.0.1:1", env={RAY_CONNECT_TIMEOUT_ENV: "1"})
    assert result.exit_code == 1 and "--address 127.0.0.1:1: no Ray head answered within 1 s" in result.output
    assert result.output.count("\n") == 1
    result = _serve("--address", "127.0.0.1:1", env={RAY_CONNECT_TIMEOUT_ENV: "soon"})
    assert result.exit_code == 2 and RAY_CONNECT_TIMEOUT_ENV in result.output
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        wait_for_address(f"ray://127.0.0.1:{head.getsockname()[1]}", 1.0)  # answers: returns at once


def _gateway(port: int = 0) -> tuple[BackgroundGateway, int]:
    gateway = BackgroundGateway(GatewayConfig(port=port))
    return gateway, gateway.start()


def test_a_second_gateway_on_a_port_in_use_fails():
    first, port = _gateway()
    try:
        second = BackgroundGateway(GatewayConfig(port=port))
        try:
            with pytest.raises(InvalidSetting, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
                second.start()
        finally:
            second.drain(0)
    finally:
        first.drain(0)


@pytest.mark.parametrize("method", ["Generate", "GenerateBatch", "GetPlacement", "Rebalance", "Rollback"])
def test_undecodable_request_bytes_are_invalid_argument(method):
    gateway, port = _gateway()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = (channel.unary_stream if method == "Generate" else channel.unary_unary)(
                f"/switchyard.v1.Switchyard/{method}", request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as caught:
                answer = raw(b"\xff\xff\xff\xff\xff", timeout=10)
                if method == "Generate":
                    list(answer)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert f"not a valid {method} request message" in caught.value.details()
            # bytes that parse reach the servicer (no backend yet: UNAVAILABLE)
            with pytest.raises(grpc.RpcError) as caught:
                answer = raw(b"", timeout=10)
                if method == "Generate":
                    list(answer)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.drain(0)


def test_a_default_rebalance_request_is_a_dry_run():
    assert not pb.RebalanceRequest().apply and not pb.RollbackRequest().apply
    assert not pb.RebalanceRequest.FromString(b"").apply
    with pytest.raises(ValueError):
        pb.RebalanceRequest(dry_run=False)  # the old field is gone


def test_openssl_made_certificate_passes_the_tls_check(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    result = _serve("--tls-cert", str(cert), "--tls-key", str(key), "--address", "127.0.0.1:1",
                    env={RAY_CONNECT_TIMEOUT_ENV: "0.5"})
    assert result.exit_code == 1 and "no Ray head answered" in result.output  # past the TLS check
    result = _serve("--tls-cert", str(cert), "--tls-key", str(cert))
    assert result.exit_code == 2 and "--tls-key" in result.output

"""`switchyard.cluster.gateway.client`: a small synchronous Python client of the gateway (the CLI uses it).

    with Client("127.0.0.1:50051") as client:
        for tokens in client.stream([1, 5, 9], max_new_tokens=8): ...
        result = client.generate([1, 5, 9], max_new_tokens=8)   # GenerateResult: token_ids, finished

gRPC errors surface as `grpc.RpcError` (`.code()`, `.details()`); `switchyard.cluster.errors.exit_code`
(`error.code().name`) tells whether the caller's request was at fault (2) or not (1).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchyard.protos.generated import serving_pb2 as pb
from switchyard.protos.generated import serving_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from switchyard.placement.windows import Memory, Resampling


def sampling(max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float | None = None,
             seed: int = 0, stop_ids: Sequence[int] = ()) -> pb.SamplingParams:
    """The `SamplingParams` proto; None leaves a field unset (the server's default)."""
    params = pb.SamplingParams(temperature=temperature, seed=seed, stop_ids=list(stop_ids))
    if max_new_tokens is not None:
        params.max_new_tokens = max_new_tokens
    if top_p is not None:
        params.top_p = top_p
    return params


def planned_memory(answer: pb.RebalanceResponse) -> Memory | None:
    """`(windows, decay)` a proposal was planned on (`Proposal.memory`); None where the gateway does
    not say (`planned_windows` 0)."""
    return (answer.planned_windows, answer.planned_decay) if answer.planned_windows else None


def planned_resampling(answer: pb.RebalanceResponse) -> Resampling | None:
    """`(windows, run_tokens)` drawn for a proposal (`Proposal.resampled`); None where it was planned
    on the windows themselves (`resampled_windows` 0)."""
    return (answer.resampled_windows, answer.resampled_run_tokens) if answer.resampled_windows else None


def planned_feedback_level(answer: pb.RebalanceResponse) -> int | None:
    """The balance feedback's level a proposal's overload was priced at (`Proposal.feedback_level`);
    None where the feedback priced nothing (`feedback_level` unset)."""
    return answer.feedback_level if answer.HasField("feedback_level") else None


class Client:
    """One channel to a gateway. target: `host:port`.  token: bearer token.  tls_ca: PEM of the CA
    (or the server's self-signed certificate) for a TLS gateway.  timeout_s: default deadline per call."""

    def __init__(self, target: str, token: str | None = None, tls_ca: Path | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024, timeout_s: float | None = None) -> None:
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls_ca is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()),
                                               options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.SwitchyardStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def _call(self, timeout_s: float | None) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": timeout_s if timeout_s is not None else self.timeout_s}

    def stream_responses(self, prompt_ids: Sequence[int], timeout_s: float | None = None,
                         **params: Any) -> Any:
        """The raw response stream of Generate (cancel it with `.cancel()`)."""
        request = pb.GenerateRequest(prompt_ids=list(prompt_ids), sampling=sampling(**params))
        return self.stub.Generate(request, **self._call(timeout_s))

    def stream(self, prompt_ids: Sequence[int], timeout_s: float | None = None, **params: Any) -> Iterator[list[int]]:
        """Lists of new token ids as the gateway streams them."""
        for response in self.stream_responses(prompt_ids, timeout_s, **params):
            if response.HasField("tokens"):
                yield list(response.tokens.token_ids)

    def generate(self, prompt_ids: Sequence[int], timeout_s: float | None = None, **params: Any) -> pb.GenerateResult:
        """One prompt, streamed and collected: `token_ids` and `finished`."""
        result = pb.GenerateResult()
        for response in self.stream_responses(prompt_ids, timeout_s, **params):
            if response.HasField("tokens"):
                result.token_ids.extend(response.tokens.token_ids)
            else:
                result.finished.CopyFrom(response.finished)
        return result

    def generate_batch(self, prompts: Sequence[Sequence[int]], timeout_s: float | None = None,
                       **params: Any) -> list[pb.GenerateResult]:
        """Many prompts with the same sampling parameters; results in prompt order."""
        shared = sampling(**params)
        request = pb.GenerateBatchRequest(
            requests=[pb.GenerateRequest(prompt_ids=list(p), sampling=shared) for p in prompts])
        return list(self.stub.GenerateBatch(request, **self._call(timeout_s)).results)

    def placement(self) -> pb.GetPlacementResponse:
        return self.stub.GetPlacement(pb.GetPlacementRequest(), **self._call(None))

    def stats(self) -> pb.GetStatsResponse:
        return self.stub.GetStats(pb.GetStatsRequest(), **self._call(None))

    def cluster_info(self) -> pb.ClusterInfoResponse:
        return self.stub.ClusterInfo(pb.ClusterInfoRequest(), **self._call(None))

    def events(self, limit: int = 0) -> pb.GetEventsResponse:
        """The newest rebalance events as JSON strings, newest first (0: the server's default, 100)."""
        return self.stub.GetEvents(pb.GetEventsRequest(limit=limit), **self._call(None))

    def request_metrics(self) -> pb.RequestMetrics:
        return self.stub.GetRequestMetrics(pb.GetRequestMetricsRequest(), **self._call(None))

    def rebalance(self, apply: bool = False, policy: str = "", max_moves: int | None = None,
                  plan_json: str | None = None, expected_epoch: int | None = None,
                  timeout_s: float | None = None) -> pb.RebalanceResponse:
        """A rebalance proposal (admin), applied live only with `apply`. plan_json: evaluate or apply this
        plan (GetPlacement's format) instead of planning with `policy`.  expected_epoch: ABORTED unless
        the active epoch is still this one."""
        request = pb.RebalanceRequest(apply=apply, policy=policy, plan_json=plan_json or "")
        if max_moves is not None:
            request.max_moves = max_moves
        if expected_epoch is not None:
            request.expected_epoch = expected_epoch
        return self.stub.Rebalance(request, **self._call(timeout_s))

    def rollback(self, apply: bool = False, timeout_s: float | None = None) -> pb.RebalanceResponse:
        """What moving back to the plan active before the current one would do; with `apply`, do it as
        a new epoch (admin)."""
        return self.stub.Rollback(pb.RollbackRequest(apply=apply), **self._call(timeout_s))

    def health(self, service: str = "") -> str:
        """The health status name (`SERVING`, `NOT_SERVING`, ...) of `service` ("" is the server)."""
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

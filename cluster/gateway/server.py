"""The gRPC gateway: `switchyard.v1.Switchyard`, health and reflection on one grpc.aio server.

The servicer only translates between protos and the domain (`switchyard.cluster.gateway.backend`); errors
become status codes in one place, `status_of`. Until a backend is attached (`Gateway.attach`), and
again from the start of a drain, health answers NOT_SERVING and the Switchyard service UNAVAILABLE,
so a probe never routes traffic to a gateway that is starting or stopping.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchyard.cluster.rebalance.applier import RebalanceOutcome
from switchyard.cluster.gateway.backend import Backend, TokenStream, check_request, make_params
from switchyard.cluster.errors import (Conflict, FailedPrecondition, InvalidRequest, MigrationAborted,
                                               NotReady, QueueFull, ServingError)
from switchyard.cluster.state.store import StateStoreUnavailable
from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import PlanMetrics
from switchyard.protos.generated import serving_pb2 as pb
from switchyard.protos.generated import serving_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Switchyard"].full_name
ADMIN_METHODS = frozenset({f"/{SERVICE_NAME}/Rebalance", f"/{SERVICE_NAME}/Rollback"})
OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)  # probes need no token
DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_POLICY = "affinity"  # Rebalance's policy when the request names none


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway listens and what it accepts.

    token: when set, every call but health needs `authorization: Bearer <token>`.  admin_token: when
    set, admin calls (Rebalance, Rollback) need it (PERMISSION_DENIED with another valid token).  tls_cert /
    tls_key: PEM files; both or neither.  max_batch_requests: prompts in one GenerateBatch.
    grace_s: how long a drain waits for in-flight calls.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    token: str | None = None
    admin_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    max_batch_requests: int = 64
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file")
        if self.max_batch_requests < 1 or self.max_message_bytes < 1:
            raise ValueError("max_batch_requests and max_message_bytes must be at least 1")


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message of an exception raised while serving a call (INTERNAL: logged)."""
    if isinstance(error, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, (Conflict, MigrationAborted)):
        return grpc.StatusCode.ABORTED, str(error)
    if isinstance(error, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, (NotReady, StateStoreUnavailable)):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(error)
    if isinstance(error, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error) or "timed out"
    request_id = uuid.uuid4().hex[:12]
    log.error("internal error, request id %s", request_id, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}; see the gateway log)"


def _guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A unary handler whose exceptions end the call with `status_of`'s code."""

    async def handler(self: SwitchyardServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - every failure ends the call with its status code
            if isinstance(error, grpc.aio.AbortError):
                raise
            await context.abort(*status_of(error))

    handler.__name__ = method.__name__
    return handler


class _TextStream:
    """The text of each new chunk of tokens: the decoded output so far minus what was already sent, so
    characters that span tokens come out whole. Empty strings without a tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.tokens, self.sent = tokenizer, [], ""

    def add(self, tokens: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        self.tokens += tokens
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\ufffd"):  # an incomplete character: wait for the next token
            return ""
        new, self.sent = text[len(self.sent):], text
        return new


class SwitchyardServicer(pb_grpc.SwitchyardServicer):
    """Protos in, domain calls, protos out; `backend` is None until the model is loaded."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.backend: Backend | None = None
        self.draining = False

    def _ready(self) -> Backend:
        if self.backend is None:
            raise NotReady("the gateway is starting: the model is not loaded yet")
        if self.draining:
            raise NotReady("the gateway is shutting down")
        return self.backend

    def _domain_request(self, request: pb.GenerateRequest, backend: Backend) -> tuple[list[int], Any]:
        if request.text and request.prompt_ids:
            raise InvalidRequest("send prompt_ids or text, not both")
        if request.text:
            if backend.tokenizer is None:
                raise InvalidRequest(f"text prompts need a tokenizer; {backend.model.model_dir} ships none "
                                     "(send prompt_ids)")
            prompt = list(backend.tokenizer(request.text)["input_ids"])
        else:
            prompt = list(request.prompt_ids)
        sampling = request.sampling
        params = make_params(
            sampling.max_new_tokens if sampling.HasField("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS,
            sampling.temperature, sampling.top_p if sampling.HasField("top_p") else 1.0, sampling.seed,
            list(sampling.stop_ids))
        check_request(prompt, params, backend.model)  # the whole batch is checked before any of it runs
        return prompt, params

    @staticmethod
    def _finished(stream: TokenStream, start: float, first_token_at: float | None) -> pb.Finished:
        stopped = bool(stream.output) and stream.output[-1] in stream.params.stop_ids
        now = time.perf_counter()
        return pb.Finished(
            reason=pb.FINISH_REASON_STOP if stopped else pb.FINISH_REASON_LENGTH,
            prompt_tokens=len(stream.prompt), generated_tokens=len(stream.output),
            time_to_first_token_seconds=(first_token_at or now) - start, total_seconds=now - start,
            engine=stream.engine_index, node=stream.node)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[pb.GenerateResponse]:
        start, first_token_at = time.perf_counter(), None
        try:
            backend = self._ready()
            prompt, params = self._domain_request(request, backend)
            text = _TextStream(backend.tokenizer if request.text else None)
            async with backend.open(prompt, params) as stream:
                async for tokens in stream:
                    first_token_at = first_token_at or time.perf_counter()
                    yield pb.GenerateResponse(tokens=pb.TokenChunk(token_ids=tokens, text=text.add(tokens)))
                finished = self._finished(stream, start, first_token_at)
            yield pb.GenerateResponse(finished=finished)
        except Exception as error:  # noqa: BLE001 - every failure ends the call with its status code
            if isinstance(error, grpc.aio.AbortError):
                raise
            await context.abort(*status_of(error))

    async def _one(self, backend: Backend, prompt: list[int], params: Any, with_text: bool) -> pb.GenerateResult:
        start, first_token_at = time.perf_counter(), None
        async with backend.open(prompt, params) as stream:
            async for _ in stream:
                first_token_at = first_token_at or time.perf_counter()
            text = backend.tokenizer.decode(stream.output) if with_text else ""
            return pb.GenerateResult(token_ids=stream.output, text=text,
                                     finished=self._finished(stream, start, first_token_at))

    @_guarded
    async def GenerateBatch(self, request: pb.GenerateBatchRequest, context: grpc.aio.ServicerContext
                            ) -> pb.GenerateBatchResponse:
        backend = self._ready()
        count = len(request.requests)
        if count == 0:
            raise InvalidRequest("the batch is empty")
        if count > self.config.max_batch_requests:
            raise InvalidRequest(f"the batch has {count} requests; at most {self.config.max_batch_requests} "
                                 "are allowed (split it)")
        domain = []
        for index, item in enumerate(request.requests):
            try:
                domain.append(self._domain_request(item, backend))
            except InvalidRequest as error:
                raise InvalidRequest(f"request {index}: {error}") from None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._one(backend, prompt, params, bool(item.text)))
                         for (prompt, params), item in zip(domain, request.requests)]
        except* ServingError as errors:  # the first one names the cause
            raise errors.exceptions[0] from None
        return pb.GenerateBatchResponse(results=[task.result() for task in tasks])

    @_guarded
    async def GetPlacement(self, request: pb.GetPlacementRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetPlacementResponse:
        backend = self._ready()
        (epoch, plan), engine_epochs = await asyncio.gather(backend.placement(), backend.engine_epochs())
        topology = plan.topology
        return pb.GetPlacementResponse(
            epoch=epoch, plan_json=json.dumps(plan.to_dict()), num_layers=plan.num_layers,
            num_physical_experts=plan.num_physical_experts, num_nodes=topology.num_nodes,
            gpus_per_node=topology.gpus_per_node, engine_epochs=engine_epochs)

    @_guarded
    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        snapshot = await self._ready().snapshot()
        traffic = {key: snapshot.traffic[key] for key in pb.TrafficCounters.DESCRIPTOR.fields_by_name}
        return pb.GetStatsResponse(
            num_tokens=snapshot.stats.num_tokens,
            layers=[pb.LayerLoad(expert_load=row.tolist()) for row in snapshot.stats.load],
            balancedness=snapshot.balancedness, traffic=pb.TrafficCounters(**traffic),
            window_seconds=snapshot.window_s, window_tokens=snapshot.window_tokens)

    @_guarded
    async def ClusterInfo(self, request: pb.ClusterInfoRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ClusterInfoResponse:
        backend = self._ready()
        info = await backend.cluster_info()
        depths = backend.queue_depths()
        return pb.ClusterInfoResponse(
            model=pb.ModelInfo(**vars(backend.model)),
            nodes=[pb.NodeInfo(**node) for node in info["nodes"]],
            engines=[pb.EngineInfo(**engine, queue_depth=depths[engine["index"]]) for engine in info["engines"]],
            workers=[pb.WorkerInfo(**worker) for worker in info["workers"]], device=info["device"])

    @_guarded
    async def Rebalance(self, request: pb.RebalanceRequest, context: grpc.aio.ServicerContext
                        ) -> pb.RebalanceResponse:
        max_moves = request.max_moves if request.HasField("max_moves") else None
        if max_moves is not None and max_moves < 0:
            raise InvalidRequest(f"max_moves must be non-negative, got {max_moves}")
        plan = _plan_of_json(request.plan_json) if request.plan_json else None
        expected_epoch = request.expected_epoch if request.HasField("expected_epoch") else None
        outcome = await self._ready().rebalance(request.dry_run, request.policy or DEFAULT_POLICY, max_moves,
                                                plan, expected_epoch)
        return _rebalance_response(outcome)

    @_guarded
    async def Rollback(self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext
                       ) -> pb.RebalanceResponse:
        return _rebalance_response(await self._ready().rollback(request.dry_run))


def _plan_of_json(text: str) -> Plan:
    """The plan a request carries (`InvalidRequest` naming what is wrong with it)."""
    try:
        return Plan.from_dict(json.loads(text))
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"plan_json is not JSON: {error}") from None
    except PlacementError as error:
        raise InvalidRequest(f"plan_json is not a valid plan: {error}") from None


def _rebalance_response(outcome: RebalanceOutcome) -> pb.RebalanceResponse:
    """The proto of a Rebalance or Rollback outcome; the apply fields stay 0 for a dry run."""
    proposal, report = outcome.proposal, outcome.applied
    applied = {} if report is None else {
        "applied_epoch": report.epoch, "bytes_copied": report.bytes_copied, "apply_seconds": report.total_seconds,
        "steps_during_switch": report.steps_during_switch}
    return pb.RebalanceResponse(
        epoch=outcome.epoch, applied=report is not None, plan_json=json.dumps(proposal.proposed.to_dict()),
        balancedness_before=proposal.before.balancedness, balancedness_after=proposal.after.balancedness,
        policy=proposal.policy, replicas_moved=proposal.migration.num_copies,
        replicas_moved_per_layer=proposal.copies_per_layer.tolist(), bytes_to_copy=proposal.bytes_moved,
        current=_plan_metrics(proposal.before), proposed=_plan_metrics(proposal.after),
        window_tokens=proposal.window_tokens, evaluated_tokens=proposal.evaluated_tokens, **applied)


def _plan_metrics(metrics: PlanMetrics) -> pb.PlanMetrics:
    """The proto of `metrics`; figures that are None stay unset."""
    return pb.PlanMetrics(**{key: value for key, value in metrics.to_dict().items() if value is not None})


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token checks: UNAUTHENTICATED without a valid token, PERMISSION_DENIED for admin calls."""

    def __init__(self, token: str | None, admin_token: str | None) -> None:
        self.token, self.admin_token = token, admin_token

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else None
        is_admin = given is not None and self.admin_token is not None and hmac.compare_digest(given, self.admin_token)
        is_user = given is not None and self.token is not None and hmac.compare_digest(given, self.token)
        if method in ADMIN_METHODS and self.admin_token is not None:
            if is_admin:
                return handler
            if is_user or (self.token is None and given is not None):
                return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the admin token")
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            f"{method} needs 'authorization: Bearer <admin token>' metadata")
        if self.token is None or is_user or is_admin:
            return handler
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                        "missing or wrong token: send 'authorization: Bearer <token>' metadata")


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)


class Gateway:
    """The server: `await start()`, `await attach(backend)` once the model is loaded, `await drain()`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.servicer = SwitchyardServicer(config)
        self.health = health.aio.HealthServicer()
        options = [("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.max_receive_message_length", config.max_message_bytes)]
        interceptors = [AuthInterceptor(config.token, config.admin_token)] if (
            config.token or config.admin_token) else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_SwitchyardServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self.port = 0

    async def start(self) -> int:
        """Listen (health NOT_SERVING until `attach`); returns the bound port (useful with port 0)."""
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert is not None:
            credentials = grpc.ssl_server_credentials(
                [(self.config.tls_key.read_bytes(), self.config.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("gateway listening on %s:%d (%s)", self.config.host, self.port,
                 "TLS" if self.config.tls_cert else "plaintext")
        return self.port

    async def attach(self, backend: Backend) -> None:
        """Serve from `backend`: health turns SERVING."""
        self.servicer.backend = backend
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING first, refuse new calls, let in-flight ones finish for the grace period, stop."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_s if grace_s is None else grace_s)
        if self.servicer.backend is not None:
            await self.servicer.backend.close()

    async def _set_health(self, status: Any) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


class BackgroundGateway:
    """A `Gateway` on its own event loop in a daemon thread, for embedding (tests, benchmarks, notebooks).

    `start()` returns the port; `attach(backend)`, `drain()` block until done on the gateway's loop.
    """

    def __init__(self, config: GatewayConfig) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self._thread.start()
        self.gateway = self._run(self._create(config))

    @staticmethod
    async def _create(config: GatewayConfig) -> Gateway:
        return Gateway(config)  # grpc.aio objects belong to the loop they are made on

    def _run(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def start(self) -> int:
        return self._run(self.gateway.start())

    def attach(self, backend: Backend) -> None:
        self._run(self.gateway.attach(backend))

    def drain(self, grace_s: float | None = None) -> None:
        self._run(self.gateway.drain(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

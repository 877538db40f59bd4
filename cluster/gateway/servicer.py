"""The `switchyard.v1.Switchyard` servicer: protos in, `Backend` calls, protos out; nothing else.

Until a backend is attached, and from the start of a drain, every call answers UNAVAILABLE; errors
become status codes in `status.status_of`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from switchyard.cluster.dashboard.requests import RequestMetrics, RequestTotals
from switchyard.cluster.errors import InvalidRequest, NotReady, ServingError
from switchyard.cluster.gateway.backend import Backend, check_request
from switchyard.cluster.gateway.status import code_of, guarded, status_of
from switchyard.cluster.gateway.streaming import TokenStream
from switchyard.cluster.engine.requests import make_params
from switchyard.cluster.rebalance.applier import RebalanceOutcome
from switchyard.cluster.settings import DEFAULTS
from switchyard.placement.errors import PlacementError
from switchyard.placement.formats.plans import plan_of_json
from switchyard.placement.plan import Plan
from switchyard.placement.policies import DEFAULT_POLICY
from switchyard.placement.proposal import PlanMetrics
from switchyard.protos.generated import serving_pb2 as pb
from switchyard.protos.generated import serving_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from switchyard.cluster.gateway.server import GatewayConfig


DEFAULT_EVENTS, MAX_EVENTS = 100, 1000  # GetEvents' limit when unset, and at most (the store keeps 1000)

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
    """Protos in, domain calls, protos out; `backend` is None until the model is loaded. `requests`
    counts every request (each prompt of a batch) and times its tokens, for GetRequestMetrics and
    the dashboard."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.backend: Backend | None = None
        self.draining = False
        self.requests = RequestMetrics()

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
            sampling.max_new_tokens if sampling.HasField("max_new_tokens") else DEFAULTS.max_new_tokens,
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
        timer = self.requests.timer()
        try:
            backend = self._ready()
            prompt, params = self._domain_request(request, backend)
            text = _TextStream(backend.tokenizer if request.text else None)
            async with backend.open(prompt, params) as stream:
                async for tokens in stream:
                    timer.tokens(len(tokens))
                    first_token_at = first_token_at or time.perf_counter()
                    yield pb.GenerateResponse(tokens=pb.TokenChunk(token_ids=tokens, text=text.add(tokens)))
                finished = self._finished(stream, start, first_token_at)
            timer.finished(_reason(finished))
            yield pb.GenerateResponse(finished=finished)
        except Exception as error:  # noqa: BLE001 - every failure ends the call with its status code
            if isinstance(error, grpc.aio.AbortError):
                raise
            code, message = status_of(error)
            timer.failed(code.name)
            await context.abort(code, message)
        finally:
            timer.close()

    async def _one(self, backend: Backend, prompt: list[int], params: Any, with_text: bool) -> pb.GenerateResult:
        start, first_token_at = time.perf_counter(), None
        timer = self.requests.timer()
        try:
            async with backend.open(prompt, params) as stream:
                async for tokens in stream:
                    timer.tokens(len(tokens))
                    first_token_at = first_token_at or time.perf_counter()
                text = backend.tokenizer.decode(stream.output) if with_text else ""
                result = pb.GenerateResult(token_ids=stream.output, text=text,
                                           finished=self._finished(stream, start, first_token_at))
            timer.finished(_reason(result.finished))
            return result
        except BaseException as error:  # counted with its code, then raised on
            timer.failed(code_of(error).name)
            raise

    @guarded
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

    @guarded
    async def GetPlacement(self, request: pb.GetPlacementRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetPlacementResponse:
        backend = self._ready()
        (epoch, plan), engine_epochs = await asyncio.gather(backend.placement(), backend.engine_epochs())
        topology = plan.topology
        return pb.GetPlacementResponse(
            epoch=epoch, plan_json=json.dumps(plan.to_dict()), num_layers=plan.num_layers,
            num_physical_experts=plan.num_physical_experts, num_nodes=topology.num_nodes,
            gpus_per_node=topology.gpus_per_node, engine_epochs=engine_epochs)

    @guarded
    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        snapshot = await self._ready().snapshot()
        traffic = {key: snapshot.traffic[key] for key in pb.TrafficCounters.DESCRIPTOR.fields_by_name
                   if key != "engines"}
        engines = [pb.EngineTraffic(home_node=e["home_node"], bytes_per_worker=e["bytes_per_worker"],
                                    tokens_per_worker=e["tokens_per_worker"]) for e in snapshot.traffic["engines"]]
        return pb.GetStatsResponse(
            num_tokens=snapshot.stats.num_tokens,
            layers=[pb.LayerLoad(expert_load=row.tolist()) for row in snapshot.stats.load],
            balancedness=snapshot.balancedness, traffic=pb.TrafficCounters(**traffic, engines=engines),
            window_seconds=snapshot.window_s, window_tokens=snapshot.window_tokens)

    @guarded
    async def ClusterInfo(self, request: pb.ClusterInfoRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ClusterInfoResponse:
        backend = self._ready()
        info, batches = await asyncio.gather(backend.cluster_info(), backend.active_batches())
        depths = backend.queue_depths()
        return pb.ClusterInfoResponse(
            model=pb.ModelInfo(**vars(backend.model)),
            nodes=[pb.NodeInfo(**node) for node in info["nodes"]],
            engines=[pb.EngineInfo(**engine, queue_depth=depths[engine["index"]],
                                                active_batch=batches[engine["index"]]) for engine in info["engines"]],
            workers=[pb.WorkerInfo(**worker) for worker in info["workers"]], device=info["device"])

    @guarded
    async def GetEvents(self, request: pb.GetEventsRequest, context: grpc.aio.ServicerContext
                        ) -> pb.GetEventsResponse:
        limit = request.limit or DEFAULT_EVENTS
        if not 0 < limit <= MAX_EVENTS:
            raise InvalidRequest(f"limit must be between 1 and {MAX_EVENTS} (0: {DEFAULT_EVENTS}), got {request.limit}")
        events = await self._ready().events(limit)
        return pb.GetEventsResponse(event_json=[json.dumps(event) for event in events])

    @guarded
    async def GetRequestMetrics(self, request: pb.GetRequestMetricsRequest, context: grpc.aio.ServicerContext
                                ) -> pb.RequestMetrics:
        return _request_metrics(self.requests.totals())

    @guarded
    async def Rebalance(self, request: pb.RebalanceRequest, context: grpc.aio.ServicerContext
                        ) -> pb.RebalanceResponse:
        max_moves = request.max_moves if request.HasField("max_moves") else None
        if max_moves is not None and max_moves < 0:
            raise InvalidRequest(f"max_moves must be non-negative, got {max_moves}")
        plan = _plan_of_json(request.plan_json) if request.plan_json else None
        expected_epoch = request.expected_epoch if request.HasField("expected_epoch") else None
        outcome = await self._ready().rebalance(not request.apply, request.policy or DEFAULT_POLICY, max_moves,
                                                plan, expected_epoch, by=self._caller(context))
        return _rebalance_response(outcome)

    @guarded
    async def Rollback(self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext
                       ) -> pb.RebalanceResponse:
        return _rebalance_response(await self._ready().rollback(not request.apply, by=self._caller(context)))

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """Who asks for an admin call, for the applier's log line and event: the credential the auth
        interceptor let through (it admits admin calls with the admin token only, when one is set) and
        the peer's address."""
        credential = ("admin token" if self.config.admin_token else "user token" if self.config.token
                      else "no token: admin calls are open")
        return f"admin ({credential}, {context.peer()})"


def _reason(finished: pb.Finished) -> str:
    """"length" or "stop": the request metrics' label of a finish reason."""
    return pb.FinishReason.Name(finished.reason).removeprefix("FINISH_REASON_").lower()


def _request_metrics(totals: RequestTotals) -> pb.RequestMetrics:
    def histogram(h: Any) -> pb.Histogram:
        return pb.Histogram(upper_bounds=h.upper_bounds, cumulative_counts=h.cumulative, sum=h.sum)

    return pb.RequestMetrics(started=totals.started, finished=totals.finished, failed=totals.failed,
                             generated_tokens=totals.generated_tokens,
                             time_to_first_token=histogram(totals.time_to_first_token),
                             inter_token=histogram(totals.inter_token))


def _plan_of_json(text: str) -> Plan:
    """The plan a request carries (`InvalidRequest` naming what is wrong with it)."""
    try:
        return plan_of_json(text)
    except PlacementError as error:
        raise InvalidRequest(f"plan_json is not a valid plan: {error}") from None


def _rebalance_response(outcome: RebalanceOutcome) -> pb.RebalanceResponse:
    """The proto of a Rebalance or Rollback outcome; the apply fields stay 0 for a dry run."""
    proposal, report = outcome.proposal, outcome.applied
    applied = {} if report is None else {
        "applied_epoch": report.epoch, "bytes_copied": report.bytes_copied, "apply_seconds": report.total_seconds,
        "steps_during_switch": report.steps_during_switch}
    memory = {} if proposal.memory is None else {"planned_windows": proposal.memory[0],
                                                 "planned_decay": proposal.memory[1]}
    if proposal.resampled is not None:
        memory.update(resampled_windows=proposal.resampled[0], resampled_run_tokens=proposal.resampled[1])
    if proposal.feedback_level is not None:
        memory.update(feedback_level=proposal.feedback_level)
    return pb.RebalanceResponse(
        epoch=outcome.epoch, applied=report is not None, plan_json=json.dumps(proposal.proposed.to_dict()),
        balancedness_before=proposal.before.balancedness, balancedness_after=proposal.after.balancedness,
        policy=proposal.policy, replicas_moved=proposal.migration.num_copies,
        replicas_moved_per_layer=proposal.copies_per_layer.tolist(), bytes_to_copy=proposal.bytes_moved,
        current=_plan_metrics(proposal.before), proposed=_plan_metrics(proposal.after),
        window_tokens=proposal.window_tokens, evaluated_tokens=proposal.evaluated_tokens, **memory, **applied)


def _plan_metrics(metrics: PlanMetrics) -> pb.PlanMetrics:
    """The proto of `metrics`; figures that are None stay unset."""
    return pb.PlanMetrics(**{key: value for key, value in metrics.to_dict().items() if value is not None})

"""Where a dashboard reads the cluster: the gateway's own backend, or a running gateway over gRPC.

`BackendSource` runs inside `switchyard serve`, on the gateway's event loop, and reads what the
gateway serves from (the `Backend`, the gateway's `RequestMetrics`, the statistics publisher's
writers). `ClientSource` is `switchyard dashboard --server HOST:PORT`: the same readings through
GetPlacement, GetStats, ClusterInfo, GetEvents and GetRequestMetrics. Both give a `ClusterView` and
run the rebalance dry run; both raise `SourceError` with an HTTP status and a message for a request
the cluster refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import grpc
import numpy as np

from switchyard.cluster.dashboard.requests import HistogramTotals, RequestMetrics, RequestTotals
from switchyard.cluster.dashboard.view import ClusterView, EngineTraffic
from switchyard.cluster.errors import SwitchyardError
from switchyard.cluster.gateway.client import planned_feedback_level, planned_memory, planned_resampling
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import memory_dict
from switchyard.placement.windows import Memory, Resampling

EVENTS_SHOWN = 100

_HTTP_OF_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 403, "PERMISSION_DENIED": 403, "FAILED_PRECONDITION": 409,
    "ABORTED": 409, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
"""The dashboard's HTTP status for a gRPC status code name (a `SwitchyardError`'s `status`, or the
gateway's answer); 502 for any other."""


class SourceError(Exception):
    """The cluster refused or could not answer; `status` is the HTTP status the dashboard answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def of(cls, grpc_status: str, message: str) -> SourceError:
        return cls(_HTTP_OF_STATUS.get(grpc_status, 502), message)


class Source(Protocol):
    async def view(self) -> ClusterView:
        """The cluster now (`SourceError` 503 when it cannot be read)."""

    async def dry_run(self, policy: str, max_moves: int | None) -> dict[str, Any]:
        """What a rebalance with `policy` would gain now (`proposal_dict`); nothing moves."""


def proposal_dict(epoch: int, policy: str, current: dict[str, Any], proposed: dict[str, Any], moved: int,
                  moved_per_layer: list[int], bytes_to_copy: int, window_tokens: float,
                  memory: Memory | None, resampled: Resampling | None, feedback_level: int | None) -> dict[str, Any]:
    """The dry-run panel's JSON: the current and proposed plans' figures and the copies between them,
    the statistics planned on (`memory`: how many windows, each older one weighted by the decay;
    `resampled`: the windows drawn from their runs, if any; `memory_dict`), and the balance feedback's
    level affinity's overload was priced at (None where it priced nothing)."""
    return {"epoch": epoch, "policy": policy, "current": current, "proposed": proposed, "replicas_moved": moved,
            "replicas_moved_per_layer": moved_per_layer, "bytes_to_copy": bytes_to_copy,
            "window_tokens": window_tokens,
            "memory": memory_dict(memory, resampled), "feedback_level": feedback_level}


class BackendSource:
    """The gateway's backend, in the gateway's process and on its event loop.

    requests: the gateway servicer's `RequestMetrics`.  writers: the statistics publisher's
    `BufferedStatsWriter`s (their buffered, dropped and failed entries), or () without a publisher.
    """

    def __init__(self, backend: Any, requests: RequestMetrics, writers: tuple[Any, ...] = ()) -> None:
        self.backend, self.requests, self.writers = backend, requests, writers

    async def view(self) -> ClusterView:
        backend = self.backend
        try:
            (epoch, plan), engine_epochs, snapshot, events, batches = await asyncio.gather(
                backend.placement(), backend.engine_epochs(), backend.snapshot(), backend.events(EVENTS_SHOWN),
                backend.active_batches())
        except SwitchyardError as error:
            raise SourceError.of(error.status, str(error)) from None
        model = backend.model
        store = None if not self.writers else {
            "buffered": sum(w.pending for w in self.writers), "dropped": sum(w.dropped for w in self.writers),
            "errors": sum(w.failures for w in self.writers)}
        return ClusterView(
            {"family": model.family, "model_dir": model.model_dir, "num_layers": model.num_layers,
             "num_experts": model.num_experts, "top_k": model.top_k},
            epoch, plan, tuple(engine_epochs), snapshot.stats.load, snapshot.stats.num_tokens, snapshot.balancedness,
            snapshot.window_s, snapshot.window_tokens,
            tuple(EngineTraffic(e["home_node"], tuple(e["bytes_per_worker"]), tuple(e["tokens_per_worker"]))
                  for e in snapshot.traffic["engines"]),
            tuple(backend.queue_depths()), tuple(batches), tuple(events), self.requests.totals(), store)

    async def dry_run(self, policy: str, max_moves: int | None) -> dict[str, Any]:
        try:
            outcome = await self.backend.rebalance(True, policy, max_moves)
        except SwitchyardError as error:
            raise SourceError.of(error.status, str(error)) from None
        proposal = outcome.proposal
        return proposal_dict(outcome.epoch, proposal.policy, proposal.before.to_dict(), proposal.after.to_dict(),
                             proposal.migration.num_copies, proposal.copies_per_layer.tolist(),
                             proposal.bytes_moved, proposal.window_tokens, proposal.memory,
                             proposal.resampled, proposal.feedback_level)


def totals_of_proto(message: Any) -> RequestTotals:
    """`RequestTotals` from a `RequestMetrics` proto."""

    def histogram(h: Any) -> HistogramTotals:
        return HistogramTotals(tuple(h.upper_bounds), tuple(h.cumulative_counts), h.sum)

    return RequestTotals(message.started, dict(message.finished), dict(message.failed), message.generated_tokens,
                         histogram(message.time_to_first_token), histogram(message.inter_token))


class ClientSource:
    """A running gateway through `switchyard.cluster.gateway.client.Client` (blocking calls in threads).

    admin_client: the client the dry run goes through (Rebalance is an admin call when the gateway
    has an admin token); default: `client`.
    """

    def __init__(self, client: Any, admin_client: Any = None) -> None:
        self.client = client
        self.admin_client = client if admin_client is None else admin_client

    async def view(self) -> ClusterView:
        try:
            placement, stats, info, events, requests = await asyncio.gather(*(asyncio.to_thread(call) for call in (
                self.client.placement, self.client.stats, self.client.cluster_info,
                lambda: self.client.events(EVENTS_SHOWN), self.client.request_metrics)))
        except grpc.RpcError as error:
            raise SourceError.of(error.code().name, f"the gateway answered {error.code().name}: {error.details()}") from None
        model = info.model
        load = np.array([list(layer.expert_load) for layer in stats.layers], dtype=np.float64).reshape(
            model.num_layers, model.num_experts)
        return ClusterView(
            {"family": model.family, "model_dir": model.model_dir, "num_layers": model.num_layers,
             "num_experts": model.num_experts, "top_k": model.top_k},
            placement.epoch, Plan.from_dict(json.loads(placement.plan_json)), tuple(placement.engine_epochs), load,
            stats.num_tokens, stats.balancedness, stats.window_seconds, stats.window_tokens,
            tuple(EngineTraffic(e.home_node, tuple(e.bytes_per_worker), tuple(e.tokens_per_worker))
                  for e in stats.traffic.engines),
            tuple(engine.queue_depth for engine in info.engines), tuple(engine.active_batch for engine in info.engines),
            tuple(json.loads(e) for e in events.event_json),
            totals_of_proto(requests))

    async def dry_run(self, policy: str, max_moves: int | None) -> dict[str, Any]:
        try:
            r = await asyncio.to_thread(self.admin_client.rebalance, False, policy, max_moves)
        except grpc.RpcError as error:
            hint = (" (the dry run is an admin call: start the dashboard with --admin-token)"
                    if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) else "")
            raise SourceError.of(error.code().name,
                                 f"the gateway answered {error.code().name}: {error.details()}{hint}") from None

        def figures(m: Any) -> dict[str, Any]:
            return {key: getattr(m, key) if key == "balancedness" or m.HasField(key) else None
                    for key in ("balancedness", "gpus_per_token", "remote_nodes_per_token", "layer_time_s")}

        return proposal_dict(r.epoch, r.policy, figures(r.current), figures(r.proposed), r.replicas_moved,
                             list(r.replicas_moved_per_layer), r.bytes_to_copy, r.window_tokens,
                             planned_memory(r), planned_resampling(r), planned_feedback_level(r))

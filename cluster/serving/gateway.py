"""`GatewayReplica`: Switchyard's own gRPC gateway (and dashboard) as a Serve deployment.

The front door is `cluster.gateway.server.Gateway`, unchanged: switchyard.v1, grpc.health.v1,
reflection, bearer auth, TLS, the same status codes (docs/kubernetes.md says why not Serve's gRPC
proxy). It runs on its own event loop (`BackgroundGateway`) and listens as soon as the replica starts,
NOT_SERVING until every engine slot has an engine registered. Its backend is the ordinary
`RuntimeBackend` over a `Runtime` view that a refresher thread keeps in step with the `ExpertPool`'s
registry every `REFRESH_EVERY_S`: a re-created worker, or the engine a replacement replica registered
in a slot, takes its predecessor's place (the backend picks a re-created engine again, as it does
under `switchyard serve`'s supervisor).
A plan applied live here (`Rebalance`, `Rollback`) is reported to the pool, so that re-created workers
and new engines start from it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from ray import serve

from switchyard.cluster.dashboard.server import DashboardConfig, DashboardServer, bind
from switchyard.cluster.dashboard.source import BackendSource
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.rebalance.applier import RebalanceOutcome
from switchyard.cluster.runtime.actors import ActorFactory
from switchyard.cluster.runtime.runtime import GATEWAY_RESOURCE, Runtime
from switchyard.cluster.serving.args import AppArgs
from switchyard.cluster.state.store import open_state_store
from switchyard.placement.plan import Plan
from switchyard.workers.checkpoints import load_spec

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 1.0
"""Seconds between two readings of the pool's registry (a replaced engine is used within about this)."""


def _take_new(mine: list[Any], registry: list[Any]) -> None:
    """Put each entry of `registry` that differs from `mine`'s (another actor) in its place; entries
    that are the same actor stay the same object (the backend tells a re-created engine by identity)."""
    for index, entry in enumerate(registry):
        if entry is not None and entry != mine[index]:
            mine[index] = entry


class ServeBackend(RuntimeBackend):
    """`RuntimeBackend` that reports every plan it applies live to the `ExpertPool`."""

    def __init__(self, runtime: Runtime, pool: Any, **options: Any) -> None:
        super().__init__(runtime, **options)
        self.pool = pool

    async def _apply(self, *args: Any) -> RebalanceOutcome:
        outcome = await super()._apply(*args)
        plan, epoch = self.runtime.plan.to_dict(), self.runtime.epoch
        await asyncio.to_thread(lambda: self.pool.set_plan.remote(plan, epoch).result())
        return outcome


@serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {GATEWAY_RESOURCE: 1}}, health_check_period_s=5)
class GatewayReplica:
    """The gRPC front door on this replica's node (module doc). engines: the engine deployment's handle;
    it keeps that deployment in the application (the gateway calls the engines it registered)."""

    def __init__(self, pool: Any, engines: Any, raw_args: dict[str, Any]) -> None:
        args = AppArgs.parse(raw_args)
        self.args, self.pool = args, pool
        tls = (Path(args.tls_cert_file), Path(args.tls_key_file)) if args.tls_cert_file else (None, None)
        self.config = GatewayConfig(host=args.host, port=args.grpc_port, token=args.secret("token_file"),
                                    admin_token=args.secret("admin_token_file"), tls_cert=tls[0], tls_key=tls[1])
        self.server = BackgroundGateway(self.config)
        self.port = self.server.start()
        self.health_server = (self.server.run(self.server.gateway.serve_health_only(args.host, args.health_port))
                              if args.health_port else None)
        self.backend: ServeBackend | None = None
        self.dashboard: DashboardServer | None = None
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_forever, name="gateway-registry", daemon=True)
        self._refresher.start()

    def check_health(self) -> None:
        if not self._refresher.is_alive():
            raise RuntimeError("the gateway's registry refresher stopped")

    def _refresh_forever(self) -> None:
        """Build the backend once every engine slot is registered, attach it (health SERVING), then
        follow the registry."""
        runtime: Runtime | None = None
        while not self._stop.wait(REFRESH_EVERY_S if runtime is not None else 0.2):
            try:
                layout = self.pool.layout.remote().result(timeout_s=30)
            except Exception as error:  # the pool restarting: keep serving with what is known
                log.warning("cannot read the expert pool's registry: %s", error)
                continue
            if runtime is None:
                if all(engine is not None for engine in layout["engines"]):
                    runtime = self._attach(layout)
                continue
            _take_new(runtime.workers, layout["workers"])
            _take_new(runtime.addresses, layout["addresses"])
            _take_new(runtime.engines, layout["engines"])

    def _attach(self, layout: dict[str, Any]) -> Runtime:
        args = self.args
        runtime = Runtime(load_spec(layout["model"]), Plan.from_dict(layout["plan"]), layout["epoch"],
                          list(layout["workers"]), list(layout["engines"]), ActorFactory(tuple(layout["node_ids"])),
                          list(layout["addresses"]))
        store_url = args.redis_url()
        store = open_state_store(store_url, args.deployment) if store_url else None
        self.backend = ServeBackend(runtime, self.pool, max_queue_per_engine=args.max_queue, store=store,
                                    stats_window_s=args.stats_window_s, stats_history=args.stats_history,
                                    stats_decay=args.stats_decay, adaptive_memory=args.adaptive_memory,
                                    balance_tokens=args.balance_tokens, resampled_windows=args.resampled_windows,
                                    balance_feedback=args.balance_feedback, cluster_preset=args.cluster)
        self.server.attach(self.backend)
        if args.metrics_port:
            tokens = tuple(token for token in (self.config.token, self.config.admin_token) if token)
            self.dashboard = DashboardServer(BackendSource(self.backend, self.server.gateway.servicer.requests),
                                             DashboardConfig(args.host, args.metrics_port, tokens),
                                             bind(args.host, args.metrics_port))
            self.server.run(self.dashboard.start())
        log.info("gateway serving %s on %s:%d from %d engine(s)", layout["model"], args.host, self.port,
                 len(runtime.engines))
        return runtime

    def __del__(self) -> None:
        """Serve stops the replica: drain (health NOT_SERVING, in-flight calls get the grace period)."""
        self._stop.set()
        if getattr(self, "dashboard", None) is not None:
            self.server.run(self.dashboard.stop())
        if getattr(self, "health_server", None) is not None:
            self.server.run(self.health_server.stop(0))
        if getattr(self, "server", None) is not None:
            self.server.drain()


"""The gRPC gateway: `switchyard.v1.Switchyard`, health and reflection on one grpc.aio server.

The servicer (`servicer`) only translates between protos and the backend (`backend`); errors become
status codes in one place (`status`); tokens are checked by `auth`. Until a backend is attached (`Gateway.attach`), and
again from the start of a drain, health answers NOT_SERVING and the Switchyard service UNAVAILABLE,
so a probe never routes traffic to a gateway that is starting or stopping. While attached, health
follows `Backend.serving` (read every `health_interval_s`): NOT_SERVING while a fault leaves
the service unable to serve every request (no engine up, or an expert with no replica up), SERVING
again once the supervisor has re-created what failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchyard.cluster.errors import InvalidSetting
from switchyard.cluster.gateway.auth import SERVICE_NAME, AuthInterceptor
from switchyard.cluster.gateway.backend import Backend
from switchyard.cluster.gateway.decoding import StrictDecoding
from switchyard.cluster.gateway.servicer import SwitchyardServicer
from switchyard.cluster.settings import DEFAULTS
from switchyard.protos.generated import serving_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway listens and what it accepts.

    token: when set, every call but health needs `authorization: Bearer <token>`.  admin_token: when
    set, admin calls (Rebalance, Rollback) need it (PERMISSION_DENIED with another valid token).  tls_cert /
    tls_key: PEM files; both or neither.  max_batch_requests: prompts in one GenerateBatch.
    grace_s: how long a drain waits for in-flight calls.  health_interval_s: how often health reads
    `Backend.serving`.
    """

    host: str = DEFAULTS.host
    port: int = DEFAULTS.port
    token: str | None = None
    admin_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = DEFAULTS.max_message_bytes
    max_batch_requests: int = DEFAULTS.max_batch_requests
    grace_s: float = DEFAULTS.grace_s
    health_interval_s: float = DEFAULTS.probe_interval_s

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidSetting("TLS needs both a certificate and a key file")
        if self.max_batch_requests < 1 or self.max_message_bytes < 1:
            raise InvalidSetting("max_batch_requests and max_message_bytes must be at least 1")


class Gateway:
    """The server: `await start()`, `await attach(backend)` once the model is loaded, `await drain()`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.servicer = SwitchyardServicer(config)
        self.health = health.aio.HealthServicer()
        options = [("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a second gateway on a port in use fails instead of sharing it
        interceptors = [AuthInterceptor(config.token, config.admin_token)] if (
            config.token or config.admin_token) else []
        interceptors.append(StrictDecoding())
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_SwitchyardServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self.port = 0
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen (health NOT_SERVING until `attach`); returns the bound port (useful with port 0)."""
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert is not None:
            credentials = grpc.ssl_server_credentials(
                [(self.config.tls_key.read_bytes(), self.config.tls_cert.read_bytes())])
        try:
            self.port = (self.server.add_secure_port(address, credentials) if self.config.tls_cert is not None
                         else self.server.add_insecure_port(address))
        except RuntimeError as error:  # gRPC's "Failed to bind to address"
            raise InvalidSetting(f"cannot listen on {address}: the port is in use, or the host is not an "
                                 f"address of this machine ({error})") from None
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("gateway listening on %s:%d (%s)", self.config.host, self.port,
                 "TLS" if self.config.tls_cert else "plaintext")
        return self.port

    async def attach(self, backend: Backend) -> None:
        """Serve from `backend`: health turns SERVING, then follows `backend.serving()`."""
        self.servicer.backend = backend
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._watch = asyncio.get_running_loop().create_task(self._watch_health(backend))

    async def _watch_health(self, backend: Backend) -> None:
        serving = True
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            if backend.serving() != serving:
                serving = not serving
                log.warning("health: %s", "SERVING (recovered)" if serving else "NOT_SERVING (an actor is down)")
                await self._set_health(health_pb2.HealthCheckResponse.SERVING if serving
                                       else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def drain(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING first, refuse new calls, let in-flight ones finish for the grace period, stop."""
        self.servicer.draining = True
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_s if grace_s is None else grace_s)
        if self.servicer.backend is not None:
            await self.servicer.backend.close()

    async def serve_health_only(self, host: str, port: int) -> grpc.aio.Server:
        """A second, plaintext server answering only grpc.health.v1 (the same statuses) on `host:port`:
        beside a TLS gateway, for probes that cannot speak TLS (the kubelet's). Stop it with `stop`."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_insecure_port(f"{host}:{port}")
        await server.start()
        log.info("grpc.health.v1 only, plaintext, on %s:%d", host, port)
        return server

    async def _set_health(self, status: Any) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


class BackgroundGateway:
    """A `Gateway` on its own event loop in a daemon thread, for embedding (tests, benchmarks, notebooks).

    `start()` returns the port; `attach(backend)`, `drain()` block until done on the gateway's loop;
    `run(coroutine)` runs anything else there.
    """

    def __init__(self, config: GatewayConfig) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self._thread.start()
        self.gateway = self.run(self._create(config))

    @staticmethod
    async def _create(config: GatewayConfig) -> Gateway:
        return Gateway(config)  # grpc.aio objects belong to the loop they are made on

    def run(self, coroutine: Awaitable[Any]) -> Any:
        """Run `coroutine` on the gateway's loop (beside the server: a dashboard, a health port) and wait."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def start(self) -> int:
        return self.run(self.gateway.start())

    def attach(self, backend: Backend) -> None:
        self.run(self.gateway.attach(backend))

    def drain(self, grace_s: float | None = None) -> None:
        self.run(self.gateway.drain(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

"""`DashboardServer`: the dashboard app on uvicorn, on the caller's event loop.

`switchyard serve` runs it beside the gRPC gateway on the gateway's loop (the backend belongs to that
loop), so the socket is bound before the server starts: a port in use is a one-line error at start,
never uvicorn's `sys.exit` from inside the serving loop. uvicorn's own signal handling is off: the
process that embeds the server owns SIGINT and SIGTERM and calls `stop()` when it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import uvicorn

from switchyard.cluster.dashboard.app import create_app
from switchyard.cluster.dashboard.sampler import Sampler
from switchyard.cluster.dashboard.source import Source
from switchyard.cluster.settings import DEFAULTS


@dataclass(frozen=True)
class DashboardConfig:
    """host, port: where to listen (port 0: any free port).  tokens: bearer tokens accepted (empty: no
    auth).  refresh_s: seconds between readings of the cluster (the page polls as often)."""

    host: str = DEFAULTS.dashboard_host
    port: int = 0
    tokens: tuple[str, ...] = ()
    refresh_s: float = DEFAULTS.dashboard_refresh_s


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the embedding process handles signals (module doc)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; `OSError` (port in use, bad host) names the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise OSError(f"the dashboard cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


class DashboardServer:
    """`await start()` returns the address (`http://host:port/`); `await stop()` ends it.

    sock: a socket `bind` returned for `config`'s address (bound early, before a slow start); None:
    bound by `start`.
    """

    def __init__(self, source: Source, config: DashboardConfig, sock: socket.socket | None = None) -> None:
        self.config = config
        self.sampler = Sampler(source, config.refresh_s)
        self.app = create_app(self.sampler, config.tokens)
        self._server = _Server(uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False))
        self._socket = sock
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> str:
        if self._socket is None:
            self._socket = bind(self.config.host, self.config.port)
        self.port = self._socket.getsockname()[1]
        self.sampler.start()
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        return self.address

    @property
    def address(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        await self.sampler.stop()
        if self._socket is not None:
            self._socket.close()

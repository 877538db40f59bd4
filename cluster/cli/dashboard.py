"""`switchyard dashboard --server HOST:PORT`: the ops dashboard and metrics for a running gateway.

The page and `/metrics` read the gateway through its gRPC API (`ClientSource`); `switchyard serve`
runs the same dashboard in-process (`--dashboard-port`). gRPC and the HTTP server are imported only
when the command runs.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from switchyard.cluster.cli.params import OneLineCommand, UserError
from switchyard.cluster.settings import ADMIN_TOKEN_ENV, DEFAULTS, TOKEN_ENV


def _server_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--server must be HOST:PORT of a running gateway, got {value!r}")
    return value


async def run_dashboard(source: object, config: object) -> None:
    """Serve the dashboard over `source` until SIGINT or SIGTERM."""
    from switchyard.cluster.dashboard.server import DashboardServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = DashboardServer(source, config)
    try:
        address = await server.start()
    except OSError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"dashboard at {address} (metrics at {address}metrics)", err=True)
    await stop.wait()
    await server.stop()


@click.command("dashboard", cls=OneLineCommand)
@click.option("--server", required=True, callback=_server_address, help="The gateway to watch, HOST:PORT.")
@click.option("--token", envvar=TOKEN_ENV, default=None,
              help="The gateway's bearer token; the dashboard then asks for it too.")
@click.option("--admin-token", envvar=ADMIN_TOKEN_ENV, default=None,
              help="For the dry-run panel where the gateway has an admin token (nothing is applied).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM of the CA (or self-signed certificate) of a TLS gateway.")
@click.option("--host", default=DEFAULTS.dashboard_host, show_default=True, help="Where the dashboard listens.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULTS.dashboard_port, show_default=True)
@click.option("--refresh", "refresh_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.dashboard_refresh_s,
              show_default=True,
              help="Seconds between readings of the gateway (the page refreshes as often).")
def dashboard(server: str, token: str | None, admin_token: str | None, tls_ca: Path | None, host: str, port: int,
              refresh_s: float) -> None:
    """Serve the ops dashboard (page and /metrics) for the gateway at --server until SIGINT/SIGTERM."""
    import grpc

    from switchyard.cluster.dashboard.server import DashboardConfig
    from switchyard.cluster.dashboard.source import ClientSource
    from switchyard.cluster.gateway.client import Client

    config = DashboardConfig(host, port, tuple(t for t in (token, admin_token) if t), refresh_s)
    with Client(server, token=token, tls_ca=tls_ca, timeout_s=30) as client, \
            Client(server, token=admin_token or token, tls_ca=tls_ca, timeout_s=300) as admin:
        try:
            client.health()
        except grpc.RpcError as error:
            raise click.ClickException(f"cannot reach the gateway at {server}: {error.code().name}") from None
        asyncio.run(run_dashboard(ClientSource(client, admin), config))


def register(group: click.Group) -> None:
    group.add_command(dashboard)

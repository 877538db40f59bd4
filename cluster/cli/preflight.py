"""`switchyard serve`'s checks that need no Ray, run before Ray starts.

A bad `--host`, a port in use, a certificate or key gRPC cannot use, or an `--address` where nothing
answers would otherwise surface after Ray's start-up, as a gRPC or Ray traceback or a silent retry
loop. Here each is one line: exit code 2 for bad input (host, TLS files), 1 for the environment (the
port is taken, the Ray head does not answer within `Settings.ray_connect_timeout_s`). And a gateway
that listens beyond loopback without an admin token gets a warning: its admin calls are open.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import click

from switchyard.cluster.cli.params import UserError
from switchyard.cluster.errors import InvalidSetting
from switchyard.cluster.settings import Settings

LOCAL_ADDRESSES = frozenset({"auto", "local"})
"""`--address` values that name no host to probe (Ray finds or starts the cluster itself)."""


def check_serve_options(host: str, port: int, tls_cert: Path | None, tls_key: Path | None, address: str | None,
                        admin_token: str | None, connect_timeout_s: float | None = None) -> None:
    """Every check of this module (module doc); raises `click.ClickException`s, warns on stderr.

    connect_timeout_s: how long to wait for `address` to answer; None: `Settings.from_env()`'s."""
    listen_address = check_listen(host, port)
    check_tls(tls_cert, tls_key)
    wait_for_ray(address, connect_timeout_s)
    if admin_token is None and not ipaddress.ip_address(listen_address).is_loopback:
        click.echo(f"warning: listening on {host} (beyond loopback) without --admin-token: anyone who can "
                   "reach the port may call Rebalance and Rollback", err=True)


def wait_for_ray(address: str | None, connect_timeout_s: float | None = None) -> None:
    """`wait_for_address` for a `--address` that names a host (nothing for None, "auto", "local").

    connect_timeout_s: None: `Settings.from_env()`'s (`$SWITCHYARD_RAY_CONNECT_TIMEOUT`)."""
    if address is None or address in LOCAL_ADDRESSES:
        return
    if connect_timeout_s is None:
        try:
            connect_timeout_s = Settings.from_env().ray_connect_timeout_s
        except InvalidSetting as error:
            raise UserError(str(error)) from None
    wait_for_address(address, connect_timeout_s)


def check_listen(host: str, port: int) -> str:
    """The IP address `host` resolves to, after binding `host:port` once (as gRPC will, without
    SO_REUSEPORT): `UserError` for a host that is not an address of this machine, `ClickException`
    (exit 1) for a port in use."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise UserError(f"--host {host}: not an address or a host name that resolves ({error})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a port in TIME_WAIT is free
        try:
            probe.bind(sockaddr)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise click.ClickException(f"--port {port}: {host}:{port} is in use (another `switchyard "
                                           "serve`?); stop it or pick another port") from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host}: not an address of this machine") from None
            raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sockaddr[0].split("%")[0]  # an IPv6 scope id is not part of the address


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of prompting: gRPC cannot use one either


def check_tls(tls_cert: Path | None, tls_key: Path | None) -> None:
    """`UserError` unless both or neither are given and they load as a PEM certificate and its key."""
    if tls_cert is None and tls_key is None:
        return
    if tls_cert is None or tls_key is None:
        raise UserError("TLS needs both --tls-cert and --tls-key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert, tls_key, _no_password)
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
        raise UserError(f"--tls-cert {tls_cert} / --tls-key {tls_key}: not a PEM certificate and its "
                        f"unencrypted private key ({reason})") from None


def wait_for_address(address: str, timeout_s: float) -> None:
    """Until a TCP connection to the Ray head at `address` (`HOST:PORT` or `ray://HOST:PORT`) succeeds;
    `ClickException` (exit 1) after `timeout_s` seconds, `UserError` when it is not `HOST:PORT`."""
    host, colon, port_text = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"--address {address}: expected HOST:PORT or ray://HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port_text)), timeout=max(0.1, min(
                    2.0, deadline - time.monotonic()))):
                return
        except OSError as error:
            if time.monotonic() + 0.5 >= deadline:
                raise click.ClickException(
                    f"--address {address}: no Ray head answered within {timeout_s:g} s ({error.strerror or error}); "
                    "start it (`ray start --head`) or fix the address") from None
        time.sleep(0.5)

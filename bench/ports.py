"""`free_port`: a port for a server a test or benchmark starts later, which no other process takes first."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default min_worker_port .. max_worker_port
_LINUX_EPHEMERAL = range(32768, 61000)  # the kernel's default ip_local_port_range
_TRIES = 200
_handed_out: set[int] = set()


def _ephemeral_ports() -> range:
    """The range the kernel takes a port from when a process binds port 0."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _LINUX_EPHEMERAL
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, outside the kernel's ephemeral range and Ray's worker ports, and not
    handed out before in this process; the port after it is outside them too (`switchyard serve` puts
    its dashboard there unless told).

    A port found by binding port 0 is an ephemeral one, and any process binding port 0 may be given
    it before the server the test passes it to binds it: a Ray cluster starting up binds dozens that
    way (CI saw the Serve proxy fail with "Failed to bind to address" on such a port). A port outside
    those ranges is only ever taken by a server told to use it.
    """
    ephemeral, chooser = _ephemeral_ports(), random.SystemRandom()
    for _ in range(_TRIES):
        port = chooser.randrange(_RAY_WORKER_PORTS.stop, 65535)
        if any(one in ephemeral or one in _handed_out for one in (port, port + 1)):
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host} outside {ephemeral} after {_TRIES} tries")

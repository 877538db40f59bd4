"""Expert transports: how one MoE layer's tokens reach one expert worker and its output comes back.

One interface, `send` then `receive` (so that an engine can send to every worker before waiting for
any), chosen per worker by where it runs (`connect`):
- `SharedMemoryTransport` for a worker on the engine's node: a memfd segment and a Unix socket
  (`switchyard.workers.channel`), no pickling, no Ray;
- `TcpTransport` for a worker on another node: the same framing over a TCP connection to the worker's
  node IP, no pickling, no Ray task per layer;
- `RayTransport`: a Ray actor call per layer with numpy payloads (`transport="ray"` in
  `Runtime.start`, kept to measure against; slower: ~1 ms a call plus Ray's task bookkeeping).
A GPU path (Ray's tensor transport) would be a fourth class here.

Faults never hang an engine: a worker that does not answer within `timeout_s`, or whose process is
gone, raises `WorkerUnavailable` (`cluster.errors`) naming it; the transport then reconnects on its next use.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import ray
import torch

from switchyard.cluster.errors import WorkerUnavailable
from switchyard.cluster.settings import DEFAULTS
from switchyard.workers.channel import (ATTACH, CALL, FAILED, MAX_MESSAGE, REPLY, REQUEST, receive_exactly,
                                        segment_bytes, segment_views)

DEFAULT_TIMEOUT_S = DEFAULTS.dispatch_timeout_s


class WorkerCallFailed(RuntimeError):
    """An expert worker answered with an error (e.g. it does not hold the epoch asked for)."""


class Transport(Protocol):
    """One worker's data path. `send` one layer's tokens, then `receive` its output `[n, H]` and the
    worker's compute seconds; one call in flight at a time."""

    def send(self, layer: int, hidden: torch.Tensor, local_slots: np.ndarray, weights: torch.Tensor,
             epoch: int) -> None: ...

    def receive(self) -> tuple[torch.Tensor, float]: ...

    def close(self) -> None: ...


class _ChannelTransport:
    """What both channel transports share: one socket to worker `worker` (`name`: how errors call it),
    opened on first use; a fault closes it and raises `WorkerUnavailable`, and the next `send` reconnects
    (so a late answer is never read)."""

    def __init__(self, worker: int, name: str, hidden_size: int, timeout_s: float) -> None:
        self.worker, self.name, self.hidden_size, self.timeout_s = worker, name, hidden_size, timeout_s
        self._socket: socket.socket | None = None
        self._pending: tuple[int, int] | None = None  # (n, k) of the call in flight

    def _connect(self, family: int, kind: int, address: Any) -> None:
        self._socket = socket.socket(family, kind)
        self._socket.settimeout(self.timeout_s)
        try:
            self._socket.connect(address)
        except OSError as error:
            self.close()
            raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone (cannot connect: {error})") from None

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """Socket errors as `WorkerUnavailable`: a timeout (a hung worker) or any other error (gone)."""
        try:
            yield
        except TimeoutError:
            self.close()
            raise WorkerUnavailable(
                self.worker, f"expert worker {self.name} did not answer within {self.timeout_s:g} s") from None
        except OSError as error:
            self.close()
            raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone ({error})") from None

    def _closed_by_worker(self) -> WorkerUnavailable:
        self.close()
        return WorkerUnavailable(self.worker, f"expert worker {self.name} is gone (its process closed the channel)")

    def _take_pending(self) -> tuple[int, int]:
        assert self._pending is not None, "receive without send"
        pending, self._pending = self._pending, None
        return pending

    def _failed(self, message: bytes) -> WorkerCallFailed:
        return WorkerCallFailed(f"expert worker {self.name}: {message.decode(errors='replace')}")

    def close(self) -> None:
        """Drop the connection (the next `send` reconnects)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._pending = None


class SharedMemoryTransport(_ChannelTransport):
    """The same-node path to worker `worker` (`name`: how errors call it) listening at `address`
    (`ChannelAddress.local`)."""

    def __init__(self, worker: int, name: str, address: str, hidden_size: int,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(worker, name, hidden_size, timeout_s)
        self.address = address
        self._segment: mmap.mmap | None = None

    def send(self, layer: int, hidden: torch.Tensor, local_slots: np.ndarray, weights: torch.Tensor,
             epoch: int) -> None:
        n, k = local_slots.shape
        self._ensure(segment_bytes(n, k, self.hidden_size))
        views = segment_views(self._segment, n, k, self.hidden_size)
        views[0][...], views[1][...], views[2][...] = hidden.numpy(), local_slots, weights.numpy()
        del views  # no view may outlive the segment (closing it needs none left)
        with self._faults():
            self._socket.sendall(REQUEST.pack(CALL, layer, epoch, n, k, self.hidden_size))
        self._pending = (n, k)

    def receive(self) -> tuple[torch.Tensor, float]:
        n, k = self._take_pending()
        with self._faults():
            reply = self._socket.recv(MAX_MESSAGE)
        if not reply:
            raise self._closed_by_worker()
        status, seconds, _ = REPLY.unpack_from(reply)
        if status == FAILED:
            raise self._failed(reply[REPLY.size:])
        output = segment_views(self._segment, n, k, self.hidden_size)[3]
        return torch.from_numpy(output.copy()), seconds

    def _ensure(self, size: int) -> None:
        """Connect if needed, and hand the worker a segment of at least `size` bytes."""
        if self._socket is None:
            self._connect(socket.AF_UNIX, socket.SOCK_SEQPACKET, self.address)
        if self._segment is not None and len(self._segment) >= size:
            return
        size = max(size * 2, 1 << 20)  # room to grow without a new segment every step
        fd = os.memfd_create("switchyard-experts", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            segment = mmap.mmap(fd, size)
            try:
                with self._faults():
                    socket.send_fds(self._socket, [REQUEST.pack(ATTACH, 0, 0, size, 0, 0)], [fd])
            except WorkerUnavailable:
                segment.close()
                raise
        finally:
            os.close(fd)  # the mapping (and the worker's) keep the memory; nothing in /dev/shm
        if self._segment is not None:
            self._segment.close()
        self._segment = segment

    def close(self) -> None:
        """Drop the connection and segment (the next `send` reconnects: a late answer is never read)."""
        super().close()
        if self._segment is not None:
            self._segment.close()
            self._segment = None


class TcpTransport(_ChannelTransport):
    """The path to worker `worker` on another node over TCP to `address` (`ChannelAddress.remote`,
    `host:port`): the shared-memory path's header and layout, with the bytes sent on the connection
    (`workers.channel`). Works across real hosts; per layer it costs a loopback or network round trip
    and a copy of the tokens each way, not a Ray task."""

    def __init__(self, worker: int, name: str, address: str, hidden_size: int,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(worker, name, hidden_size, timeout_s)
        host, port = address.rsplit(":", 1)
        self.address = (host, int(port))

    def send(self, layer: int, hidden: torch.Tensor, local_slots: np.ndarray, weights: torch.Tensor,
             epoch: int) -> None:
        n, k = local_slots.shape
        if self._socket is None:
            self._connect(socket.AF_INET, socket.SOCK_STREAM, self.address)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small call per layer
        message = b"".join((REQUEST.pack(CALL, layer, epoch, n, k, self.hidden_size),
                            np.ascontiguousarray(hidden.numpy(), dtype=np.float32),
                            np.ascontiguousarray(local_slots, dtype=np.int64),
                            np.ascontiguousarray(weights.numpy(), dtype=np.float32)))
        with self._faults():
            self._socket.sendall(message)
        self._pending = (n, k)

    def receive(self) -> tuple[torch.Tensor, float]:
        n, _ = self._take_pending()
        header = bytearray(REPLY.size)
        with self._faults():
            if not receive_exactly(self._socket, memoryview(header)):
                raise self._closed_by_worker()
            status, seconds, follow = REPLY.unpack(header)
            body = torch.empty(n, self.hidden_size) if status != FAILED else torch.empty(follow, dtype=torch.uint8)
            if not receive_exactly(self._socket, memoryview(body.numpy()).cast("B")):
                raise self._closed_by_worker()
        if status == FAILED:
            raise self._failed(body.numpy().tobytes())
        return body, seconds


class RayTransport:
    """The path to worker `worker` on another node: one Ray actor call per layer with numpy arrays."""

    def __init__(self, worker: int, name: str, handle: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.worker, self.name, self.handle, self.timeout_s = worker, name, handle, timeout_s
        self._pending: Any = None

    def send(self, layer: int, hidden: torch.Tensor, local_slots: np.ndarray, weights: torch.Tensor,
             epoch: int) -> None:
        self._pending = self.handle.forward_numpy.remote(layer, hidden.numpy(), local_slots, weights.numpy(), epoch)

    def receive(self) -> tuple[torch.Tensor, float]:
        call, self._pending = self._pending, None
        try:
            output, seconds = ray.get(call, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(call)
            raise WorkerUnavailable(
                self.worker, f"expert worker {self.name} did not answer within {self.timeout_s:g} s") from None
        except ray.exceptions.RayActorError as error:
            raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone ({type(error).__name__})") from None
        except ray.exceptions.RayTaskError as error:
            raise WorkerCallFailed(f"expert worker {self.name}: {error.cause!r}") from None
        return torch.from_numpy(np.array(output)), seconds

    def close(self) -> None:
        self._pending = None


def connect(worker: int, handle: Any, address: str | None, hidden_size: int, timeout_s: float) -> Transport:
    """The transport to worker `worker` at `address`: shared memory for the worker's abstract Unix
    socket (`\\0...`, `ChannelAddress.local`: it runs on the engine's node), TCP for `host:port`
    (`ChannelAddress.remote`: another node), a Ray actor call on `handle` for None."""
    if address is None:
        return RayTransport(worker, f"{worker} (Ray)", handle, timeout_s)
    if address.startswith("\0"):
        return SharedMemoryTransport(worker, f"{worker} (same node)", address, hidden_size, timeout_s)
    return TcpTransport(worker, f"{worker} (other node, {address})", address, hidden_size, timeout_s)

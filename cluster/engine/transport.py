"""Expert transports: how one MoE layer's tokens reach one expert worker and its output comes back.

One interface, `send` then `receive` (so that an engine can send to every worker before waiting for
any), chosen per worker by where it runs (`connect`):
- `SharedMemoryTransport` for a worker on the engine's node: a memfd segment and a Unix socket
  (`switchyard.workers.channel`), no pickling, no Ray;
- `RayTransport` for a worker on another node: a Ray actor call with numpy payloads.
A GPU path (Ray's tensor transport) would be a third class here.

Faults never hang an engine: a worker that does not answer within `timeout_s`, or whose process is
gone, raises `WorkerUnavailable` (`cluster.errors`) naming it; the transport then reconnects on its next use.
"""

from __future__ import annotations

import mmap
import os
import socket
from typing import Any, Protocol

import numpy as np
import ray
import torch

from switchyard.cluster.errors import WorkerUnavailable
from switchyard.cluster.settings import DEFAULTS
from switchyard.workers.channel import (ATTACH, CALL, FAILED, MAX_MESSAGE, REPLY, REQUEST, segment_bytes,
                                        segment_views)

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


class SharedMemoryTransport:
    """The same-node path to worker `worker` (`name`: how errors call it) listening at `address`
    (`ChannelServer.address`)."""

    def __init__(self, worker: int, name: str, address: str, hidden_size: int,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.worker, self.name, self.address, self.hidden_size = worker, name, address, hidden_size
        self.timeout_s = timeout_s
        self._socket: socket.socket | None = None
        self._segment: mmap.mmap | None = None
        self._pending: tuple[int, int] | None = None  # (n, k) of the call in flight

    def send(self, layer: int, hidden: torch.Tensor, local_slots: np.ndarray, weights: torch.Tensor,
             epoch: int) -> None:
        n, k = local_slots.shape
        self._ensure(segment_bytes(n, k, self.hidden_size))
        views = segment_views(self._segment, n, k, self.hidden_size)
        views[0][...], views[1][...], views[2][...] = hidden.numpy(), local_slots, weights.numpy()
        del views  # no view may outlive the segment (closing it needs none left)
        self._send(REQUEST.pack(CALL, layer, epoch, n, k, self.hidden_size))
        self._pending = (n, k)

    def receive(self) -> tuple[torch.Tensor, float]:
        assert self._pending is not None, "receive without send"
        (n, k), self._pending = self._pending, None
        try:
            reply = self._socket.recv(MAX_MESSAGE)
        except TimeoutError:
            self.close()
            raise WorkerUnavailable(
                self.worker, f"expert worker {self.name} did not answer within {self.timeout_s:g} s") from None
        except OSError as error:
            self.close()
            raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone ({error})") from None
        if not reply:
            self.close()
            raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone (its process closed the channel)")
        status, seconds = REPLY.unpack(reply[:REPLY.size])
        if status == FAILED:
            raise WorkerCallFailed(f"expert worker {self.name}: {reply[REPLY.size:].decode(errors='replace')}")
        output = segment_views(self._segment, n, k, self.hidden_size)[3]
        return torch.from_numpy(output.copy()), seconds

    def _ensure(self, size: int) -> None:
        """Connect if needed, and hand the worker a segment of at least `size` bytes."""
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._socket.settimeout(self.timeout_s)
            try:
                self._socket.connect(self.address)
            except OSError as error:
                self.close()
                raise WorkerUnavailable(
                    self.worker, f"expert worker {self.name} is gone (cannot connect: {error})") from None
        if self._segment is not None and len(self._segment) >= size:
            return
        size = max(size * 2, 1 << 20)  # room to grow without a new segment every step
        fd = os.memfd_create("switchyard-experts", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            segment = mmap.mmap(fd, size)
            try:
                socket.send_fds(self._socket, [REQUEST.pack(ATTACH, 0, 0, size, 0, 0)], [fd])
            except OSError as error:
                segment.close()
                self.close()
                raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone ({error})") from None
        finally:
            os.close(fd)  # the mapping (and the worker's) keep the memory; nothing in /dev/shm
        if self._segment is not None:
            self._segment.close()
        self._segment = segment

    def _send(self, message: bytes) -> None:
        try:
            self._socket.sendall(message)
        except OSError as error:
            self.close()
            raise WorkerUnavailable(self.worker, f"expert worker {self.name} is gone ({error})") from None

    def close(self) -> None:
        """Drop the connection and segment (the next `send` reconnects: a late answer is never read)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        self._pending = None


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
    """The transport to worker `worker`: shared memory when `address` is given (the worker runs on the
    engine's node), Ray otherwise."""
    if address is not None:
        return SharedMemoryTransport(worker, f"{worker} (same node)", address, hidden_size, timeout_s)
    return RayTransport(worker, f"{worker} (other node)", handle, timeout_s)

"""The data path into an expert worker: shared memory for engines on its node, TCP for the others.

Per MoE layer an engine on the worker's node writes the tokens routed here into a memory segment that
both processes map, and sends one small header over a Unix socket; the worker computes from the
segment, writes its output back into it and answers with one small header. Nothing is pickled and
nothing passes through Ray (which stays the control plane); measured round trip on this machine
≈ 0.05 ms plus compute, against ≈ 1 ms for a Ray actor call (docs/runtime.md).

An engine on another node sends the same header followed by the segment's input bytes over a TCP
connection to the worker's node IP, and the answer is the same reply header followed by the output
bytes: the same framing and layout, with the bytes on the wire instead of in shared memory (shared
memory cannot cross hosts). No pickling and no Ray task per layer either.

Lifecycle, chosen so that nothing can leak:
- the socket lives in Linux's abstract namespace (`\\0switchyard-<id>`): no file, gone with the process;
- the segment is a `memfd` (anonymous shared memory) the engine creates and hands over the socket
  (SCM_RIGHTS): it has no name in /dev/shm and is freed when both processes have closed it, crash or not;
- `SOCK_SEQPACKET` keeps message boundaries and reports a dead peer as an empty read (the engine
  learns of a worker's death at once; a hung worker by its timeout). A TCP connection reports a dead
  worker process the same way (its kernel closes the socket); a hung worker, or a host that is gone,
  by the engine's timeout.

Segment layout of one call with n tokens, H hidden, k picks (offsets in bytes, float32 / int64):
`hidden [n, H] f32 | local_slots [n, k] i64 | weights [n, k] f32 | output [n, H] f32`.
Over TCP a call is `REQUEST` + the first three, and its answer `REPLY` + output.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from switchyard.workers.combiner import WINDOW_S, CallCombiner, Forward

log = logging.getLogger(__name__)

ATTACH, CALL = 1, 2  # request kinds
OK, FAILED = 0, 1  # reply statuses
REQUEST = struct.Struct("<6q")  # kind, layer, epoch, tokens n, picks k, hidden H (ATTACH: segment bytes)
REPLY = struct.Struct("<qdq")  # status, worker compute seconds, bytes that follow (FAILED: a UTF-8
# message; OK over TCP: the output `[n, H]` f32; OK in shared memory: none, the output is in the segment)
MAX_MESSAGE = 4096


def segment_views(buffer: memoryview | mmap.mmap, n: int, k: int, hidden: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arrays of one call in a segment: hidden `[n, H]`, local_slots `[n, k]`, weights `[n, k]`,
    output `[n, H]` (module doc for the layout)."""
    sizes = [(np.float32, (n, hidden)), (np.int64, (n, k)), (np.float32, (n, k)), (np.float32, (n, hidden))]
    views, offset = [], 0
    for dtype, shape in sizes:
        count = shape[0] * shape[1]
        views.append(np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += count * np.dtype(dtype).itemsize
    return views[0], views[1], views[2], views[3]


def segment_bytes(n: int, k: int, hidden: int) -> int:
    """Bytes one call with n tokens needs (module doc)."""
    return n * (2 * hidden * 4 + k * 12)


def output_bytes(n: int, hidden: int) -> int:
    """Bytes of one call's output `[n, H]` f32, the segment's last part (the rest are its inputs)."""
    return n * hidden * 4


def receive_exactly(connection: socket.socket, view: memoryview) -> bool:
    """Fill `view` from a stream socket; False if the peer closed it first. Raises `OSError` (a
    `TimeoutError` past the socket's timeout)."""
    while view:
        received = connection.recv_into(view)
        if not received:
            return False
        view = view[received:]
    return True


def _failed_reply(message: bytes) -> bytes:
    """The reply to a call that failed, on either socket: the header, then the error's message."""
    return REPLY.pack(FAILED, 0.0, len(message)) + message


@dataclass(frozen=True)
class ChannelAddress:
    """Where a worker's channel listens. local: the abstract Unix socket (engines on the worker's
    node: shared memory).  remote: `host:port` of its TCP socket on its node's IP (other nodes)."""

    local: str
    remote: str


class ChannelServer:
    """Serves `forward` to engines: a Unix socket for this node's engines (shared memory) and a TCP
    socket on `host` (this node's IP) for the others; one thread per connected engine.

    forward: `(layer, hidden [n, H], local_slots [n, k], weights [n, k], epoch) -> [n, H]`, run through
    a `combiner.CallCombiner` (calls of several engines for the same layer run together; a call waits
    at most `combine_window_s` for the others).
    """

    def __init__(self, forward: Forward, host: str = "127.0.0.1", combine_window_s: float = WINDOW_S) -> None:
        self.combiner = CallCombiner(forward, combine_window_s)
        local = f"\0switchyard-{uuid.uuid4().hex}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(local)
        self._listener.listen()
        self._stream_listener = socket.create_server((host, 0))
        self.address = ChannelAddress(local, f"{host}:{self._stream_listener.getsockname()[1]}")
        threading.Thread(target=self._accept, args=(self._listener, self._serve),
                         name="channel-accept", daemon=True).start()
        threading.Thread(target=self._accept, args=(self._stream_listener, self._serve_stream),
                         name="channel-accept-tcp", daemon=True).start()

    @staticmethod
    def _accept(listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=serve, args=(connection,), name="channel", daemon=True).start()

    def _forget(self) -> None:
        """This thread's engine hung up (`_call` names the caller by its connection's thread)."""
        self.combiner.forget(threading.get_ident())

    def _serve(self, connection: socket.socket) -> None:
        """Answer one engine's calls until it hangs up."""
        segment: mmap.mmap | None = None
        with connection:
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(connection, REQUEST.size, 1)
                except OSError:
                    break
                if not message:  # the engine closed its end (or died)
                    break
                kind, layer, epoch, n, k, hidden = REQUEST.unpack(message)
                if kind == ATTACH:
                    if segment is not None:
                        segment.close()
                    segment = mmap.mmap(fds[0], n)
                    os.close(fds[0])
                    continue
                assert kind == CALL and segment is not None, "a call before any segment was attached"
                failure, seconds = self._call(segment, layer, epoch, n, k, hidden)
                reply = _failed_reply(failure) if failure else REPLY.pack(OK, seconds, 0)
                try:
                    connection.sendall(reply)
                except OSError:  # the engine gave up on this call (a timeout) and closed the channel
                    break
        if segment is not None:
            segment.close()
        self._forget()

    def _serve_stream(self, connection: socket.socket) -> None:
        """Answer one other-node engine's calls over TCP until it hangs up (module doc for the framing).
        A growing buffer plays the segment's part: the inputs are received into it, the output sent from it."""
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small reply per layer
        buffer = bytearray(REQUEST.size)
        with connection:
            try:
                while receive_exactly(connection, memoryview(buffer)[:REQUEST.size]):
                    kind, layer, epoch, n, k, hidden = REQUEST.unpack_from(buffer)
                    assert kind == CALL, "over TCP a request is a call"
                    size, outputs = segment_bytes(n, k, hidden), output_bytes(n, hidden)
                    if len(buffer) < size:
                        buffer = bytearray(max(size, REQUEST.size))
                    if not receive_exactly(connection, memoryview(buffer)[:size - outputs]):
                        break
                    failure, seconds = self._call(buffer, layer, epoch, n, k, hidden)
                    if failure:
                        connection.sendall(_failed_reply(failure))
                    else:
                        connection.sendall(REPLY.pack(OK, seconds, outputs) + buffer[size - outputs:size])
            except OSError:  # the engine gave up on a call (a timeout) or went away
                pass
        self._forget()

    def _call(self, segment: mmap.mmap | bytearray, layer: int, epoch: int, n: int, k: int, hidden: int
              ) -> tuple[bytes, float]:
        """Run one layer from the segment, its output written back into it; (the error message, empty
        when it succeeded, and the compute seconds)."""
        start = time.perf_counter()
        try:
            tokens, slots, weights, output = segment_views(segment, n, k, hidden)
            result = self.combiner.run(threading.get_ident(), layer, torch.from_numpy(tokens),
                                       torch.from_numpy(slots), torch.from_numpy(weights), epoch)
            output[...] = result.numpy()
        except Exception as error:  # noqa: BLE001 - reported to the engine, which raises it for its step
            return f"{type(error).__name__}: {error}".encode()[:MAX_MESSAGE - REPLY.size] or b"?", 0.0
        return b"", time.perf_counter() - start

    def close(self) -> None:
        self._listener.close()
        self._stream_listener.close()

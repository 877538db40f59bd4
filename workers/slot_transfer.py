"""Expert weights from one worker process to another on the same machine, through shared memory.

A live migration copies experts worker to worker (`cluster.runtime.migration`). Between workers on
one machine the weights need not pass through Ray's object store: the source writes the slots once
into a `memfd` (anonymous shared memory, no name in /dev/shm, written with `pwrite`) and hands out a small `SharedSlots`
(its pid, the fd number, a random token); the target maps `/proc/<pid>/fd/<fd>` privately and keeps
the mapped slots as its new epoch's weights. One memcpy on the source, none on the target (beyond
the vllm kernel's packing), no pickling, no object-manager transfer (docs/runtime.md: Ray's transfer
between two raylets on the same machine ran at ~100 MiB/s on a first large object).

Lifecycle: the source keeps the fd open until the migration's epoch is committed or discarded
(`ExpertWorker.commit` / `discard` call `close`); the memory is freed when the fd is closed and the
target has unmapped it, and with the source process in any case (crash included). The token guards
against a reused pid or fd: the target checks it before reading anything else.

Workers on other machines (another `host_identity`) get numpy arrays through Ray's object store.
"""

from __future__ import annotations

import mmap
import os
import secrets
from dataclasses import dataclass
from functools import cache

import torch

TOKEN_BYTES = 16
_ALIGN = 64  # every tensor starts on a cache line


@cache
def host_identity() -> str:
    """Which kernel and pid namespace this process runs in: two processes with the same identity can open
    each other's fds through /proc (`read_shared`); processes on other machines never share it."""
    with open("/proc/sys/kernel/random/boot_id") as boot_id:
        return f"{boot_id.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"


@dataclass(frozen=True)
class SharedSlots:
    """Where `write_shared` put a batch of slots: fd `fd` of process `pid` on host `host`.

    token: the segment's first bytes.  shapes: `(gate_up shape, down shape)` of each slot, in order.
    dtype: the torch dtype's name (e.g. "float32").
    """

    host: str
    pid: int
    fd: int
    token: bytes
    shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    dtype: str


def write_shared(weights: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, SharedSlots]:
    """A new memfd holding `weights` (`(gate_up, down)` per slot, one dtype); returns its fd, which the
    caller must `os.close` once the copy is done, and the `SharedSlots` to hand to the target."""
    dtype = weights[0][0].dtype if weights else torch.float32
    shapes = tuple((tuple(gate_up.shape), tuple(down.shape)) for gate_up, down in weights)
    offsets, sizes = _layout(shapes, dtype)
    total = max(offsets[-1] + sizes[-1] if offsets else TOKEN_BYTES, TOKEN_BYTES)
    token = secrets.token_bytes(TOKEN_BYTES)
    fd = os.memfd_create("switchyard-migration", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, total)
        _write_at(fd, token, 0)
        tensors = [tensor for pair in weights for tensor in pair]
        for tensor, offset in zip(tensors, offsets, strict=True):
            _write_at(fd, memoryview(tensor.detach().contiguous().numpy()).cast("B"), offset)
    except BaseException:
        os.close(fd)
        raise
    return fd, SharedSlots(host_identity(), os.getpid(), fd, token, shapes, str(dtype).removeprefix("torch."))


def _write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of `data` into `fd` at `offset`. A write, not a copy into a mapping: the kernel allocates the
    memfd's pages as it fills them, ~5x faster on this machine than faulting each page of a fresh
    mapping in on first touch (1986 vs 377 MiB/s, 256 MiB)."""
    view = memoryview(data)
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def read_shared(shared: SharedSlots) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The slots of `shared`, mapped from the source's memfd (private, copy-on-write: the pages stay
    shared unless written, and the mapping outlives the source's fd, so the caller may keep the tensors
    as its own). Raises `OSError` when the source is on another machine, gone, or its fd now holds
    something else."""
    if shared.host != host_identity():
        raise OSError(f"shared slots of host {shared.host} cannot be read on host {host_identity()}")
    fd = os.open(f"/proc/{shared.pid}/fd/{shared.fd}", os.O_RDONLY)
    try:
        segment = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    if segment[:TOKEN_BYTES] != shared.token:
        segment.close()
        raise OSError(f"fd {shared.fd} of process {shared.pid} no longer holds the exported slots")
    dtype = getattr(torch, shared.dtype)
    offsets, sizes = _layout(shared.shapes, dtype)
    flat = [torch.frombuffer(segment, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            for offset, size in zip(offsets, sizes, strict=True)]
    shapes = [shape for pair in shared.shapes for shape in pair]
    tensors = [tensor.view(shape) for tensor, shape in zip(flat, shapes, strict=True)]
    return list(zip(tensors[0::2], tensors[1::2], strict=True))  # the views keep the mapping alive


def _layout(shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...], dtype: torch.dtype
            ) -> tuple[list[int], list[int]]:
    """Byte offset and size of every tensor (gate_up, down, gate_up, ...) after the token."""
    offsets, sizes, offset = [], [], TOKEN_BYTES
    for shape in (shape for pair in shapes for shape in pair):
        offset = -(-offset // _ALIGN) * _ALIGN
        size = dtype.itemsize * int(torch.Size(shape).numel())
        offsets.append(offset)
        sizes.append(size)
        offset += size
    return offsets, sizes

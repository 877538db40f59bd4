"""Expert weights shared between worker processes on the same machine, through memfd shared memory.

Every slot's plain weights (`gate_up`, `down`) live in a memfd of their own from the moment a worker
holds them (`shared`: at load, or when a copy arrives through Ray's object store), mapped into the
worker. A live migration (`cluster.runtime.migration`) to a worker on the same machine then copies
nothing on the source: `export` hands out a small `SharedSlots` (the source's pid, each slot's fd
number and a random token), and the target maps `/proc/<pid>/fd/<fd>` (`read_shared`) and keeps the
mapping as its new slot's weights: no copy, no pickling, no object-manager transfer (docs/runtime.md:
Ray's transfer between two raylets on this machine ran at ~100 MiB/s on a first large object; a
`pwrite` of the slots into a fresh memfd at export time cost ~0.26 CPU-s per 144 MiB).

Sharing is safe because an epoch never changes a tensor in place (`ExpertCompute.replaced` builds new
ones), and every mapping is copy-on-write (`MAP_PRIVATE`), so even a stray write would stay private to
its process. The target keeps the fd it opened, so it can export the slot again to a third worker.

Lifecycle: a slot's memfd lives while some process holds its fd or a mapping of it; each process
closes its fd when its last tensor of the slot is freed (a finalizer on the mapping), and a crash
frees both with the process. Nothing is named in /dev/shm. The token, the segment's first bytes,
guards against a reused pid or fd: the target checks it before mapping.

Workers on other machines (another `host_identity`) get numpy arrays through Ray's object store.
"""

from __future__ import annotations

import mmap
import os
import secrets
import weakref
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

TOKEN_BYTES = 16
_ALIGN = 64  # every tensor starts on a cache line

SlotPair = tuple[torch.Tensor, torch.Tensor]  # (gate_up [2F, H], down [H, F]) of one slot


@cache
def host_identity() -> str:
    """Which kernel and pid namespace this process runs in: two processes with the same identity can open
    each other's fds through /proc (`read_shared`); processes on other machines never share it."""
    with open("/proc/sys/kernel/random/boot_id") as boot_id:
        return f"{boot_id.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"


@dataclass(frozen=True)
class SharedSlots:
    """Where a batch of slots lives: for each, fd `fds[i]` of process `pid` on host `host`.

    tokens[i]: slot i's segment's first bytes.  shapes: `(gate_up shape, down shape)` of each slot, in
    order.  dtype: the torch dtype's name (e.g. "float32").
    """

    host: str
    pid: int
    fds: tuple[int, ...]
    tokens: tuple[bytes, ...]
    shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    dtype: str


@dataclass(frozen=True)
class _Segment:
    """A mapped slot segment of this process: its fd, token, and the tensors' addresses and shapes."""

    fd: int
    token: bytes
    down_ptr: int
    shapes: tuple[tuple[int, ...], tuple[int, ...]]


_SEGMENTS: dict[int, _Segment] = {}  # gate_up's data_ptr -> its segment, while the mapping lives


def shared(gate_up: torch.Tensor | np.ndarray, down: torch.Tensor | np.ndarray) -> SlotPair:
    """One slot's weights in shared memory: the tensors themselves where they already are (`shared` or
    `read_shared` made them), else a copy in a new memfd (written with `pwrite`: the kernel allocates
    the pages as it fills them, ~5x faster on this machine than faulting each page of a fresh mapping
    in on first touch, 1986 vs 377 MiB/s for 256 MiB)."""
    if isinstance(gate_up, torch.Tensor) and _segment(gate_up, down) is not None:
        return gate_up, down
    arrays = [_host_array(gate_up), _host_array(down)]
    shapes = (tuple(arrays[0].shape), tuple(arrays[1].shape))
    dtype = torch.from_numpy(arrays[0][:0]).dtype
    offsets = _layout(shapes, dtype)
    token = secrets.token_bytes(TOKEN_BYTES)
    fd = os.memfd_create("switchyard-slot", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, offsets[-1] + arrays[1].nbytes)
        _write_at(fd, token, 0)
        for array, offset in zip(arrays, offsets, strict=True):
            _write_at(fd, memoryview(array).cast("B"), offset)
        return _map(fd, token, shapes, dtype)
    except BaseException:
        os.close(fd)
        raise


def export(weights: list[SlotPair]) -> tuple[SharedSlots, list[SlotPair]]:
    """`weights` (`(gate_up, down)` per slot, one dtype) for a worker on this machine to map: the
    `SharedSlots` to hand over, and the slots in shared memory, which the caller keeps until the
    targets have mapped them (usually the tensors given: a copy only for slots not yet shared)."""
    held = [shared(gate_up, down) for gate_up, down in weights]
    segments = [_segment(gate_up, down) for gate_up, down in held]
    dtype = held[0][0].dtype if held else torch.float32
    return SharedSlots(host_identity(), os.getpid(), tuple(s.fd for s in segments), tuple(s.token for s in segments),
                       tuple(s.shapes for s in segments), str(dtype).removeprefix("torch.")), held


def read_shared(slots: SharedSlots) -> list[SlotPair]:
    """The slots of `slots`, mapped from the source's memfds (no copy). The mappings and this process's
    own fds outlive the source's, so the caller may keep the tensors as its own and export them again.
    Raises `OSError` when the source is on another machine, gone, or an fd now holds something else."""
    if slots.host != host_identity():
        raise OSError(f"shared slots of host {slots.host} cannot be read on host {host_identity()}")
    dtype = getattr(torch, slots.dtype)
    pairs = []
    for fd_number, token, shapes in zip(slots.fds, slots.tokens, slots.shapes, strict=True):
        fd = os.open(f"/proc/{slots.pid}/fd/{fd_number}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.pread(fd, TOKEN_BYTES, 0) != token:
                raise OSError(f"fd {fd_number} of process {slots.pid} no longer holds the exported slot")
            pairs.append(_map(fd, token, shapes, dtype))
        except BaseException:
            os.close(fd)
            raise
    return pairs


def _map(fd: int, token: bytes, shapes: tuple[tuple[int, ...], tuple[int, ...]], dtype: torch.dtype) -> SlotPair:
    """The slot in `fd`, mapped copy-on-write; `fd` is closed once the mapping is freed."""
    offsets = _layout(shapes, dtype)
    segment = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    gate_up, down = (torch.frombuffer(segment, dtype=dtype, count=int(np.prod(shape)), offset=offset).view(shape)
                     for shape, offset in zip(shapes, offsets, strict=True))  # the views keep the mapping alive
    key = gate_up.data_ptr()
    _SEGMENTS[key] = _Segment(fd, token, down.data_ptr(), shapes)
    weakref.finalize(segment, _forget, key, fd)
    return gate_up, down


def _forget(key: int, fd: int) -> None:
    _SEGMENTS.pop(key, None)
    os.close(fd)


def _segment(gate_up: torch.Tensor, down: torch.Tensor) -> _Segment | None:
    """The segment holding exactly this `(gate_up, down)` pair, None if they are not a mapped slot."""
    if gate_up.device.type != "cpu" or not gate_up.is_contiguous():
        return None
    segment = _SEGMENTS.get(gate_up.data_ptr())
    match = (segment is not None and segment.down_ptr == down.data_ptr() and down.is_contiguous()
             and segment.shapes == (tuple(gate_up.shape), tuple(down.shape)))
    return segment if match else None


def _host_array(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """A contiguous numpy view (or copy) of `tensor` in host memory."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().cpu().numpy()
    return np.ascontiguousarray(tensor)


def _write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of `data` into `fd` at `offset` (pwrite releases the GIL while the kernel copies)."""
    view = memoryview(data)
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _layout(shapes: tuple[tuple[int, ...], tuple[int, ...]], dtype: torch.dtype) -> list[int]:
    """Byte offsets of gate_up and down after the token; the segment ends at the last one plus its size."""
    offsets, offset = [], TOKEN_BYTES
    for shape in shapes:
        offset = -(-offset // _ALIGN) * _ALIGN
        offsets.append(offset)
        offset += dtype.itemsize * int(np.prod(shape))
    return offsets

"""Slots in shared memory: exported without a copy, mapped by another process, freed with the last user."""

from __future__ import annotations

import gc
import os

import numpy as np
import torch

from switchyard.workers.slot_transfer import export, read_shared, shared


def _memfd(fd: int) -> bool:
    path = f"/proc/{os.getpid()}/fd/{fd}"
    return os.path.exists(path) and "switchyard-slot" in os.readlink(path)


def test_shared_slots_are_exported_without_a_copy_and_freed_with_their_last_tensor():
    gate_up, down = shared(torch.randn(8, 4), np.ones((4, 4), dtype=np.float32))
    same_up, same_down = shared(gate_up, down)
    assert same_up is gate_up and same_down is down  # already shared: the same tensors
    del same_up, same_down
    descriptor, held = export([(gate_up, down)])
    assert held[0][0].data_ptr() == gate_up.data_ptr() and _memfd(descriptor.fds[0])
    mapped_up, mapped_down = read_shared(descriptor)[0]
    assert torch.equal(mapped_up, gate_up) and torch.equal(mapped_down, torch.ones(4, 4))
    again = export([(mapped_up, mapped_down)])[0]  # the reader exports it on through its own fd
    assert again.fds[0] != descriptor.fds[0] and _memfd(again.fds[0])
    del gate_up, down, held
    gc.collect()
    assert not _memfd(descriptor.fds[0])  # the source's fd closed with its tensors ...
    assert torch.equal(mapped_down, torch.ones(4, 4))  # ... while the reader's mapping still holds the memory
    del mapped_up, mapped_down
    gc.collect()
    assert not _memfd(again.fds[0])

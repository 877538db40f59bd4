"""Both channel transports (shared memory for the worker's node, TCP for other nodes) against a worker
channel in another process: answers, errors, a hung and a dead worker (a clear error within the
timeout, never a hang), and nothing left in /dev/shm."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from switchyard.cluster.engine.transport import (SharedMemoryTransport, TcpTransport, WorkerCallFailed,
                                                  WorkerUnavailable)

HIDDEN = 64


def _forward(layer, hidden, local_slots, weights, epoch):
    """A stand-in expert: hidden x (layer + 1) x the sum of the local picks' weights; epoch 0 is refused."""
    if epoch == 0:
        raise KeyError("this worker holds epochs [1], not 0")
    local = (local_slots >= 0).to(weights.dtype)
    return hidden * (layer + 1) * (weights * local).sum(dim=1, keepdim=True)


def _serve(pipe) -> None:
    from switchyard.workers.channel import ChannelServer

    server = ChannelServer(_forward)
    pipe.send(server.address)
    pipe.recv()  # until the test is done with this worker


@pytest.fixture
def worker():
    """A worker process serving `_forward` on a channel: (its `ChannelAddress`, process)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child,), daemon=True)
    process.start()
    address = parent.recv()
    yield address, process
    if process.is_alive():
        os.kill(process.pid, signal.SIGCONT)
        parent.send("stop")
        process.join(10)
    if process.is_alive():
        process.kill()


@pytest.fixture(params=["shared memory", "tcp"])
def connect(request):
    """Makes the transport under test to a worker's `ChannelAddress`: `connect(address, timeout_s)`."""
    if request.param == "tcp":
        return lambda address, timeout_s: TcpTransport(0, "0", address.remote, HIDDEN, timeout_s=timeout_s)
    return lambda address, timeout_s: SharedMemoryTransport(0, "0", address.local, HIDDEN, timeout_s=timeout_s)


def _call(transport, n: int, layer: int = 1, epoch: int = 1):
    hidden = torch.randn(n, HIDDEN)
    slots = np.where(np.arange(2 * n).reshape(n, 2) % 3 == 0, 0, -1).astype(np.int64)
    weights = torch.rand(n, 2)
    transport.send(layer, hidden, slots, weights, epoch)
    output, seconds = transport.receive()
    expected = _forward(layer, hidden, torch.from_numpy(slots), weights, epoch)
    return output, expected, seconds


def test_round_trips_and_growing_segments(worker, connect):
    address, _ = worker
    before = set(os.listdir("/dev/shm"))
    transport = connect(address, 10)
    for n in (1, 7, 5000, 3):  # 5000 tokens need a larger segment (buffer over TCP) than the first
        output, expected, seconds = _call(transport, n)
        torch.testing.assert_close(output, expected)
        assert seconds >= 0
    transport.close()
    assert set(os.listdir("/dev/shm")) == before  # memfd segments have no name


def test_worker_error_is_reported_and_the_channel_stays_usable(worker, connect):
    transport = connect(worker[0], 10)
    with pytest.raises(WorkerCallFailed, match="holds epochs"):
        _call(transport, 4, epoch=0)
    output, expected, _ = _call(transport, 4)
    torch.testing.assert_close(output, expected)
    transport.close()


def _stop(pid: int) -> None:
    """SIGSTOP `pid` and wait until every thread of it is stopped: `kill` returns before they are, and a
    thread not yet stopped could still answer the next call."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
              for task in os.listdir(f"/proc/{pid}/task")):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


def test_hung_worker_times_out_then_recovers(worker, connect):
    address, process = worker
    transport = connect(address, 1.0)
    _call(transport, 2)
    _stop(process.pid)
    start = time.perf_counter()
    with pytest.raises(WorkerUnavailable, match="did not answer within 1 s"):
        _call(transport, 2)
    assert time.perf_counter() - start < 5
    os.kill(process.pid, signal.SIGCONT)
    output, expected, _ = _call(transport, 3)  # a fresh connection: the late answer is never read
    torch.testing.assert_close(output, expected)
    transport.close()


def test_dead_worker_is_detected_at_once(worker, connect):
    address, process = worker
    transport = connect(address, 30.0)
    _call(transport, 2)
    process.kill()
    process.join(10)
    start = time.perf_counter()
    with pytest.raises(WorkerUnavailable, match="is gone"):
        _call(transport, 2)
    with pytest.raises(WorkerUnavailable, match="is gone"):  # and again: no reconnect succeeds
        _call(transport, 2)
    assert time.perf_counter() - start < 5  # not the 30 s timeout
    transport.close()


def test_no_switchyard_entries_in_dev_shm():
    assert not [name for name in os.listdir("/dev/shm") if "switchyard" in name]
    assert Path("/dev/shm").is_dir()

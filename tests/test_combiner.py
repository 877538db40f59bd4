"""`CallCombiner`: calls of several engines for the same layer run as one computation, each gets its
own rows back; a lone engine, an engine that hung up or one on another layer is not waited for; an
error reaches every call of the computation. Threads stand in for the engines' connections."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from switchyard.workers.combiner import CallCombiner

HIDDEN = 8


class Recorder:
    """A stand-in expert (hidden x (layer + 1) x the weights' sum) that records each computation's size;
    `gate`, when set, holds the first computation until released (so that others queue behind it)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate: threading.Event | None = None

    def __call__(self, layer, hidden, local_slots, weights, epoch):
        if epoch == 0:
            raise KeyError("this worker holds epochs [1], not 0")
        if self.gate is not None:
            gate, self.gate = self.gate, None
            gate.wait(10)
        self.sizes.append(hidden.shape[0])
        return hidden * (layer + 1) * weights.sum(dim=1, keepdim=True)


def _inputs(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, HIDDEN, generator=generator), torch.zeros(n, 2, dtype=torch.int64),
            torch.rand(n, 2, generator=generator))


def _run_together(combiner: CallCombiner, calls: list[tuple[int, int, int, int]]) -> list:
    """Run `calls` (caller, layer, tokens, epoch) from one thread each, started together; results in order."""
    results: list = [None] * len(calls)

    def run(index: int, caller: int, layer: int, n: int, epoch: int) -> None:
        hidden, slots, weights = _inputs(n, index)
        try:
            results[index] = (combiner.run(caller, layer, hidden, slots, weights, epoch),
                              hidden * (layer + 1) * weights.sum(dim=1, keepdim=True))
        except Exception as error:  # noqa: BLE001 - checked by the test
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, *call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_two_engines_on_the_same_layer_share_one_computation():
    forward = Recorder()
    combiner = CallCombiner(forward, window_s=5.0)
    _run_together(combiner, [(1, 7, 2, 1), (2, 7, 1, 1)])  # both engines are active, at their last layer
    results = _run_together(combiner, [(1, 0, 3, 1), (2, 0, 5, 1)])  # both go on with layer 0
    assert forward.sizes[-1] == 8  # one computation of 3 + 5 tokens
    for output, expected in results:
        torch.testing.assert_close(output, expected)
    assert combiner.combined >= 2


def test_a_lone_engine_and_an_engine_that_hung_up_are_not_waited_for():
    forward = Recorder()
    combiner = CallCombiner(forward, window_s=60.0)  # a wait would time the test out
    combiner.run(1, 0, *_inputs(2, 0), 1)
    combiner.run(2, 0, *_inputs(2, 1), 1)
    combiner.forget(2)
    output, expected = _run_together(combiner, [(1, 1, 4, 1)])[0]
    torch.testing.assert_close(output, expected)


def test_calls_of_other_layers_or_epochs_run_apart():
    forward = Recorder()
    forward.gate = threading.Event()
    gate = forward.gate
    combiner = CallCombiner(forward, window_s=0.0)
    threads = _started(combiner, [(9, 0, 1, 1)])  # holds the computation while the others queue
    while forward.gate is not None:  # taken by the first computation
        time.sleep(0.001)
    threads += _started(combiner, [(1, 2, 3, 1), (2, 2, 4, 2), (3, 5, 2, 1)])
    while combiner.queued() < 3:
        time.sleep(0.001)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert sorted(forward.sizes) == [1, 2, 3, 4]  # none merged: another epoch, another layer


def _started(combiner: CallCombiner, calls: list[tuple[int, int, int, int]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=combiner.run, args=(caller, layer, *_inputs(n, caller), epoch))
               for caller, layer, n, epoch in calls]
    for thread in threads:
        thread.start()
    return threads


def test_an_error_reaches_every_call_of_the_computation():
    combiner = CallCombiner(Recorder(), window_s=5.0)
    _run_together(combiner, [(1, 7, 1, 1), (2, 7, 1, 1)])
    results = _run_together(combiner, [(1, 0, 2, 0), (2, 0, 2, 0)])
    assert all(isinstance(result, KeyError) for result in results)
    combiner.forget(2)  # else the next call would wait for engine 2's layer 1
    with pytest.raises(KeyError, match="holds epochs"):
        combiner.run(1, 1, *_inputs(1, 0), 0)


def test_window_zero_never_waits_for_an_engine_one_layer_behind():
    """`combine_window_s=0` (the channel's option, `Runtime.start`'s too) lets engines drift apart."""
    from switchyard.workers.channel import ChannelServer

    forward = Recorder()
    server = ChannelServer(forward, combine_window_s=0.0)
    try:
        combiner = server.combiner
        combiner.run(1, 0, *_inputs(2, 0), 1)
        combiner.run(2, 0, *_inputs(2, 1), 1)  # engine 2 is active, one layer behind engine 1's next call
        output, expected = _run_together(combiner, [(1, 1, 4, 1)])[0]
        torch.testing.assert_close(output, expected)
        assert combiner.window_s == 0.0 and forward.sizes == [2, 2, 4]  # nothing merged
    finally:
        server.close()

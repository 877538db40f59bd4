"""The MoE rendezvous and the routing recorder, without Ray: one dispatch per layer per step."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from switchyard.cluster.engine.rendezvous import MoeRendezvous
from switchyard.cluster.engine.recorder import RoutingRecorder


def test_one_dispatch_per_layer_for_all_requests():
    calls = []

    def dispatch(layer, hidden, ids, weights):
        calls.append((layer, hidden.shape[0]))
        return hidden * (layer + 1)

    rendezvous = MoeRendezvous(dispatch)
    sizes = [3, 1, 2]
    results = {}

    def request(index: int, layers: int) -> None:
        try:
            hidden = torch.full((sizes[index], 4), float(index))
            for layer in range(layers):
                hidden = rendezvous.submit(layer, hidden, torch.zeros(sizes[index], 2, dtype=torch.long),
                                           torch.ones(sizes[index], 2))
            results[index] = hidden
        finally:
            rendezvous.leave()

    rendezvous.begin_step(len(sizes))
    # request 2 stops after one layer (e.g. it failed); the others must not wait for it
    threads = [threading.Thread(target=request, args=(i, 1 if i == 2 else 2)) for i in range(len(sizes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert calls == [(0, 6), (1, 4)]
    assert torch.equal(results[0], torch.full((3, 4), 0.0))
    assert torch.equal(results[1], torch.full((1, 4), 2.0))
    assert torch.equal(results[2], torch.full((2, 4), 2.0))


def test_dispatch_error_reaches_every_request():
    def dispatch(layer, hidden, ids, weights):
        raise RuntimeError("worker died")

    rendezvous = MoeRendezvous(dispatch)
    rendezvous.begin_step(2)
    errors = []

    def request() -> None:
        try:
            rendezvous.submit(0, torch.zeros(1, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))
        except RuntimeError as error:
            errors.append(str(error))
        finally:
            rendezvous.leave()

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == ["worker died", "worker died"]


@pytest.mark.parametrize("sample_every", [1, 3], ids=["all", "every-3rd"])
def test_recorder_counts_every_token_and_samples(sample_every):
    rng = np.random.default_rng(0)
    recorder = RoutingRecorder(num_layers=2, num_experts=6, top_k=2, sample_every=sample_every, window=5)
    batches = [np.stack([np.stack([rng.choice(6, 2, replace=False) for _ in range(2)]) for _ in range(n)])
               for n in (4, 3, 2)]
    for ids in batches:
        recorder.record(ids)
    stats = recorder.stats()
    all_ids = np.concatenate(batches)
    assert stats.num_tokens == 9
    for layer in range(2):
        np.testing.assert_array_equal(stats.load[layer], np.bincount(all_ids[:, layer].ravel(), minlength=6))
    sampled = all_ids[::sample_every][-5:]
    assert recorder.num_sampled == len(all_ids[::sample_every])
    np.testing.assert_array_equal(stats.topk_sets[0], np.unique(np.sort(sampled[:, 0], axis=1), axis=0))
    assert stats.set_counts[0].sum() == pytest.approx(9)  # scaled up to every token


def test_recorder_take_returns_what_came_since_the_last_take():
    rng = np.random.default_rng(1)
    recorder = RoutingRecorder(num_layers=2, num_experts=6, top_k=2, sample_every=2, window=4)
    batches = [np.stack([np.stack([rng.choice(6, 2, replace=False) for _ in range(2)]) for _ in range(n)])
               for n in (5, 3, 6)]
    recorder.record(batches[0])
    first = recorder.take()
    recorder.record(batches[1])
    recorder.record(batches[2])
    second, idle = recorder.take(), recorder.take()
    assert (first.num_tokens, second.num_tokens, idle.num_tokens) == (5, 9, 0)
    np.testing.assert_array_equal(first.load + second.load, recorder.stats().load)  # exact, nothing twice
    np.testing.assert_array_equal(second.load.sum(axis=1), [9 * 2, 9 * 2])  # tokens x top_k per layer
    assert idle.load.sum() == 0 and idle.topk_sets is None
    sampled = np.concatenate(batches[1:])[1::2][-4:]  # token 5 onwards, every 2nd of the whole stream
    np.testing.assert_array_equal(second.topk_sets[1], np.unique(np.sort(sampled[:, 1], axis=1), axis=0))
    assert second.set_counts[1].sum() == pytest.approx(9)
    assert recorder.stats().num_tokens == 14  # `stats` is not disturbed by `take`

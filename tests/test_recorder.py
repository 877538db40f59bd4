"""The routing recorder, without Ray: every token counted, a sampled share kept for co-activation."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.cluster.engine.recorder import RoutingRecorder


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

"""Trace replay (a benchmark mode): the engine routes exactly the trace's choices, and refuses a trace
that does not fit the model."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.cluster.engine.engine import Engine
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.runtime.runtime import replay_shares
from switchyard.placement.errors import PlacementError
from switchyard.placement.formats import load_trace
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.expert_worker import ExpertWorker

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15], list(range(3, 30)), [77]]  # unequal: padded prefill
NEW_TOKENS = 5


def _engine(model_dir, workers_per_node: int = 2) -> tuple[Engine, Plan, list[ExpertWorker]]:
    """An engine, the linear plan and its in-process workers (shared memory, no Ray; keep them alive)."""
    spec = load_spec(model_dir)
    plan = get_policy("linear").place(RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts))),
                                      Topology.for_experts(spec.num_experts, 1, workers_per_node))
    workers = [ExpertWorker(str(model_dir), plan.gpu_experts[:, gpu]) for gpu in range(workers_per_node)]
    engine = Engine([None] * workers_per_node, home_node=0,
                    channels=[worker.channel_address().local for worker in workers], dispatch_timeout_s=30)
    return engine, plan, workers


@pytest.mark.traces
def test_replay_routes_exactly_the_traces_choices(tmp_path, esft_path):
    trace = load_trace(esft_path("intent"))
    second_half = replay_shares(trace, 2)[1]
    model_dir = init_checkpoint("deepseek-v2", "esft", tmp_path / "deepseek-esft")
    engine, plan, _workers = _engine(model_dir)
    engine.load(str(model_dir), plan.to_dict(), replay=second_half)
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS))
    assert [len(output) for output in outputs] == [NEW_TOKENS] * len(PROMPTS)

    replayed = sum(len(p) for p in PROMPTS) + len(PROMPTS) * (NEW_TOKENS - 1)  # real tokens, no padding
    ids = second_half.topk_ids[:replayed]  # [n, L, k] taken in order
    expected = np.stack([np.bincount(ids[:, layer].ravel(), minlength=trace.num_experts)
                         for layer in range(trace.num_layers)])
    stats = engine.routing_stats()
    assert stats.num_tokens == replayed
    np.testing.assert_array_equal(stats.load, expected)
    tokens = engine.traffic()["tokens_per_worker"]
    assert sum(tokens) == sum(len(np.unique(row // (trace.num_experts // 2))) for row in ids.reshape(-1, 6))


def test_replay_of_a_trace_that_does_not_fit_is_refused(tmp_path):
    model_dir = init_checkpoint("mixtral", "tiny", tmp_path / "mixtral-tiny")  # 2 layers x 8 experts, top-2
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(64)[:6] for _ in range(10 * 26)]).reshape(10, 26, 6)
    trace = RoutingTrace(ids, np.array([10]), 64)
    engine, plan, _workers = _engine(model_dir)
    with pytest.raises(PlacementError, match=r"26 MoE layers x 64 experts, top-6.*2 x 8, top-2"):
        engine.load(str(model_dir), plan.to_dict(), replay=trace)


def test_replay_shares_split_the_trace_between_engines():
    ids = np.arange(7 * 2 * 1).reshape(7, 2, 1) % 4
    trace = RoutingTrace(ids, np.array([3, 4]), 4, np.ones((7, 2, 1)))
    shares = replay_shares(trace, 3)
    np.testing.assert_array_equal(np.concatenate([s.topk_ids for s in shares]), trace.topk_ids)
    assert [s.num_tokens for s in shares] == [2, 2, 3]
    assert all(s.topk_weights is not None for s in shares)
    assert replay_shares(None, 2) == [None, None]

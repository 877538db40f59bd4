"""The engine's batched step without Ray: an `Engine` and two `ExpertWorker`s in this process, joined by
the shared-memory channel. Requests of ragged lengths join and leave mid-batch and still produce
transformers' greedy tokens, for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from switchyard.cluster.engine.engine import Engine
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.expert_worker import ExpertWorker
from switchyard.workers.families import FAMILIES

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77], list(range(3, 30)), [9, 9, 9]]
LENGTHS = [8, 3, 8, 5, 8, 6]  # max_new_tokens: some requests leave while others run


def _engine_and_workers(model_dir, num_nodes: int) -> Engine:
    """An engine on node 0 and 2 workers in this process over `num_nodes` plan nodes (linear plan): it
    reaches the workers on its node through shared memory and the others over TCP."""
    spec = load_spec(model_dir)
    plan = get_policy("linear").place(RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts))),
                                      Topology.for_experts(spec.num_experts, num_nodes, 2 // num_nodes))
    addresses = [ExpertWorker(str(model_dir), plan.gpu_experts[:, gpu]).channel_address() for gpu in range(2)]
    channels = [address.local if plan.topology.node_of_gpu[gpu] == 0 else address.remote
                for gpu, address in enumerate(addresses)]
    engine = Engine([None, None], home_node=0, channels=channels, dispatch_timeout_s=30)
    engine.load(str(model_dir), plan.to_dict())
    return engine


def _generated(model_dir, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """transformers' greedy tokens, one prompt at a time."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        return [model.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
                [0, len(p):].tolist() for p, n in zip(prompts, lengths)]


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_staggered_requests_equal_transformers(tmp_path, arch):
    model_dir = init_checkpoint(arch, "tiny", tmp_path / arch, skew=0.5, seed=3)
    engine = _engine_and_workers(model_dir, num_nodes=1)
    ids = [engine.submit(prompt, SamplingParams(max_new_tokens=n)) for prompt, n in zip(PROMPTS[:3], LENGTHS)]
    first = {ids[0]: 0}
    while not engine.poll(first, 5.0)[ids[0]][0]:  # the first requests are decoding: the rest join mid-batch
        pass
    assert 1 <= engine.active_batch() <= 3  # the first requests' decode batch (the dashboard's gauge)
    ids += [engine.submit(prompt, SamplingParams(max_new_tokens=n)) for prompt, n in zip(PROMPTS[3:], LENGTHS[3:])]
    outputs = [engine.result(request_id) for request_id in ids]
    assert outputs == _generated(model_dir, PROMPTS, LENGTHS)
    stats = engine.routing_stats()  # only real tokens (no padding) were routed and counted
    assert stats.num_tokens == sum(len(p) + n - 1 for p, n in zip(PROMPTS, LENGTHS))
    assert engine.timings()["steps"] < sum(LENGTHS)  # requests shared steps


@pytest.mark.parametrize("arch", ["mixtral", "deepseek-v2"])
def test_two_nodes_over_tcp_equal_transformers(tmp_path, arch):
    """An engine on node 0 reaches worker 0 through shared memory and worker 1 (node 1) over TCP."""
    model_dir = init_checkpoint(arch, "tiny", tmp_path / arch, skew=0.5, seed=5)
    engine = _engine_and_workers(model_dir, num_nodes=2)
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6))
    assert outputs == _generated(model_dir, PROMPTS, [6] * len(PROMPTS))
    traffic = engine.traffic()
    assert traffic["same_node_bytes"] > 0 and traffic["cross_node_bytes"] > 0

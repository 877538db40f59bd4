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


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_staggered_requests_equal_transformers(tmp_path, arch):
    model_dir = init_checkpoint(arch, "tiny", tmp_path / arch, skew=0.5, seed=3)
    spec = load_spec(model_dir)
    plan = get_policy("linear").place(RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts))),
                                      Topology.for_experts(spec.num_experts, 1, 2))
    workers = [ExpertWorker(str(model_dir), plan.gpu_experts[:, gpu]) for gpu in range(2)]
    engine = Engine([None, None], home_node=0, channels=[worker.channel_address().local for worker in workers],
                    dispatch_timeout_s=30)
    engine.load(str(model_dir), plan.to_dict())
    ids = [engine.submit(prompt, SamplingParams(max_new_tokens=n)) for prompt, n in zip(PROMPTS[:3], LENGTHS)]
    first = {ids[0]: 0}
    while not engine.poll(first, 5.0)[ids[0]][0]:  # the first requests are decoding: the rest join mid-batch
        pass
    assert 1 <= engine.active_batch() <= 3  # the first requests' decode batch (the dashboard's gauge)
    ids += [engine.submit(prompt, SamplingParams(max_new_tokens=n)) for prompt, n in zip(PROMPTS[3:], LENGTHS[3:])]
    outputs = [engine.result(request_id) for request_id in ids]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
                    [0, len(p):].tolist() for p, n in zip(PROMPTS, LENGTHS)]
    assert outputs == expected
    stats = engine.routing_stats()  # only real tokens (no padding) were routed and counted
    assert stats.num_tokens == sum(len(p) + n - 1 for p, n in zip(PROMPTS, LENGTHS))
    assert engine.timings()["steps"] < sum(LENGTHS)  # requests shared steps


@pytest.mark.parametrize("arch", ["mixtral", "deepseek-v2"])
def test_two_nodes_over_tcp_equal_transformers(tmp_path, arch):
    """An engine on node 0 reaches worker 0 through shared memory and worker 1 (node 1) over TCP."""
    model_dir = init_checkpoint(arch, "tiny", tmp_path / arch, skew=0.5, seed=5)
    spec = load_spec(model_dir)
    plan = get_policy("linear").place(RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts))),
                                      Topology.for_experts(spec.num_experts, 2, 1))
    workers = [ExpertWorker(str(model_dir), plan.gpu_experts[:, gpu]) for gpu in range(2)]
    addresses = [worker.channel_address() for worker in workers]
    engine = Engine([None, None], home_node=0, channels=[addresses[0].local, addresses[1].remote],
                    dispatch_timeout_s=30)
    engine.load(str(model_dir), plan.to_dict())
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([p]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
                    [0, len(p):].tolist() for p in PROMPTS]
    assert outputs == expected
    traffic = engine.traffic()
    assert traffic["same_node_bytes"] > 0 and traffic["cross_node_bytes"] > 0

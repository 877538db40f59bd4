"""Expert compute and the worker body: each worker's partial sums add up to transformers' experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.expert_compute import ExpertCompute
from switchyard.workers.expert_worker import ExpertWorker


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return init_checkpoint("qwen3-moe", "tiny", tmp_path_factory.mktemp("ckpt") / "qwen3", skew=0.5, seed=1)


def _reference(model_dir, layer, hidden, ids, weights):
    spec = load_spec(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    experts = model.model.layers[spec.moe_layers[layer]].mlp.experts
    experts.config._experts_implementation = "eager"
    with torch.inference_mode():
        return experts(hidden, ids, weights)


def _split(ids: torch.Tensor, slot_experts: np.ndarray) -> torch.Tensor:
    """`[n, k]` local slot of each choice on a worker holding `slot_experts` [S], -1 elsewhere."""
    local = torch.full_like(ids, -1)
    for slot, expert in enumerate(slot_experts.tolist()):
        local[ids == expert] = slot
    return local


@pytest.mark.parametrize("layout", [[[0, 1, 2, 3], [4, 5, 6, 7]], [[6, 1, 4, 3], [2, 5, 0, 7]]],
                         ids=["linear", "shuffled"])
def test_workers_sum_to_reference(qwen3_dir, layout):
    torch.manual_seed(0)
    hidden = torch.randn(10, 128)
    ids = torch.stack([torch.randperm(8)[:2] for _ in range(10)])
    weights = torch.rand(10, 2)
    expected = _reference(qwen3_dir, 1, hidden, ids, weights)
    total = torch.zeros_like(hidden)
    for worker_experts in layout:
        experts = np.array([worker_experts, worker_experts])  # [L, S], same experts in both layers
        worker = ExpertWorker(str(qwen3_dir), experts)
        total += worker.forward(1, hidden, _split(ids, experts[1]), weights)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)


def test_no_tokens_gives_zeros():
    compute = ExpertCompute([torch.randn(1, 8, 4)], [torch.randn(1, 4, 4)], "silu")
    out = compute.forward(0, torch.randn(3, 4), torch.full((3, 2), -1), torch.ones(3, 2))
    assert torch.equal(out, torch.zeros(3, 4))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gate_up, down = [torch.randn(2, 16, 8)], [torch.randn(2, 8, 8)]
    hidden, slots, weights = torch.randn(5, 8), torch.tensor([[0, 1]] * 5), torch.rand(5, 2)
    cpu = ExpertCompute(gate_up, down, "silu").forward(0, hidden, slots, weights)
    cuda = ExpertCompute(gate_up, down, "silu", "cuda").forward(0, hidden, slots, weights)
    assert cuda.device.type == "cpu"
    torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)

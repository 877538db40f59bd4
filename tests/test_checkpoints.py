"""Checkpoints: `model init` for every family, per-expert reads equal the model's experts, errors."""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers
from safetensors.torch import save_file

from switchyard.workers.checkpoints import (init_checkpoint, load_spec, read_experts, read_non_expert_tensors,
                                            skew_router)
from switchyard.workers.errors import CheckpointError
from switchyard.workers.families import FAMILIES, family_by_name


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_init_and_read_match_transformers(tmp_path, arch):
    model_dir = init_checkpoint(arch, "tiny", tmp_path / arch, skew=1.0, seed=3)
    spec = load_spec(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert spec.num_layers == 2 and spec.num_experts == 8 and spec.top_k == 2
    for layer, decoder_layer in enumerate(spec.moe_layers):
        reference = model.model.layers[decoder_layer].mlp.experts
        gate_up, down = read_experts(spec, layer, [5, 0, 2])
        assert torch.equal(gate_up, reference.gate_up_proj[[5, 0, 2]])
        assert torch.equal(down, reference.down_proj[[5, 0, 2]])
    non_expert = read_non_expert_tensors(spec)
    expected = {key for key in model.state_dict() if not key.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    assert set(non_expert) == expected


def test_fused_layout_is_read(tmp_path):
    source = init_checkpoint("olmoe", "tiny", tmp_path / "source", seed=0)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    fused = tmp_path / "fused"
    fused.mkdir()
    shutil.copy(source / "config.json", fused / "config.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, fused / "model.safetensors")
    spec = load_spec(fused)
    gate_up, down = read_experts(spec, 1, [7, 3])
    assert torch.equal(gate_up, model.model.layers[1].mlp.experts.gate_up_proj[[7, 3]])
    assert torch.equal(down, model.model.layers[1].mlp.experts.down_proj[[7, 3]])
    assert not any("experts.gate_up_proj" in key for key in read_non_expert_tensors(spec))


def test_skew_makes_hot_experts():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 64, generator=generator) * 0.02
    inputs = torch.randn(4000, 64, generator=generator)

    def pick_counts(w):
        top = torch.topk(inputs @ w.T, 2, dim=-1).indices
        return torch.bincount(top.flatten(), minlength=16).float()

    plain = pick_counts(skew_router(weight, 2, 0.0, torch.Generator().manual_seed(1)))
    skewed = pick_counts(skew_router(weight, 2, 2.0, torch.Generator().manual_seed(1)))
    assert skewed.max() / skewed.mean() > 1.5 * plain.max() / plain.mean()


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="supported: mixtral, qwen2-moe"):
        family_by_name("llama")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_spec(tmp_path / "missing")
    llama = tmp_path / "llama"
    transformers.LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=16,
                             num_attention_heads=2).save_pretrained(llama)
    with pytest.raises(CheckpointError, match="unsupported architecture 'llama'"):
        load_spec(llama)
    with pytest.raises(CheckpointError, match="unknown size"):
        init_checkpoint("mixtral", "huge", tmp_path / "x")

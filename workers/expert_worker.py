"""`ExpertWorker`: the Ray actor body that holds one GPU's (or CPU slot's) experts for every layer.

The class is plain Python so that it can be tested without Ray; `switchyard.cluster.runtime` wraps it
with `ray.remote` and pins it to its node. It reads only its own experts from the checkpoint, and
`load` swaps them for another set (another plan or model) without starting a new process.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from switchyard.workers.checkpoints import load_spec, read_experts
from switchyard.workers.expert_compute import ExpertCompute


class ExpertWorker:
    """The experts of one worker's slots.

    experts: `[L, S]` int64, the logical expert id held by each of this worker's slots, per layer
        (`Plan.gpu_experts[:, g]`).  device: "cpu" or "cuda" (the runtime asks for a GPU for the latter).
    """

    def __init__(self, model_dir: str, experts: np.ndarray, device: str = "cpu") -> None:
        self.load(model_dir, experts, device)

    def load(self, model_dir: str, experts: np.ndarray, device: str = "cpu") -> None:
        """Replace every held expert with `experts` of `model_dir` (the process and its imports stay)."""
        self.compute = None  # drop the old experts before reading the new ones
        self.busy_seconds = 0.0  # time spent in `forward` since loading (profiling)
        spec = load_spec(model_dir)
        self.experts = np.asarray(experts, dtype=np.int64)
        assert self.experts.shape[0] == spec.num_layers, "one row of slot experts per MoE layer"
        weights = [read_experts(spec, layer, row.tolist()) for layer, row in enumerate(self.experts)]
        self.compute = ExpertCompute([w[0] for w in weights], [w[1] for w in weights],
                                     spec.config.hidden_act, device)

    def forward(self, layer: int, hidden: torch.Tensor, local_slots: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """One layer for the tokens routed here; see `ExpertCompute.forward` for shapes."""
        start = time.perf_counter()
        output = self.compute.forward(layer, hidden, local_slots, weights)
        self.busy_seconds += time.perf_counter() - start
        return output

    def timings(self) -> dict[str, float]:
        return {"busy_seconds": self.busy_seconds}

    def device(self) -> str:
        return str(self.compute.device)

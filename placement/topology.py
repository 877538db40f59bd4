"""Where slots live: nodes x GPUs per node x slots per GPU.

A slot (physical expert) holds one replica of one logical expert. Slots are numbered GPU by GPU and
GPUs node by node, which is the layout SGLang and vLLM use for `physical_to_logical_map`:
slot p lives on GPU `p // slots_per_gpu`, GPU g on node `g // gpus_per_node`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from switchyard.placement.errors import PlacementError, positive_int


@dataclass(frozen=True)
class Topology:
    """A cluster's expert slots.

    `num_nodes * gpus_per_node` GPUs, each with `slots_per_gpu` slots. A "GPU" is any expert worker
    (a CPU slot where there is no GPU).
    """

    num_nodes: int
    gpus_per_node: int
    slots_per_gpu: int

    def __post_init__(self) -> None:
        for name in ("num_nodes", "gpus_per_node", "slots_per_gpu"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))

    @classmethod
    def for_experts(
        cls, num_experts: int, num_nodes: int, gpus_per_node: int, slots_per_gpu: int | None = None
    ) -> Topology:
        """The topology for `num_experts` logical experts; `slots_per_gpu` defaults to experts / GPUs.

        Raises `PlacementError` when the default does not divide evenly or the slots cannot hold every
        expert once.
        """
        num_gpus = cls(num_nodes, gpus_per_node, 1).num_gpus  # validates the node and GPU counts
        if slots_per_gpu is None:
            if num_experts % num_gpus:
                raise PlacementError(
                    f"{num_experts} experts do not divide over {num_gpus} GPUs; "
                    f"set the slots per GPU (at least {-(-num_experts // num_gpus)})"
                )
            slots_per_gpu = num_experts // num_gpus
        topology = cls(num_nodes, gpus_per_node, slots_per_gpu)
        if topology.num_slots < num_experts:
            raise PlacementError(
                f"{topology.num_slots} slots ({num_gpus} GPUs x {topology.slots_per_gpu}) cannot hold "
                f"{num_experts} experts; need at least {-(-num_experts // num_gpus)} slots per GPU"
            )
        return topology

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def num_slots(self) -> int:
        """P, the number of physical experts per layer."""
        return self.num_gpus * self.slots_per_gpu

    @cached_property
    def gpu_of_slot(self) -> np.ndarray:
        """`[P]` int64: the GPU of every slot."""
        return np.arange(self.num_slots, dtype=np.int64) // self.slots_per_gpu

    @cached_property
    def node_of_gpu(self) -> np.ndarray:
        """`[G]` int64: the node of every GPU."""
        return np.arange(self.num_gpus, dtype=np.int64) // self.gpus_per_node

    @cached_property
    def node_of_slot(self) -> np.ndarray:
        """`[P]` int64: the node of every slot."""
        return self.node_of_gpu[self.gpu_of_slot]

    def node_of_engine(self, engine: int) -> int:
        """The node of engine replica `engine`: engines go round the nodes (engine e on node e % N)."""
        return engine % self.num_nodes

    def describe(self) -> str:
        return f"{self.num_nodes} node(s) x {self.gpus_per_node} GPU(s) x {self.slots_per_gpu} slot(s)"

    def check_same(self, other: Topology, what: str) -> None:
        """`PlacementError` "<what> is for <other>, not <self>" unless `other` is this topology: a plan
        that replaces, moves or resumes another must lay out the same slots on the same GPUs."""
        if other != self:
            raise PlacementError(f"{what} is for {other.describe()}, not {self.describe()}")

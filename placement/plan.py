"""The placement plan: which logical expert every slot of every layer holds.

`Plan` is one frozen value object. Its canonical content is `physical_to_logical` plus the topology;
every other view (`logical_to_physical`, `replica_count`, per-GPU expert sets) is derived. It is
validated on construction, so a `Plan` in hand is always usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.topology import Topology


MAX_EXPERT_ID = 2**31 - 1
"""The largest logical expert id a plan may hold (ids of real models are below a few thousand)."""
MAX_TOPOLOGY_SIZE = 2**20
"""The most nodes, or GPUs per node, a plan may name."""


@dataclass(frozen=True, eq=False)
class Plan:
    """An expert placement for every MoE layer.

    physical_to_logical: `[L, P]` int64, the logical expert id held by each slot.
    topology: nodes x GPUs x slots; `P == topology.num_slots`.
    num_logical_experts: E; every id in `[0, E)` must have at least one replica in every layer.
    """

    physical_to_logical: np.ndarray
    topology: Topology
    num_logical_experts: int

    def __post_init__(self) -> None:
        table = np.asarray(self.physical_to_logical)
        if table.ndim != 2:
            raise PlacementError(
                f"physical_to_logical_map must be 2-D [layers, slots], got shape {table.shape}"
            )
        if table.size and not np.issubdtype(table.dtype, np.integer):
            if not np.all(np.mod(table, 1) == 0):
                raise PlacementError("physical_to_logical_map must hold integer expert ids")
        table = table.astype(np.int64)
        table.setflags(write=False)
        object.__setattr__(self, "physical_to_logical", table)
        object.__setattr__(self, "num_logical_experts", int(self.num_logical_experts))
        self._validate()

    @classmethod
    def from_gpu_experts(cls, gpu_experts: np.ndarray, num_nodes: int, gpus_per_node: int,
                         num_logical_experts: int) -> Plan:
        """Build a plan from `[L, G, S]` expert ids per GPU (slots of a GPU in order)."""
        gpu_experts = np.asarray(gpu_experts)
        num_layers, num_gpus, slots_per_gpu = gpu_experts.shape
        topology = Topology(num_nodes, gpus_per_node, slots_per_gpu)
        assert topology.num_gpus == num_gpus, "gpu_experts' GPU axis must match the topology"
        return cls(gpu_experts.reshape(num_layers, num_gpus * slots_per_gpu), topology, num_logical_experts)

    def _validate(self) -> None:
        table, topology, num_experts = self.physical_to_logical, self.topology, self.num_logical_experts
        if num_experts < 1:
            raise PlacementError(f"num_logical_experts must be positive, got {num_experts}")
        num_layers, num_slots = table.shape
        if num_layers < 1:
            raise PlacementError("a plan needs at least one layer")
        if num_slots != topology.num_slots:
            raise PlacementError(
                f"the plan has {num_slots} slots per layer but the topology has {topology.num_gpus} GPUs "
                f"x {topology.slots_per_gpu} slots = {topology.num_slots}"
            )
        bad = (table < 0) | (table >= num_experts)
        if bad.any():
            layer, slot = np.argwhere(bad)[0]
            raise PlacementError(
                f"layer {layer} slot {slot} holds expert id {table[layer, slot]}, outside [0, {num_experts})"
            )
        counts = self.replica_count
        if (counts == 0).any():
            layer, expert = np.argwhere(counts == 0)[0]
            raise PlacementError(f"layer {layer}: expert {expert} has no replica in any slot")
        per_gpu = np.sort(table.reshape(num_layers, topology.num_gpus, topology.slots_per_gpu), axis=2)
        repeated = per_gpu[:, :, 1:] == per_gpu[:, :, :-1]
        if repeated.any():
            layer, gpu, slot = np.argwhere(repeated)[0]
            raise PlacementError(
                f"layer {layer}: GPU {gpu} holds expert {per_gpu[layer, gpu, slot]} twice; "
                "replicas of one expert must be on different GPUs"
            )

    def check_matches(self, num_layers: int, num_logical_experts: int, what: str = "the trace") -> None:
        """Raise `PlacementError` unless this plan fits a model or trace of the given size."""
        if self.num_layers != num_layers:
            raise PlacementError(f"the plan has {self.num_layers} layers but {what} has {num_layers}")
        if self.num_logical_experts != num_logical_experts:
            raise PlacementError(
                f"the plan places {self.num_logical_experts} experts but {what} has {num_logical_experts}"
            )

    @property
    def num_layers(self) -> int:
        return self.physical_to_logical.shape[0]

    @property
    def num_physical_experts(self) -> int:
        return self.physical_to_logical.shape[1]

    @cached_property
    def replica_count(self) -> np.ndarray:
        """`[L, E]` int64: replicas of each logical expert."""
        counts = np.zeros((self.num_layers, self.num_logical_experts), dtype=np.int64)
        rows = np.repeat(np.arange(self.num_layers), self.num_physical_experts)
        valid = (self.physical_to_logical >= 0) & (self.physical_to_logical < self.num_logical_experts)
        np.add.at(counts, (rows[valid.ravel()], self.physical_to_logical.ravel()[valid.ravel()]), 1)
        return counts

    @cached_property
    def logical_to_physical(self) -> np.ndarray:
        """`[L, E, R]` int64: the slots of each expert's replicas in slot order, -1 padded; R = max replicas."""
        max_replicas = int(self.replica_count.max())
        table = np.full((self.num_layers, self.num_logical_experts, max_replicas), -1, dtype=np.int64)
        order = np.argsort(self.physical_to_logical, axis=1, kind="stable")
        for layer in range(self.num_layers):
            experts = self.physical_to_logical[layer, order[layer]]
            starts = np.searchsorted(experts, np.arange(self.num_logical_experts))
            rank = np.arange(self.num_physical_experts) - starts[experts]
            table[layer, experts, rank] = order[layer]
        return table

    @cached_property
    def gpu_experts(self) -> np.ndarray:
        """`[L, G, S]` int64: the experts held by each GPU's slots."""
        t = self.topology
        return self.physical_to_logical.reshape(self.num_layers, t.num_gpus, t.slots_per_gpu)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (DESIGN.md): SGLang's `physical_to_logical_map` key plus the topology."""
        return {
            "physical_to_logical_map": self.physical_to_logical.tolist(),
            "num_nodes": self.topology.num_nodes,
            "gpus_per_node": self.topology.gpus_per_node,
            "num_logical_experts": self.num_logical_experts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`. `num_logical_experts` defaults to the largest id + 1."""
        if not isinstance(data, dict):
            raise PlacementError(f"a plan must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("physical_to_logical_map", "num_nodes", "gpus_per_node") if k not in data]
        if missing:
            raise PlacementError(f"the plan lacks the key(s) {', '.join(missing)}")
        table = _id_table(data["physical_to_logical_map"])
        num_nodes, gpus_per_node = data["num_nodes"], data["gpus_per_node"]
        for name, value in (("num_nodes", num_nodes), ("gpus_per_node", gpus_per_node)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOPOLOGY_SIZE:
                raise PlacementError(f"{name} must be a positive integer, got {value!r}")
        num_gpus = num_nodes * gpus_per_node
        if table.shape[1] % num_gpus:
            raise PlacementError(
                f"{table.shape[1]} slots per layer do not divide over {num_gpus} GPUs "
                f"({num_nodes} nodes x {gpus_per_node})"
            )
        topology = Topology(num_nodes, gpus_per_node, table.shape[1] // num_gpus)
        num_experts = data.get("num_logical_experts", int(table.max()) + 1)
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or not 0 < num_experts <= MAX_EXPERT_ID + 1:
            raise PlacementError(f"num_logical_experts must be a positive integer, got {num_experts!r}")
        return cls(table, topology, num_experts)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Plan)
            and self.topology == other.topology
            and self.num_logical_experts == other.num_logical_experts
            and np.array_equal(self.physical_to_logical, other.physical_to_logical)
        )

    __hash__ = None  # type: ignore[assignment]


def _id_table(value: Any) -> np.ndarray:
    """`physical_to_logical_map` of a plan's JSON as `[L, P]` int64: a list of equally long lists of
    integer ids in `[0, MAX_EXPERT_ID]`. Anything else (a fraction such as 0.5, 1e30, a string, a
    boolean, a ragged or deeper table) is a `PlacementError` naming the first bad entry, never
    truncated or wrapped."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        raise PlacementError("physical_to_logical_map must be 2-D [layers, slots]: a non-empty list of "
                             "non-empty lists of expert ids")
    width = len(value[0])
    for layer, row in enumerate(value):
        if len(row) != width:
            raise PlacementError(f"physical_to_logical_map is not a rectangular table of ids: layer {layer} "
                                 f"has {len(row)} slots, layer 0 has {width}")
        for slot, item in enumerate(row):
            whole = isinstance(item, (int, np.integer)) and not isinstance(item, bool)
            if not whole or not 0 <= item <= MAX_EXPERT_ID:
                raise PlacementError(f"layer {layer} slot {slot}: {item!r} is not an expert id (an integer "
                                     f"in [0, {MAX_EXPERT_ID}])")
    return np.array(value, dtype=np.int64)

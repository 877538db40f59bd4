"""A first-order time model of one MoE layer under a placement: compute plus all-to-all.

Counting distinct GPUs per token says which placement moves fewer hidden states; this module says
roughly what that is worth in seconds on given hardware, so a gain in balance can be weighed against a
gain in traffic. Per layer, with the picks already routed to slots (`routing.assign_slots`):

    time = compute + dispatch + combine
    compute  = (picks on the busiest GPU) * 6 * hidden_size * moe_intermediate_size / gpu_flops
    dispatch = max over GPUs, link kinds and directions of bytes / bandwidth of that link

A SwiGLU expert is three `hidden x intermediate` matrices, 2 FLOPs per multiply-add: `6*h*f` FLOPs per
token per expert. A token's hidden state (`hidden_size * dtype_bytes` bytes) starts on its source GPU:
sequence s lives on node `s % N` (as `RoutingTrace.home_node_of_token`), GPU `(s // N) % gpus_per_node`
of that node. It is sent once to every distinct GPU its picks use other than the source: over NVLink
when that GPU is on the same node, over the network otherwise. Each GPU has its own NVLink and network
port, each with `bandwidth` bytes/s in each direction; the busiest of them sets the phase's time.
Combine sends one vector back along each dispatch edge, so every link carries its reverse direction's
dispatch bytes and combine takes as long as dispatch. The phases do not overlap and latency is
ignored: this ranks placements, it does not predict wall-clock time to the microsecond.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.routing import first_occurrence, gpu_load
from switchyard.placement.topology import Topology


@dataclass(frozen=True)
class ClusterSpec:
    """Hardware and model sizes for the time model; every figure is per GPU.

    gpu_flops: dense FLOP/s of one GPU at the model's dtype.
    nvlink_bandwidth: bytes/s one GPU can send (and, separately, receive) over NVLink.
    network_bandwidth: bytes/s one GPU can send (and receive) to other nodes (its own NIC).
    hidden_size, moe_intermediate_size: the model's h and one routed expert's f.
    dtype_bytes: bytes per element of hidden states and expert weights.
    """

    name: str
    gpu_flops: float
    nvlink_bandwidth: float
    network_bandwidth: float
    hidden_size: int
    moe_intermediate_size: int
    dtype_bytes: int

    def __post_init__(self) -> None:
        for field in ("gpu_flops", "nvlink_bandwidth", "network_bandwidth", "hidden_size",
                      "moe_intermediate_size", "dtype_bytes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise PlacementError(
                    f"cluster {self.name!r}: {field} must be a positive number, got {value!r}"
                )

    @property
    def flops_per_pick(self) -> float:
        """FLOPs of one token through one SwiGLU expert: 3 matrices x 2 FLOPs per multiply-add."""
        return 6.0 * self.hidden_size * self.moe_intermediate_size

    @property
    def hidden_bytes(self) -> int:
        """Bytes of one token's hidden state, the unit of dispatch and combine traffic."""
        return self.hidden_size * self.dtype_bytes

    @property
    def remote_node_weight(self) -> float:
        """What one remote node per token costs, in distinct GPUs per token, by this model.

        Each distinct GPU a token uses costs one hidden state out and one back over the sending GPU's
        NVLink; one on another node goes over its network port instead, which is slower per byte by
        `nvlink_bandwidth / network_bandwidth`. Counting each remote node as one such transfer, it
        costs that ratio less the NVLink transfer already counted among the distinct GPUs. A fast
        network (ratio near 1) makes nodes nearly free, so balance and GPUs decide; a slow one makes
        keeping a token's experts on its node worth many GPUs.
        """
        return self.nvlink_bandwidth / self.network_bandwidth - 1.0

    def overload_weight(self, num_gpus: int) -> float:
        """What one pick more on the busiest GPU costs, in distinct GPUs per token, by this model.

        The pick adds `flops_per_pick / gpu_flops` seconds of compute to the layer. A distinct GPU
        per token is one hidden state out and one back over NVLink; spread over the `num_gpus` GPUs'
        links it adds `2 * hidden_bytes / nvlink_bandwidth / num_gpus` seconds to the busiest. Their
        ratio is the exchange rate of balance for locality: fast GPUs or slow links favour locality.
        """
        return (self.flops_per_pick / self.gpu_flops) / (2.0 * self.hidden_bytes / self.nvlink_bandwidth / num_gpus)

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert's weights (3 matrices), what a migration copies per new replica."""
        return 3 * self.hidden_size * self.moe_intermediate_size * self.dtype_bytes


# DGX/HGX H100 SXM nodes running a DeepSeek-V2-Lite-shaped model in BF16. Sources (figures as the
# vendor pages state them; docs/placement-metrics.md has the links):
#   NVIDIA H100 product page / datasheet, H100 SXM: BF16 Tensor Core 1,979 TFLOP/s "with sparsity",
#     so ~989 TFLOP/s dense; NVLink 900 GB/s total (bidirectional) per GPU = 450 GB/s per direction.
#   NVIDIA DGX H100 user guide: 8 ConnectX-7 400 Gb/s ports for the compute fabric, one per GPU,
#     so 400 Gb/s = 50 GB/s per GPU per direction.
#   DeepSeek-V2-Lite config.json: hidden_size 2048, moe_intermediate_size 1408, bfloat16.
_H100 = ClusterSpec(
    name="h100",
    gpu_flops=989e12,
    nvlink_bandwidth=450e9,
    network_bandwidth=50e9,
    hidden_size=2048,
    moe_intermediate_size=1408,
    dtype_bytes=2,
)

PRESETS: dict[str, ClusterSpec] = {
    "h100": _H100,
    # The same nodes on a 100 Gbit/s network (one 100 GbE NIC per GPU, 12.5 GB/s per direction), as
    # in clusters built from commodity Ethernet: 4x slower between nodes than `h100`.
    "h100-100gbit": dataclasses.replace(_H100, name="h100-100gbit", network_bandwidth=12.5e9),
}


def preset(name: str, error: type[Exception] = PlacementError) -> ClusterSpec:
    """The preset called `name`; for another name, `error` naming the choices."""
    if name not in PRESETS:
        raise error(f"unknown cluster preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def source_gpu_of_token(topology: Topology, sequence_of_token: np.ndarray) -> np.ndarray:
    """`[T]` int64: the GPU each token's hidden state starts on, the one rule of the module docstring:
    sequence s on node `s % N` (its home node), GPU `(s // N) % gpus_per_node` of that node."""
    num_nodes = topology.num_nodes
    node, local = sequence_of_token % num_nodes, (sequence_of_token // num_nodes) % topology.gpus_per_node
    return node * topology.gpus_per_node + local


def simulate_layer_times(topology: Topology, slots: np.ndarray, sequence_of_token: np.ndarray,
                         cluster: ClusterSpec) -> np.ndarray:
    """Seconds of every MoE layer by the model in the module docstring.

    slots: `[T, L, k]` int64 slot ids from `routing.assign_slots`.
    sequence_of_token: `[T]` int64 sequence index of every token (`RoutingTrace.sequence_of_token`).
    Returns `[L]` float64 seconds; their sum is the time of one pass of the T tokens through the MoE
    layers.
    """
    if slots.ndim != 3 or np.shape(sequence_of_token) != slots.shape[:1]:
        raise PlacementError(
            f"slots must be [tokens, layers, k] and sequence_of_token [tokens], got {slots.shape} "
            f"and {np.shape(sequence_of_token)}"
        )
    num_layers = slots.shape[1]
    num_gpus = topology.num_gpus
    compute = gpu_load(topology, slots).max(axis=1) * cluster.flops_per_pick / cluster.gpu_flops  # [L]
    source = np.broadcast_to(source_gpu_of_token(topology, sequence_of_token)[:, None, None], slots.shape)
    target = topology.gpu_of_slot[slots]  # [T, L, k]
    sent = first_occurrence(target) & (target != source)  # one transfer per distinct GPU but the source
    same_node = topology.node_of_gpu[target] == topology.node_of_gpu[source]
    layer = np.broadcast_to(np.arange(num_layers)[None, :, None], slots.shape)

    def transfers(gpu: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`[L, G]` hidden states per layer and GPU over the `mask`ed transfers, counted at `gpu`."""
        index = layer[mask] * num_gpus + gpu[mask]
        return np.bincount(index, minlength=num_layers * num_gpus).reshape(num_layers, num_gpus)

    nvlink, network = sent & same_node, sent & ~same_node
    nvlink_busiest = np.maximum(transfers(source, nvlink), transfers(target, nvlink)).max(axis=1)
    network_busiest = np.maximum(transfers(source, network), transfers(target, network)).max(axis=1)
    dispatch = cluster.hidden_bytes * np.maximum(nvlink_busiest / cluster.nvlink_bandwidth,
                                                 network_busiest / cluster.network_bandwidth)  # [L]
    return compute + 2.0 * dispatch

"""How good a plan is on a trace: load balance, GPUs and nodes per token, cross-node traffic, time.

The trace's picks are routed to slots by the runtime's own replica-choice rule
(`routing.assign_slots`), so these numbers are the ones serving would see on that traffic. The metrics
(docs/placement-metrics.md has the worked definitions):

- balancedness: vLLM EPLB's figure, `sum_l mean_g load[l, g] / sum_l max_g load[l, g]`, where
  load[l, g] counts the picks GPU g serves at layer l; 1.0 is perfect balance.
- gpus_per_token: distinct GPUs a token's k picks use at a layer, averaged over tokens and layers;
  each is one hidden state sent out and one sent back.
- remote_nodes_per_token: distinct nodes other than the token's home node among those GPUs.
- cross_node_transfers: hidden states sent one way to GPUs on a node other than the token's home node,
  one per distinct such GPU (the engine sends one copy to every worker it needs, DESIGN.md).
- layer_time_s: the `cost` model's seconds per layer, when a `ClusterSpec` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from switchyard.placement.cost import ClusterSpec, simulate_layer_times
from switchyard.placement.errors import PlacementError, positive_int
from switchyard.placement.plan import Plan
from switchyard.placement.routing import DEFAULT_RULE, ReplicaRule, assign_slots, first_occurrence, gpu_load
from switchyard.placement.trace import RoutingTrace


def balancedness(gpu_load: np.ndarray) -> float:
    """vLLM EPLB's balancedness of `gpu_load` `[L, G]`: `sum_l mean_g / sum_l max_g`, in (0, 1]; 1 is
    perfect balance, and 1 with no load at all. The one definition every report and proposal uses."""
    top = gpu_load.max(axis=1).sum()
    return float(gpu_load.mean(axis=1).sum() / top) if top > 0 else 1.0


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A plan's metrics on one trace; the totals are derived from the per-layer arrays.

    gpu_load: `[L, G]` int64, picks served by each GPU at each layer.
    gpus_per_token_per_layer: `[L]` float64, mean distinct GPUs per token at each layer.
    remote_nodes_per_token_per_layer: `[L]` float64, mean distinct non-home nodes per token.
    cross_node_transfers_per_layer: `[L]` int64, hidden states sent (one way) across nodes.
    layer_time_s_per_layer: `[L]` float64 seconds from the cost model, or None without a cluster.
    num_tokens: T, the tokens evaluated.
    """

    gpu_load: np.ndarray
    gpus_per_token_per_layer: np.ndarray
    remote_nodes_per_token_per_layer: np.ndarray
    cross_node_transfers_per_layer: np.ndarray
    layer_time_s_per_layer: np.ndarray | None
    num_tokens: int

    @property
    def balancedness_per_layer(self) -> np.ndarray:
        """`[L]` float64: mean over max GPU load of each layer."""
        return self.gpu_load.mean(axis=1) / self.gpu_load.max(axis=1)

    @property
    def balancedness(self) -> float:
        """vLLM's: the sum over layers of the mean GPU load over the sum of the max GPU load."""
        return balancedness(self.gpu_load)

    @property
    def gpus_per_token(self) -> float:
        return float(self.gpus_per_token_per_layer.mean())

    @property
    def remote_nodes_per_token(self) -> float:
        return float(self.remote_nodes_per_token_per_layer.mean())

    @property
    def cross_node_transfers(self) -> int:
        return int(self.cross_node_transfers_per_layer.sum())

    @property
    def layer_time_s(self) -> float | None:
        """Seconds of one pass of the trace's tokens through every MoE layer, or None."""
        if self.layer_time_s_per_layer is None:
            return None
        return float(self.layer_time_s_per_layer.sum())

    def cross_node_bytes(self, hidden_size: int, dtype_bytes: int) -> int:
        """Bytes crossing nodes: every cross-node transfer twice (dispatch and combine)."""
        return 2 * self.cross_node_transfers * hidden_size * dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready totals, a `per_layer` table and `gpu_load`; layer_time_s is None without a cluster."""
        per_layer = {
            "balancedness": self.balancedness_per_layer.tolist(),
            "gpus_per_token": self.gpus_per_token_per_layer.tolist(),
            "remote_nodes_per_token": self.remote_nodes_per_token_per_layer.tolist(),
            "cross_node_transfers": self.cross_node_transfers_per_layer.tolist(),
            "layer_time_s": (None if self.layer_time_s_per_layer is None
                             else self.layer_time_s_per_layer.tolist()),
        }
        return {
            "num_tokens": self.num_tokens,
            "balancedness": self.balancedness,
            "gpus_per_token": self.gpus_per_token,
            "remote_nodes_per_token": self.remote_nodes_per_token,
            "cross_node_transfers": self.cross_node_transfers,
            "layer_time_s": self.layer_time_s,
            "per_layer": per_layer,
            "gpu_load": self.gpu_load.tolist(),
        }


def evaluate(plan: Plan, trace: RoutingTrace, cluster: ClusterSpec | None = None,
             rule: ReplicaRule = DEFAULT_RULE, batch_tokens: int | None = None) -> Evaluation:
    """Route `trace` through `plan` and measure it; `cluster` adds the cost model's layer times.

    rule: the replica-choice rule (the runtime's by default).
    batch_tokens: route the tokens in batches of this many, each with fresh load counters, as the
        runtime's dispatcher does per batch; None routes the trace as one batch.
    Raises `PlacementError` when the plan's layers or experts differ from the trace's, or the trace
    has no tokens.
    """
    plan.check_matches(trace.num_layers, trace.num_experts)
    if trace.num_tokens == 0:
        raise PlacementError("the trace has no tokens to evaluate")
    topology = plan.topology
    home = trace.home_node_of_token(topology.num_nodes)  # [T]
    step = trace.num_tokens if batch_tokens is None else positive_int("batch_tokens", batch_tokens)
    slots = np.concatenate([assign_slots(plan, trace.topk_ids[start:start + step], home[start:start + step], rule)
                            for start in range(0, trace.num_tokens, step)])  # [T, L, k]
    gpu = topology.gpu_of_slot[slots]  # [T, L, k]
    node = topology.node_of_slot[slots]  # [T, L, k]
    remote = node != home[:, None, None]
    new_gpu = first_occurrence(gpu)
    times = None
    if cluster is not None:
        times = simulate_layer_times(topology, slots, trace.sequence_of_token, cluster)
    return Evaluation(
        gpu_load=gpu_load(topology, slots),
        gpus_per_token_per_layer=new_gpu.sum(axis=2).mean(axis=0),
        remote_nodes_per_token_per_layer=(first_occurrence(node) & remote).sum(axis=2).mean(axis=0),
        cross_node_transfers_per_layer=(new_gpu & remote).sum(axis=(0, 2)),
        layer_time_s_per_layer=times,
        num_tokens=trace.num_tokens,
    )

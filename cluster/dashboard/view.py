"""`ClusterView`: one reading of the cluster, and the figures every panel and gauge is computed from.

A view is read from the gateway's backend in-process, or through the gRPC API from another process
(`switchyard.cluster.dashboard.source`); from then on everything is a pure function of it, so the page
and the metrics endpoint can never disagree about a number. Dimension names (as in `placement`):
L layers, E logical experts, G GPUs (expert workers), N nodes, R engine replicas.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from switchyard.cluster.dashboard.requests import RequestTotals
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import expected_gpu_load

PREDICTED_FIGURES = ("balancedness", "gpus_per_token", "remote_nodes_per_token", "layer_time_s")
APPLY_KINDS = ("rebalance", "rollback")


@dataclass(frozen=True)
class EngineTraffic:
    """One engine's traffic counters since its model was loaded.  home_node: the engine's plan node.
    bytes_per_worker, tokens_per_worker: `[G]` int64, hidden-state bytes (both ways) and token vectors
    it exchanged with each expert worker."""

    home_node: int
    bytes_per_worker: tuple[int, ...]
    tokens_per_worker: tuple[int, ...]


@dataclass(frozen=True)
class ClusterView:
    """What the dashboard shows at one moment.

    model: family, model_dir, num_layers, num_experts, top_k.  epoch, plan: the active plan.
    engine_epochs: `[R]` the epoch each engine dispatches under.  load: `[L, E]` float64 tokens that
    picked each expert in the statistics window (`window_s` seconds, or the newest `window_tokens`
    tokens; both 0: since loading).  num_tokens: tokens in the window.  balancedness: the served plan's
    on `load` (GetStats).  engines: `[R]` traffic per engine.  queue_depths: `[R]` requests the gateway
    has in flight per engine.  active_batches: `[R]` requests in each engine's decode batch.  events: rebalance events, newest first (`docs/state-store.md`).
    requests: the gateway's request counters.  store: the statistics writers' counters where the
    state store is in this process (`buffered`, `dropped`, `errors`), else None.
    """

    model: dict[str, Any]
    epoch: int
    plan: Plan
    engine_epochs: tuple[int, ...]
    load: np.ndarray
    num_tokens: float
    balancedness: float
    window_s: float
    window_tokens: float
    engines: tuple[EngineTraffic, ...]
    queue_depths: tuple[int, ...]
    active_batches: tuple[int, ...]
    events: tuple[dict[str, Any], ...]
    requests: RequestTotals
    store: dict[str, int] | None = None
    taken_at: float = field(default_factory=time.time)

    # ---- load ----
    def gpu_load(self) -> np.ndarray:
        """`[L, G]` float64: each GPU's load under the active plan, every expert's load split over its replicas."""
        return expected_gpu_load(self.plan, self.load)

    def layer_balancedness(self) -> np.ndarray:
        """`[L]` float64: mean over max GPU load per layer (vLLM's figure for one layer); 1 for an idle layer."""
        gpu_load = self.gpu_load()
        top = gpu_load.max(axis=1)
        return np.where(top > 0, gpu_load.mean(axis=1) / np.where(top > 0, top, 1.0), 1.0)

    def hottest_expert(self) -> tuple[int, int, float]:
        """(layer, expert, load) of the largest cell of `load` (the first one on ties)."""
        layer, expert = np.unravel_index(int(np.argmax(self.load)), self.load.shape)
        return int(layer), int(expert), float(self.load[layer, expert])

    # ---- traffic ----
    def node_of_gpu(self) -> np.ndarray:
        return self.plan.topology.node_of_gpu

    def engine_gpu_bytes(self) -> np.ndarray:
        """`[R, G]` int64 hidden-state bytes between each engine and each expert worker."""
        num_gpus = self.plan.topology.num_gpus
        rows = [engine.bytes_per_worker for engine in self.engines]
        return np.array(rows, dtype=np.int64).reshape(len(rows), num_gpus)

    def node_bytes(self, tokens: bool = False) -> np.ndarray:
        """`[N, N]` int64 hidden-state bytes (or token vectors) from engines on node i to workers on node j."""
        num_nodes = self.plan.topology.num_nodes
        matrix = np.zeros((num_nodes, num_nodes), dtype=np.int64)
        node_of_gpu = self.node_of_gpu()
        for engine in self.engines:
            counts = engine.tokens_per_worker if tokens else engine.bytes_per_worker
            np.add.at(matrix[engine.home_node], node_of_gpu, np.asarray(counts, dtype=np.int64))
        return matrix

    def cross_node_bytes(self) -> int:
        matrix = self.node_bytes()
        return int(matrix.sum() - np.trace(matrix))

    # ---- rebalances ----
    def rebalances(self) -> list[dict[str, Any]]:
        """Applied rebalances and rollbacks, newest first, each with its "observed" event merged in
        (`observed`: None until it is recorded)."""
        observed = {event.get("epoch"): event for event in self.events if event.get("kind") == "observed"}
        return [{**event, "observed": observed.get(event.get("epoch"))}
                for event in self.events if event.get("kind") in APPLY_KINDS]

    def failed_rebalances(self) -> int:
        return sum(1 for event in self.events if event.get("kind") == "rebalance_failed")


def plan_table(plan: Plan) -> list[list[list[dict[str, int]]]]:
    """`[L][G]` lists of `{"expert": e, "replicas": r}`: the experts each GPU holds at each layer, and
    how many replicas that expert has in the layer (r > 1 marks a replica)."""
    gpu_experts = plan.gpu_experts  # [L, G, S]
    replicas = plan.replica_count  # [L, E]
    return [[[{"expert": int(e), "replicas": int(replicas[layer, e])} for e in gpu_experts[layer, gpu]]
             for gpu in range(gpu_experts.shape[1])] for layer in range(gpu_experts.shape[0])]


def _rounded(matrix: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(matrix, dtype=np.float64), 3).tolist()


def page_data(view: ClusterView) -> dict[str, Any]:
    """The JSON the page draws (every panel but the time series, which the page's history adds)."""
    topology = view.plan.topology
    layer, expert, hottest = view.hottest_expert()
    return {
        "taken_at": view.taken_at,
        "model": view.model,
        "epoch": view.epoch,
        "engine_epochs": list(view.engine_epochs),
        "topology": {"num_nodes": topology.num_nodes, "gpus_per_node": topology.gpus_per_node,
                     "num_gpus": topology.num_gpus, "slots_per_gpu": topology.slots_per_gpu},
        "window": {"seconds": view.window_s, "tokens": view.window_tokens, "num_tokens": view.num_tokens},
        "balancedness": view.balancedness,
        "expert_load": _rounded(view.load),
        "hottest": {"layer": layer, "expert": expert, "load": hottest},
        "gpu_load": _rounded(view.gpu_load()),
        "layer_balancedness": _rounded(view.layer_balancedness()),
        "node_of_gpu": view.node_of_gpu().tolist(),
        "plan": plan_table(view.plan),
        "traffic": {"node_bytes": view.node_bytes().tolist(), "engine_gpu_bytes": view.engine_gpu_bytes().tolist(),
                    "engine_nodes": [engine.home_node for engine in view.engines],
                    "cross_node_bytes": view.cross_node_bytes()},
        "queue_depths": list(view.queue_depths),
        "active_batches": list(view.active_batches),
        "rebalances": view.rebalances(),
        "failed_rebalances": view.failed_rebalances(),
        "store": view.store,
    }

"""Expert dispatch: one MoE layer's tokens sent to the workers that hold their experts, sums added.

For every pick the replica is chosen by the placement library's rule (`routing.assign_slots`, the same
function placement evaluation uses), with every token's home node being the engine's node. Each
worker that serves at least one pick gets one call with all its tokens through its transport
(`transport`: shared memory on the engine's node, Ray elsewhere); every call is sent before any answer
is awaited, so the workers compute in parallel, and their partial sums are added.

Workers marked down (`set_down`, while the supervisor replaces one) get no calls: the same rule
chooses among the live replicas, and the tokens that picked an expert with none are left unserved
(zeros), reported to the engine, which fails their requests alone (`WorkerUnavailable`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from switchyard.cluster.engine.traffic import TrafficCounters
from switchyard.cluster.engine.transport import Transport
from switchyard.placement.plan import Plan
from switchyard.placement.routing import assign_slots


class ExpertDispatcher:
    """Sends MoE layers to expert workers under one plan.

    plan: the active placement, `[L, P]`.  epoch: its version, named in every worker call (workers hold
    two epochs while a live migration switches engines).  transports: `[G]` one per `ExpertWorker`,
    worker g holding slots `g*S .. g*S + S - 1`.  home_node: the plan node of the calling engine.
    """

    def __init__(self, plan: Plan, epoch: int, transports: list[Transport], home_node: int) -> None:
        topology = plan.topology
        assert len(transports) == topology.num_gpus, "one transport per plan GPU"
        self.transports = transports
        self.home_node = home_node
        self.down: frozenset[int] = frozenset()  # workers that get no calls (being replaced)
        self._live_gpus: np.ndarray | None = None  # [G] bool, None while every worker is up
        self.set_plan(plan, epoch)
        self.traffic = TrafficCounters(topology.node_of_gpu, home_node)
        self.seconds = 0.0  # time in `dispatch`: routing, transports, workers, combine
        self.wait_seconds = 0.0  # of which waiting for answers (worker compute + transport)
        self.compute_seconds = 0.0  # per layer the slowest worker's compute, summed (the critical path)

    def set_plan(self, plan: Plan, epoch: int) -> None:
        """Dispatch under `plan` at `epoch` from the next call on (same topology; counters carry on)."""
        self.plan, self.epoch = plan, epoch
        self.slots_per_worker = plan.topology.slots_per_gpu
        # assign_slots works on [T, L, k]; one single-layer plan per layer lets it run layer by layer.
        self.layer_plans = [Plan(plan.physical_to_logical[layer:layer + 1], plan.topology,
                                 plan.num_logical_experts) for layer in range(plan.num_layers)]

    def set_down(self, workers: frozenset[int]) -> None:
        """Send nothing to `workers` from the next call on (empty: every worker is up)."""
        self.down = frozenset(workers)
        live = np.ones(len(self.transports), dtype=bool)
        live[list(self.down)] = False
        self._live_gpus = None if live.all() else live

    def dispatch(self, layer: int, hidden: torch.Tensor, topk_ids: torch.Tensor,
                 topk_weights: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """The routed experts' output for `hidden` `[n, H]`, given `topk_ids` / `topk_weights` `[n, k]`,
        and `[n]` int64: -1 for a served token, else the down worker holding an expert it picked (its
        output row is then incomplete; `set_down`)."""
        start = time.perf_counter()
        num_tokens = hidden.shape[0]
        home = np.full(num_tokens, self.home_node, dtype=np.int64)
        ids = topk_ids.numpy()
        slots = assign_slots(self.layer_plans[layer], ids[:, None, :], home,
                             live_gpus=self._live_gpus)[:, 0]  # [n, k], -1: no live replica
        unserved = np.full(num_tokens, -1, dtype=np.int64)
        missing = slots < 0
        if missing.any():
            owner = self.layer_plans[layer].logical_to_physical[0, ids, 0] // self.slots_per_worker  # [n, k]
            unserved = np.where(missing, owner, -1).max(axis=1)
        worker_of_pick = np.where(missing, -1, slots // self.slots_per_worker)  # [n, k]
        called, rows_of_call = [], []
        try:
            for worker in np.unique(worker_of_pick[~missing]).tolist():
                mine = worker_of_pick == worker
                rows = np.flatnonzero(mine.any(axis=1))
                local_slots = np.where(mine[rows], slots[rows] - worker * self.slots_per_worker, -1)
                if rows.size == num_tokens:  # the worker serves every token: send the tensors as they are
                    rows_tensor, worker_hidden, worker_weights = None, hidden, topk_weights
                else:
                    rows_tensor = torch.from_numpy(rows)
                    worker_hidden, worker_weights = hidden[rows_tensor], topk_weights[rows_tensor]
                self.transports[worker].send(layer, worker_hidden, local_slots, worker_weights, self.epoch)
                called.append(worker)
                rows_of_call.append(rows_tensor)
                sent = worker_hidden.nbytes + local_slots.nbytes + worker_weights.nbytes
                self.traffic.add(worker, rows.size, sent + worker_hidden.nbytes)  # dispatch + combine
            output = torch.zeros_like(hidden)
            waited, slowest = time.perf_counter(), 0.0
            for index, (worker, rows) in enumerate(zip(called, rows_of_call)):
                try:
                    partial, seconds = self.transports[worker].receive()
                except Exception:
                    called = called[index + 1:]  # still in flight: dropped below
                    raise
                slowest = max(slowest, seconds)
                if rows is None:
                    output += partial
                else:
                    output.index_add_(0, rows, partial)
            self.wait_seconds += time.perf_counter() - waited
            self.compute_seconds += slowest
            called = []
        finally:
            for worker in called:  # a failed step: answers still in flight are never read
                self.transports[worker].close()
        self.seconds += time.perf_counter() - start
        return output, unserved

    def replace_transport(self, worker: int, transport: Transport) -> None:
        """Reach worker `worker` through `transport` from the next call on (its re-created actor)."""
        self.transports[worker].close()
        self.transports[worker] = transport

    def close(self) -> None:
        for transport in self.transports:
            transport.close()

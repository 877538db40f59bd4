"""Expert dispatch: one MoE layer's tokens sent to the workers that hold their experts, sums added.

For every pick the replica is chosen by the placement library's rule (`routing.assign_slots`, the same
function placement evaluation uses), with every token's home node being the engine's node. Each
worker that serves at least one pick gets one call with all its tokens; the calls run in parallel and
their partial sums are added.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from switchyard.cluster.engine.traffic import TrafficCounters
from switchyard.placement.plan import Plan
from switchyard.placement.routing import assign_slots


class ExpertDispatcher:
    """Sends MoE layers to expert workers under one plan.

    plan: the active placement, `[L, P]`.  epoch: its version, named in every worker call (workers hold
    two epochs while a live migration switches engines).  workers: `[G]` Ray handles of `ExpertWorker`
    actors, worker g holding slots `g*S .. g*S + S - 1`.  home_node: the plan node of the calling engine.
    """

    def __init__(self, plan: Plan, epoch: int, workers: list[Any], home_node: int) -> None:
        topology = plan.topology
        assert len(workers) == topology.num_gpus, "one worker per plan GPU"
        self.workers = workers
        self.home_node = home_node
        self.set_plan(plan, epoch)
        self.traffic = TrafficCounters(topology.node_of_gpu, home_node)
        self.seconds = 0.0  # time in `dispatch`: routing, Ray round trips, workers, combine

    def set_plan(self, plan: Plan, epoch: int) -> None:
        """Dispatch under `plan` at `epoch` from the next call on (same topology; counters carry on)."""
        self.plan, self.epoch = plan, epoch
        self.slots_per_worker = plan.topology.slots_per_gpu
        # assign_slots works on [T, L, k]; one single-layer plan per layer lets it run layer by layer.
        self.layer_plans = [Plan(plan.physical_to_logical[layer:layer + 1], plan.topology,
                                 plan.num_logical_experts) for layer in range(plan.num_layers)]

    def dispatch(self, layer: int, hidden: torch.Tensor, topk_ids: torch.Tensor,
                 topk_weights: torch.Tensor) -> torch.Tensor:
        """The routed experts' output for `hidden` `[n, H]`, given `topk_ids` / `topk_weights` `[n, k]`."""
        start = time.perf_counter()
        num_tokens = hidden.shape[0]
        home = np.full(num_tokens, self.home_node, dtype=np.int64)
        slots = assign_slots(self.layer_plans[layer], topk_ids.numpy()[:, None, :], home)[:, 0]  # [n, k]
        worker_of_pick = slots // self.slots_per_worker  # [n, k]
        calls, rows_of_call = [], []
        for worker in np.unique(worker_of_pick).tolist():
            mine = worker_of_pick == worker
            rows = np.flatnonzero(mine.any(axis=1))
            local_slots = torch.from_numpy(np.where(mine[rows], slots[rows] - worker * self.slots_per_worker, -1))
            if rows.size == num_tokens:  # the worker serves every token: send the tensors as they are
                rows_tensor, worker_hidden, worker_weights = None, hidden, topk_weights
            else:
                rows_tensor = torch.from_numpy(rows)
                worker_hidden, worker_weights = hidden[rows_tensor], topk_weights[rows_tensor]
            calls.append(self.workers[worker].forward.remote(layer, worker_hidden, local_slots, worker_weights,
                                                                self.epoch))
            rows_of_call.append(rows_tensor)
            sent = worker_hidden.nbytes + local_slots.nbytes + worker_weights.nbytes
            self.traffic.add(worker, rows.size, sent + worker_hidden.nbytes)  # dispatch + combine
        output = torch.zeros_like(hidden)
        for rows, partial in zip(rows_of_call, ray.get(calls)):
            if rows is None:
                output += partial
            else:
                output.index_add_(0, rows, partial)
        self.seconds += time.perf_counter() - start
        return output

"""`ExpertPool`: the expert workers on their nodes, re-created with their experts when they die.

One replica per application. At start it waits for the Switchyard nodes (Ray nodes offering the
`switchyard_node` resource, in `ray.nodes()` order), picks the plan (the store's active plan when it
fits, as `switchyard serve` does, else the `plan` argument) and starts one worker per plan GPU through
the runtime's `ActorFactory`. It keeps a `Runtime` whose engines are slots: engine `e` belongs on
plan node `Topology.node_of_engine(e)`, and an engine replica claims a free slot of the node Serve put
it on (`claim_slot`), starts its engine there and registers it (`register_engine`). It is the
registry the other deployments read (`layout`).

A thread checks every registered engine and every worker each `SUPERVISE_EVERY_S`: the slot of an
engine whose actor is gone is freed (Serve restarts its replica, which claims it again); workers
whose actor is gone are re-created with their experts by the runtime's own
`Supervisor.replace_workers` (engines route around them meanwhile, then swap the new actor in).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray
from ray import serve

from switchyard.cluster.errors import NotReady
from switchyard.cluster.rebalance.startup import record_serving_plan, resumed_plan
from switchyard.cluster.runtime.actors import ActorFactory
from switchyard.cluster.runtime.runtime import NODE_RESOURCE, Runtime, resolve_plan
from switchyard.cluster.runtime.supervisor import Supervisor
from switchyard.cluster.serving.args import AppArgs
from switchyard.cluster.state.store import open_state_store
from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.workers.checkpoints import load_spec

log = logging.getLogger(__name__)

SUPERVISE_EVERY_S = 1.0
"""Seconds between two checks of the workers (a dead worker is re-created within about this)."""
NODES_TIMEOUT_S = 300.0
"""How long the pool waits for the Switchyard nodes to join the Ray cluster before it fails."""


def switchyard_nodes(count: int, timeout_s: float = NODES_TIMEOUT_S) -> list[str]:
    """Ray node ids of the first `count` alive nodes offering `NODE_RESOURCE`, once that many are up.

    `NotReady` naming how many there are after `timeout_s` (pods still starting, or missing the resource)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [node["NodeID"] for node in ray.nodes()
                 if node["Alive"] and node.get("Resources", {}).get(NODE_RESOURCE, 0) > 0]
        if len(found) >= count:
            return found[:count]
        if time.monotonic() > deadline:
            raise NotReady(f"the application needs {count} Ray nodes with the resource {NODE_RESOURCE!r}, "
                           f"{len(found)} joined within {timeout_s:g} s")
        time.sleep(1.0)


def node_gpus(node_id: str) -> float:
    """GPUs Ray counts on node `node_id`."""
    return next(node.get("Resources", {}).get("GPU", 0.0) for node in ray.nodes() if node["NodeID"] == node_id)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, health_check_period_s=5)
class ExpertPool:
    """The workers of the served plan, their supervision, and the registry of engine slots (module doc)."""

    def __init__(self, raw_args: dict[str, Any]) -> None:
        args = AppArgs.parse(raw_args)
        spec = load_spec(args.model)
        node_ids = switchyard_nodes(args.nodes)
        plan = resolve_plan(spec, args.plan, args.nodes, args.gpus_per_node)
        epoch = 1
        store_url = args.redis_url()
        if store_url is not None:
            store = open_state_store(store_url, args.deployment)
            try:
                plan = resumed_plan(store, plan) if not args.plan.endswith(".json") else plan
                epoch = max(record_serving_plan(store, plan), 1)
            finally:
                store.close()
        gpus = node_gpus(node_ids[0])
        if gpus and gpus < args.gpus_per_node:
            raise PlacementError(f"gpus_per_node is {args.gpus_per_node} but the nodes have {gpus:g} GPUs")
        actors = ActorFactory(tuple(node_ids), gpus_per_worker=1.0 if gpus else 0.0)
        workers = [actors.start_worker(str(spec.model_dir), plan, gpu, epoch) for gpu in range(plan.topology.num_gpus)]
        addresses = ray.get([worker.channel_address.remote() for worker in workers])
        slots = args.nodes * args.engines_per_node
        self.runtime = Runtime(spec, plan, epoch, workers, [None] * slots, actors, addresses)
        self.supervisor = Supervisor(self.runtime)  # not started: Serve watches the engines, `_supervise` the workers
        self.replicas: list[str | None] = [None] * slots  # the replica holding each engine slot
        self.pending: set[int] = set()  # slots claimed whose engine is not registered yet
        self.recreated = 0  # workers re-created since start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="expert-pool", daemon=True)
        self._thread.start()
        log.info("expert pool: %d workers on %d nodes, epoch %d", len(workers), args.nodes, epoch)

    # ---- the registry (called through the deployment's handle) ----
    def layout(self) -> dict[str, Any]:
        """What engines and gateways need: model, node ids, plan and epoch, workers and their channel
        addresses, the engine of each slot (None: none registered yet), and workers re-created so far."""
        runtime = self.runtime
        with self._lock:
            return {"model": str(runtime.spec.model_dir), "node_ids": list(runtime.actors.node_ids),
                    "plan": runtime.plan.to_dict(), "epoch": runtime.epoch, "workers": list(runtime.workers),
                    "addresses": list(runtime.addresses), "engines": list(runtime.engines),
                    "replicas": list(self.replicas), "recreated": self.recreated}

    def claim_slot(self, replica: str, node: int) -> int | None:
        """A free engine slot of plan node `node` for `replica` (None: none free yet, e.g. the dead
        engine's slot is not freed yet: ask again)."""
        with self._lock:
            topology = self.runtime.plan.topology
            for slot, holder in enumerate(self.replicas):
                if holder is None and topology.node_of_engine(slot) == node:
                    self.replicas[slot] = replica
                    self.pending.add(slot)
                    return slot
        return None

    def register_engine(self, slot: int, replica: str, engine: Any, workers_seen: list[Any]) -> None:
        """`replica` serves slot `slot` with `engine`, started with `workers_seen`; workers re-created
        since it read them are swapped in on it."""
        runtime = self.runtime
        with self._lock:
            if self.replicas[slot] != replica:
                raise NotReady(f"engine slot {slot} is not held by {replica}")
            runtime.engines[slot] = engine
            self.pending.discard(slot)
            node = runtime.plan.topology.node_of_engine(slot)
            for gpu, (seen, now) in enumerate(zip(workers_seen, runtime.workers)):
                if seen != now:
                    engine.replace_worker.remote(gpu, now, runtime.actors.channel(
                        runtime.plan, node, gpu, runtime.addresses[gpu]))

    def release_slot(self, slot: int, replica: str) -> None:
        """`replica` stops: its slot is free for the replica Serve starts instead."""
        with self._lock:
            if self.replicas[slot] == replica:
                self.replicas[slot] = None
                self.pending.discard(slot)

    def set_plan(self, plan: dict[str, Any], epoch: int) -> None:
        """A gateway applied `plan` live at `epoch`: re-created workers and new engines start from it."""
        with self.runtime.migration_lock, self._lock:
            if epoch > self.runtime.epoch:
                self.runtime.plan, self.runtime.epoch = Plan.from_dict(plan), epoch

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the expert pool's supervision stopped")

    def __del__(self) -> None:
        self._stop.set()

    # ---- supervision ----
    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_EVERY_S):
            try:
                self._check_engines()
                self._check_workers()
            except Exception:  # the next round tries again; a failure must not end supervision
                log.exception("expert pool supervision failed this round")

    def _registered(self) -> list[int]:
        with self._lock:
            return [slot for slot, holder in enumerate(self.replicas)
                    if holder is not None and slot not in self.pending and self.runtime.engines[slot] is not None]

    def _check_engines(self) -> None:
        for slot in self._registered():
            if not _alive(self.runtime.engines[slot], "epoch"):
                log.warning("engine slot %d: its engine is gone; free for its replica's replacement", slot)
                with self._lock:
                    self.replicas[slot] = None

    def _check_workers(self) -> None:
        dead = [gpu for gpu, worker in enumerate(list(self.runtime.workers)) if not _alive(worker, "held_epochs")]
        if dead:
            log.warning("expert workers %s are gone; re-creating them with their experts", dead)
            self.supervisor.replace_workers(dead, self._registered())
            with self._lock:
                self.recreated += len(dead)


def _alive(actor: Any, method: str, timeout_s: float = 10.0) -> bool:
    """False when `actor` is gone (its process died or it was killed); a slow answer counts as alive."""
    try:
        ray.get(getattr(actor, method).remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        return True
    except ray.exceptions.RayActorError:
        return False
    return True

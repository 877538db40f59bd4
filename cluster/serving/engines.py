"""`EngineReplica`: one engine per Serve replica, on the node Serve placed the replica on.

Each replica asks for 1/engines_per_node of the node's `switchyard_node` resource, so Serve puts
exactly `engines_per_node` replicas on each Switchyard node, and a replacement lands where one is
missing. The replica learns its Ray node from the runtime context, so its plan node (the home node of
its tokens, and which workers it reaches through shared memory), claims a free engine slot of that
node from the `ExpertPool` (after a replica died, the one it left), and starts its engine there with
the runtime's own `ActorFactory.start_engine`: the engine is an actor of its own (owned by the
replica, so it dies with it) because the gateway streams from it, switches its plan and collects its
statistics through per-engine calls that a Serve handle (which picks a replica per call) cannot
address. The replica registers the engine in its slot and publishes its routing statistics to the
state store.

`check_health` asks the engine for its queue depth: when the engine's process died, Serve marks the
replica unhealthy and replaces it (a new replica, a new engine, registered again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve

from switchyard.cluster.errors import InvalidSetting, NotReady
from switchyard.cluster.runtime.actors import ActorFactory
from switchyard.cluster.serving.args import AppArgs
from switchyard.cluster.state.publisher import StatsPublisher
from switchyard.cluster.state.store import open_state_store
from switchyard.placement.plan import Plan

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 10.0
"""How long the engine may take to answer a health check (it answers between steps' work: threaded)."""
CLAIM_TIMEOUT_S = 60.0
"""How long a replica waits for a free engine slot on its node (a dead engine's slot is freed once the
pool has seen it gone)."""


@serve.deployment(health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=5)
class EngineReplica:
    """One engine on this replica's node, registered with the pool (module doc)."""

    async def __init__(self, pool: Any, raw_args: dict[str, Any]) -> None:
        # async: Serve runs the constructor on the replica's event loop, where a handle's `.result()`
        # may not block; the pool and the engine are awaited instead.
        args = AppArgs.parse(raw_args)
        self.pool = pool
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()  # its actor's name in namespace "serve"
        node_ids = (await pool.layout.remote())["node_ids"]
        node_id = ray.get_runtime_context().get_node_id()
        if node_id not in node_ids:
            raise InvalidSetting(f"engine replica {self.replica} runs on Ray node {node_id}, which holds no "
                                 "expert workers (does it offer the switchyard_node resource?)")
        node = node_ids.index(node_id)
        deadline = time.monotonic() + CLAIM_TIMEOUT_S
        while (slot := await pool.claim_slot.remote(self.replica, node)) is None:
            if time.monotonic() > deadline:
                raise NotReady(f"no free engine slot on plan node {node} within {CLAIM_TIMEOUT_S:g} s")
            await asyncio.sleep(1.0)
        self.slot = slot
        layout = await pool.layout.remote()
        plan = Plan.from_dict(layout["plan"])
        self.engine = ActorFactory(tuple(node_ids)).start_engine(plan, slot, layout["workers"], layout["addresses"])
        await self.engine.load.remote(layout["model"], layout["plan"], layout["epoch"])
        await pool.register_engine.remote(slot, self.replica, self.engine, layout["workers"])
        self.publisher = None
        store_url = args.redis_url()
        if store_url is not None:
            store = open_state_store(store_url, args.deployment)
            self.publisher = StatsPublisher(store, [self.engine], args.stats_interval_s,
                                            source=f"serve.{serve.get_replica_context().replica_tag}").start()
        log.info("engine replica %s: engine %d on plan node %d, epoch %d", self.replica, slot, node, layout["epoch"])

    async def check_health(self) -> None:
        """Raises when the engine is gone or stuck: Serve then replaces this replica."""
        await asyncio.wait_for(asyncio.wrap_future(self.engine.queue_depth.remote().future()), HEALTH_TIMEOUT_S)

    def __del__(self) -> None:
        """Serve stops the replica: publish the last statistics, leave the registry, stop the engine."""
        if getattr(self, "publisher", None) is not None:
            self.publisher.stop()
        if getattr(self, "engine", None) is not None:
            self.pool.release_slot.remote(self.slot, self.replica)
            ray.kill(self.engine)

"""Start a model on a Ray cluster: expert workers and engines pinned to the plan's nodes.

Plan node n is the n-th alive Ray node (in `ray.nodes()` order, the head first), and every actor is
pinned to its node with `NodeAffinitySchedulingStrategy`, so a plan's "same node" is a real Ray node.
Worker g (plan GPU g) runs on plan node `g // workers_per_node`; each node runs `engines_per_node`
engines, whose tokens' home node is that node. Actors ask for no CPUs (they share the machine's
cores) and, with `gpus_per_worker`, for a GPU each.

Engines reach the workers on their own node through shared memory and the others over TCP to the
worker's node IP (each worker's `ChannelAddress` is handed to them, `cluster.engine.transport`);
`transport="ray"` uses a Ray actor call per layer everywhere instead (to measure the difference).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from switchyard.cluster.engine.replay import TraceReplay
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.engine.traffic import merge_traffic
from switchyard.cluster.engine.transport import DEFAULT_TIMEOUT_S
from switchyard.cluster.settings import DEFAULTS
from switchyard.placement.errors import PlacementError
from switchyard.placement.formats.plans import load_plan
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.cluster.runtime.actors import ActorFactory
from switchyard.placement.trace import RoutingTrace
from switchyard.workers.channel import ChannelAddress
from switchyard.workers.checkpoints import ModelSpec, load_spec
from switchyard.workers.combiner import WINDOW_S

NODE_RESOURCE = "switchyard_node"
"""The Ray resource (1 per node) of the nodes that hold expert workers and engines under Serve (the
chart's GPU pods; every node of `local_cluster`). Each engine replica asks for 1/engines_per_node of
it, so exactly `engines_per_node` engine replicas land on each such node."""
GATEWAY_RESOURCE = "switchyard_gateway"
"""The Ray resource (1 per node) of the nodes that run a Gateway replica under Serve (the chart's
gateway pods; the head of `local_cluster`)."""


def resolve_plan(spec: ModelSpec, plan: Plan | str | Path, num_nodes: int, workers_per_node: int) -> Plan:
    """The plan to serve: a `Plan`, a plan JSON file, or a policy name (placed on uniform load).

    Raises `PlacementError` when the plan does not fit the model or the requested nodes and workers.
    """
    if isinstance(plan, Path) or (isinstance(plan, str) and plan.endswith(".json")):
        plan = load_plan(plan)
    elif isinstance(plan, str):
        uniform = RoutingStats.from_load(np.ones((spec.num_layers, spec.num_experts)))
        plan = get_policy(plan).place(uniform, Topology.for_experts(spec.num_experts, num_nodes, workers_per_node))
    plan.check_matches(spec.num_layers, spec.num_experts, f"the model {spec.model_dir}")
    topology = plan.topology
    if (topology.num_nodes, topology.gpus_per_node) != (num_nodes, workers_per_node):
        raise PlacementError(
            f"the plan is for {topology.num_nodes} nodes x {topology.gpus_per_node} workers, "
            f"but {num_nodes} x {workers_per_node} were asked for")
    return plan


def merge_engine_stats(stats: list[RoutingStats]) -> RoutingStats:
    """Engines' routing statistics (at least one), merged; idle engines are left out (their load-only
    stats would drop the others' top-k sets from the merge)."""
    stats = [s for s in stats if s.num_tokens > 0] or stats[:1]
    merged = stats[0]
    for other in stats[1:]:
        merged = merged.merge(other)
    return merged


def replay_shares(trace: RoutingTrace | None, num_engines: int) -> list[RoutingTrace | None]:
    """Engine e's part of `trace`: the e-th of `num_engines` contiguous runs of its tokens (all None
    without a trace), so that the engines together replay every token once before any wraps round."""
    if trace is None:
        return [None] * num_engines
    bounds = np.linspace(0, trace.num_tokens, num_engines + 1).astype(np.int64)
    return [trace.slice_tokens(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


class Runtime:
    """Expert workers and engines on the connected Ray cluster, serving one model under one plan.

    Use `Runtime.start(...)`, then `generate`, `routing_stats`, `traffic`, and `shutdown` (or `with`).
    `load` switches to another model or plan between requests, keeping the actors (and their processes);
    `switchyard.cluster.runtime.migration.migrate` switches plans while requests run. `epoch` is the
    version of `plan` (the state store's epoch when serving with one). `actors` starts more actors like
    these (the supervisor's replacements); `addresses` is each worker's channel address.
    """

    def __init__(self, spec: ModelSpec, plan: Plan, epoch: int, workers: list[Any], engines: list[Any],
                 actors: ActorFactory, addresses: list[ChannelAddress]) -> None:
        self.spec, self.plan, self.epoch = spec, plan, epoch
        self.workers, self.engines, self.actors, self.addresses = workers, engines, actors, addresses
        self.device = actors.device
        self.migration_lock = threading.Lock()  # one live migration (or worker replacement) at a time

    @classmethod
    def start(cls, model_dir: str | Path, num_nodes: int = 1, workers_per_node: int = 1,
              plan: Plan | str | Path = "linear", engines_per_node: int = 1, max_batch: int = 64,
              gpus_per_worker: float = 0.0, epoch: int = 1, transport: str = "auto",
              dispatch_timeout_s: float = DEFAULT_TIMEOUT_S, expert_kernel: str = "auto",
              worker_threads: int | None = 1, engine_threads: int | None = None,
              replay: RoutingTrace | None = None, combine_window_s: float = WINDOW_S) -> Runtime:
        """Start the actors and load the model. transport: "auto" (shared memory on a node, TCP between
        nodes) or "ray" (a Ray actor call per layer everywhere).  dispatch_timeout_s: how long an engine waits for a worker's answer to one layer.
        expert_kernel: `ExpertCompute`'s kernel.  worker_threads / engine_threads: torch threads per
        actor (measured on 2 cores: 1 per worker, torch's default for the engine, docs/runtime.md).
        replay: a routing trace the engines replay instead of their gates' choices (a benchmark mode,
        `cluster.engine.replay`), split between them (`replay_shares`).  combine_window_s: how long a
        worker waits to run several engines' calls of a layer as one (`workers.combiner`; 0: never)."""
        actors = ActorFactory((), gpus_per_worker, transport, max_batch, dispatch_timeout_s, expert_kernel,
                              worker_threads, engine_threads, combine_window_s)  # bad options fail before anything starts
        spec = load_spec(model_dir)
        resolved = resolve_plan(spec, plan, num_nodes, workers_per_node)  # bad input fails before any actor
        if replay is not None:
            TraceReplay(replay).check_fits(spec.num_layers, spec.num_experts, spec.top_k, f"the model {model_dir}")
        node_ids = tuple(node["NodeID"] for node in ray.nodes() if node["Alive"])
        if len(node_ids) < num_nodes:
            raise PlacementError(f"the plan needs {num_nodes} nodes but the Ray cluster has {len(node_ids)}")
        actors = dataclasses.replace(actors, node_ids=node_ids)
        workers = [actors.start_worker(str(spec.model_dir), resolved, gpu, epoch)
                   for gpu in range(resolved.topology.num_gpus)]
        addresses = ray.get([worker.channel_address.remote() for worker in workers])
        # Engines go round the nodes (`Topology.node_of_engine`), so round-robin prompts go round the nodes.
        engines = [actors.start_engine(resolved, index, workers, addresses)
                   for index in range(num_nodes * engines_per_node)]
        shares = replay_shares(replay, len(engines))
        ray.get([engine.load.remote(str(spec.model_dir), resolved.to_dict(), epoch, share)
                 for engine, share in zip(engines, shares)])
        return cls(spec, resolved, epoch, workers, engines, actors, addresses)

    def load(self, model_dir: str | Path, plan: Plan | str | Path = "linear", replay: RoutingTrace | None = None
             ) -> None:
        """Serve another model or plan with the same actors (between requests only); `replay` as in `start`."""
        spec = load_spec(model_dir)
        topology = self.plan.topology
        resolved = resolve_plan(spec, plan, topology.num_nodes, topology.gpus_per_node)
        ray.get([worker.load.remote(str(spec.model_dir), resolved.gpu_experts[:, gpu], self.device, self.epoch)
                 for gpu, worker in enumerate(self.workers)])
        shares = replay_shares(replay, len(self.engines))
        ray.get([engine.load.remote(str(spec.model_dir), resolved.to_dict(), self.epoch, share)
                 for engine, share in zip(self.engines, shares)])
        self.spec, self.plan = spec, resolved

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Generated ids of every prompt, in prompt order; prompt s goes to engine s % engines."""
        num_engines = len(self.engines)
        calls = [self.engines[e].generate.remote(prompts[e::num_engines], params) for e in range(num_engines)]
        per_engine = ray.get(calls)
        outputs: list[list[int]] = [[] for _ in prompts]
        for engine, results in enumerate(per_engine):
            outputs[engine::num_engines] = results
        return outputs

    def routing_stats(self) -> RoutingStats:
        """All engines' routing statistics, merged (`merge_engine_stats`)."""
        return merge_engine_stats(ray.get([engine.routing_stats.remote() for engine in self.engines]))

    def traffic(self) -> dict[str, Any]:
        """All engines' traffic counters: per worker and total, same-node and cross-node."""
        return merge_traffic(ray.get([engine.traffic.remote() for engine in self.engines]))

    def timings(self) -> dict[str, Any]:
        """Profile since the last `load`: engine steps and dispatch time (summed), each worker's busy time."""
        engines = ray.get([engine.timings.remote() for engine in self.engines])
        workers = ray.get([worker.timings.remote() for worker in self.workers])
        return {**{key: sum(e[key] for e in engines) for key in engines[0]},
                "worker_busy_seconds": [w["busy_seconds"] for w in workers]}

    def shutdown(self) -> None:
        for actor in self.engines + self.workers:
            ray.kill(actor)
        self.engines, self.workers = [], []

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def ray_system_config() -> dict[str, int]:
    """Ray settings of a cluster that Switchyard starts: the GCS keeps fewer task events
    (`Settings.ray_task_events_max_in_gcs`), so its memory stays flat under sustained load."""
    return {"task_events_max_num_task_in_gcs": DEFAULTS.ray_task_events_max_in_gcs}


@contextlib.contextmanager
def local_cluster(num_nodes: int, system_config: dict[str, Any] | None = None) -> Iterator[None]:
    """An ephemeral Ray cluster on this machine with `num_nodes` simulated nodes; shut down on exit.

    Every node offers `NODE_RESOURCE` and the head `GATEWAY_RESOURCE`, as the chart's pods do, so the
    Serve application (`cluster.serving`) runs on it unchanged.  system_config: Ray's `_system_config`
    of the head; None: `ray_system_config()`."""
    from ray.cluster_utils import Cluster  # only the ephemeral cluster needs the simulator

    system_config = ray_system_config() if system_config is None else system_config
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "resources": {NODE_RESOURCE: 1, GATEWAY_RESOURCE: 1},
        "_system_config": system_config})
    try:
        for _ in range(num_nodes - 1):
            cluster.add_node(num_cpus=1, resources={NODE_RESOURCE: 1})
        with ray_cluster(num_nodes, cluster.address):
            yield
    finally:
        cluster.shutdown()


@contextlib.contextmanager
def ray_cluster(num_nodes: int, address: str | None = None) -> Iterator[None]:
    """Connect this process to the Ray cluster at `address` (ray://... or HOST:PORT) and disconnect on exit,
    leaving the cluster running; without `address`, an ephemeral `local_cluster(num_nodes)`."""
    if address is None:
        with local_cluster(num_nodes):
            yield
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()

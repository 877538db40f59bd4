"""How a runtime's actors are made: one expert worker or one engine, pinned to its plan node.

`Runtime.start` makes every actor here, and the supervisor (`supervisor`) re-creates a dead or hung
one through the same calls, so a replacement runs exactly like the actor it replaces (same node,
same resources, same options). A Ray Serve application can do the same with its own `ActorFactory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from switchyard.cluster.engine.engine import Engine
from switchyard.cluster.engine.transport import DEFAULT_TIMEOUT_S
from switchyard.placement.plan import Plan
from switchyard.workers.channel import ChannelAddress
from switchyard.workers.combiner import WINDOW_S
from switchyard.workers.expert_worker import ExpertWorker

MIGRATION_GROUP = "migration"
"""The workers' second thread: a live migration's copies run there, beside `forward` (which keeps its
own thread), on otherwise idle cores only, so serving does not stall while experts are copied."""
_RemoteWorker = ray.remote(concurrency_groups={MIGRATION_GROUP: 1})(ExpertWorker)
_RemoteEngine = ray.remote(Engine)


@dataclass(frozen=True)
class ActorFactory:
    """Starts the actors of one runtime; every option is kept so that a replacement matches.

    node_ids: the Ray node id of each plan node.  transport: "auto" (shared memory on a node, TCP
    between nodes) or "ray" (Ray actor calls everywhere, to measure against).  The others are `Runtime.start`'s arguments of the same names.
    """

    node_ids: tuple[str, ...]
    gpus_per_worker: float = 0.0
    transport: str = "auto"
    max_batch: int = 64
    dispatch_timeout_s: float = DEFAULT_TIMEOUT_S
    expert_kernel: str = "auto"
    worker_threads: int | None = 1
    engine_threads: int | None = None
    combine_window_s: float = WINDOW_S

    def __post_init__(self) -> None:
        if self.transport not in ("auto", "ray"):
            raise ValueError(f"transport must be auto or ray, got {self.transport!r}")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    def pinned(self, node: int) -> NodeAffinitySchedulingStrategy:
        """Plan node `node`'s Ray node, never another (a replacement stays where the plan put it)."""
        return NodeAffinitySchedulingStrategy(self.node_ids[node], soft=False)

    def start_worker(self, model_dir: str, plan: Plan, gpu: int, epoch: int) -> Any:
        """Expert worker `gpu` holding its experts of `plan` at `epoch`, read from the checkpoint at
        `model_dir` (it loads them as it starts: ask for `channel_address` to wait until it is ready).
        Its migration thread runs only on otherwise idle cores (`ExpertWorker.lower_thread_priority`)."""
        worker = _RemoteWorker.options(
            num_cpus=0, num_gpus=self.gpus_per_worker,
            scheduling_strategy=self.pinned(int(plan.topology.node_of_gpu[gpu]))).remote(
                model_dir, plan.gpu_experts[:, gpu], self.device, epoch, self.expert_kernel, self.worker_threads,
                self.combine_window_s)
        worker.lower_thread_priority.options(concurrency_group=MIGRATION_GROUP).remote()
        return worker

    def channel(self, plan: Plan, node: int, gpu: int, address: ChannelAddress) -> str | None:
        """What an engine on `node` is handed for worker `gpu` at channel `address` (`transport.connect`):
        with the "auto" transport its shared-memory socket when the worker is on `node`, its TCP address
        otherwise; None with "ray" (reached through Ray actor calls)."""
        if self.transport == "ray":
            return None
        return address.local if int(plan.topology.node_of_gpu[gpu]) == node else address.remote

    def channels(self, plan: Plan, node: int, addresses: list[ChannelAddress]) -> list[str | None]:
        """`channel` of every worker (`addresses`: `[G]`)."""
        return [self.channel(plan, node, gpu, address) for gpu, address in enumerate(addresses)]

    def start_engine(self, plan: Plan, index: int, workers: list[Any], addresses: list[ChannelAddress]) -> Any:
        """Engine `index` on its node (`Topology.node_of_engine`), reaching `workers` (`[G]` handles, their
        channel `addresses`); call its `load` before sending it requests."""
        node = plan.topology.node_of_engine(index)
        return _RemoteEngine.options(num_cpus=0, max_concurrency=self.max_batch + 4,
                                     scheduling_strategy=self.pinned(node)).remote(
            list(workers), node, self.max_batch, channels=self.channels(plan, node, addresses),
            dispatch_timeout_s=self.dispatch_timeout_s, threads=self.engine_threads)

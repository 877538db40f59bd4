"""What the gateway serves from: the `Backend` interface, and `RuntimeBackend` over a `Runtime`.

The servicer (`gateway.servicer`) only translates protos; everything it asks of the cluster goes
through `Backend`. `RuntimeBackend` sends each request to the engine replica with the fewest requests
in flight from this gateway (ties go round the engines, so round the nodes:
`Topology.node_of_engine`) and streams its tokens (`gateway.streaming`). An engine whose actor died
answers its requests UNAVAILABLE (a request that has no token yet starts over on another engine) and
is not picked until the supervisor (`runtime.supervisor`) has
re-created it; meanwhile placement, statistics and the per-engine answers leave it out (epoch 0).

With a state store (`switchyard serve` always passes one), the placement is the store's active plan
and epoch, and the statistics are the store's window (by time, or by tokens), merged across every
engine that publishes there (`state.publisher`); without one, the served plan at the runtime's epoch
and the statistics since loading. Rebalance and Rollback propose from the plan the engines really
serve (`runtime.plan`, `rebalance.planner`) and apply live through `rebalance.applier.PlanApplier`
(one at a time, committed with the store's epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray

from switchyard.cluster.engine.requests import check_prompt, check_stop_ids
from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.engine.traffic import TrafficCounters, merge_traffic
from switchyard.cluster.errors import InvalidSetting, NotReady, QueueFull, ServingError
from switchyard.cluster.gateway.streaming import EnginePoller, TokenStream
from switchyard.cluster.rebalance.applier import PlanApplier, RebalanceOutcome, check_epoch
from switchyard.cluster.rebalance.feedback import FeedbackMemory
from switchyard.cluster.rebalance.planner import model_cluster, plan_proposal
from switchyard.cluster.runtime.runtime import Runtime, merge_engine_stats
from switchyard.cluster.runtime.supervisor import Supervisor
from switchyard.cluster.settings import DEFAULTS, check_balance_tokens
from switchyard.cluster.state.store import PricedPlan, StateStore, WindowBy
from switchyard.placement.errors import positive_int, unit_interval
from switchyard.placement.feedback import BASELINE, BalanceFeedback, applies_to
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.proposal import Proposal, expected_balancedness, memory_dict, memory_text
from switchyard.placement.stats import RoutingStats
from switchyard.placement.windows import Memory, Resampling, check_resampled, planning_stats, planning_windows
from switchyard.workers.checkpoints import ModelSpec, load_tokenizer

log = logging.getLogger(__name__)


# ---- domain objects ----


@dataclass(frozen=True)
class ModelInfo:
    """The served model, as requests are checked against it."""

    model_dir: str
    family: str
    num_layers: int
    num_experts: int
    top_k: int
    vocab_size: int
    max_context: int  # prompt + generated tokens at most
    has_tokenizer: bool

    @classmethod
    def of_spec(cls, spec: ModelSpec, has_tokenizer: bool) -> ModelInfo:
        return cls(str(spec.model_dir), spec.family.name, spec.num_layers, spec.num_experts, spec.top_k,
                   spec.vocab_size, int(spec.config.max_position_embeddings), has_tokenizer)


def check_request(prompt: list[int], params: SamplingParams, model: ModelInfo) -> None:
    """`InvalidRequest` naming the first problem of one request against the served model."""
    check_prompt(prompt, model.vocab_size, model.max_context, params.max_new_tokens)
    check_stop_ids(params, model.vocab_size)


@dataclass(frozen=True)
class Snapshot:
    """Routing statistics and the engines' traffic counters (since the model was loaded): merged
    (`merge_traffic`), with each engine's own under `traffic["engines"]` (`TrafficCounters.to_dict`).

    window_s: the time window the statistics cover, in seconds; 0: since the model was loaded (or a
    token window).  window_tokens: the token window (the newest entries holding at least this many
    tokens); 0: a time window or since loading.
    """

    stats: RoutingStats
    traffic: dict[str, Any]
    balancedness: float
    window_s: float = 0.0
    window_tokens: float = 0.0


class Backend(Protocol):
    """What the gateway needs from the cluster; one backend serves one gateway (one event loop)."""

    model: ModelInfo
    tokenizer: Any  # the checkpoint's transformers tokenizer, or None where it ships none

    def open(self, prompt: list[int], params: SamplingParams) -> contextlib.AbstractAsyncContextManager[
            TokenStream]:
        """Reserve an engine for one checked request (`QueueFull`, `NotReady`); the stream yields tokens."""

    def queue_depths(self) -> list[int]:
        """Requests in flight per engine replica."""

    async def placement(self) -> tuple[int, Plan]:
        """The active plan and its epoch."""

    async def snapshot(self) -> Snapshot:
        """Routing statistics (of a window, or since loading), balancedness and traffic counters."""

    async def cluster_info(self) -> dict[str, Any]:
        """`nodes` (index, ray_node_id, address), `engines` (index, node), `workers` (index, node), `device`."""

    async def rebalance(self, dry_run: bool, policy: str, max_moves: int | None, plan: Plan | None = None,
                        expected_epoch: int | None = None, by: str = "admin") -> RebalanceOutcome:
        """A proposal on the statistics window from the served plan, planned with `policy` or `plan`
        itself (then `policy` and `max_moves` are ignored, so a caller can repeat a dry run's arguments
        with the plan it showed), and unless `dry_run` applied live as a new epoch. `InvalidRequest` for a bad policy,
        budget or plan; `FailedPrecondition` without statistics to plan on; `Conflict` when the active
        epoch is not `expected_epoch` or another rebalance runs; `MigrationAborted` when the move failed
        and was undone; `StateStoreUnavailable` when the store cannot be reached (nothing moved)."""

    async def rollback(self, dry_run: bool = False, by: str = "admin") -> RebalanceOutcome:
        """Like `rebalance` with the plan active before the current one (`FailedPrecondition`: none)."""

    async def engine_epochs(self) -> list[int]:
        """The epoch each engine replica dispatches under, in engine order."""

    async def active_batches(self) -> list[int]:
        """Requests in each engine replica's decode batch after its latest step, in engine order."""

    async def events(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` rebalance events, newest first (none without a state store)."""

    def serving(self) -> bool:
        """Whether every request can be served now (health SERVING): an engine is up, and every expert
        has a replica on a worker that is up."""

    async def close(self) -> None:
        """Stop background work (a pending gain observation); the gateway calls it when it drains."""


class RuntimeBackend:
    """`Backend` over a started `Runtime`, streaming with `Engine.poll` and stopping with `Engine.cancel`.

    max_queue_per_engine: requests in flight per engine before `QueueFull`.  poll_timeout_s: how long
    one `Engine.poll` waits for a token (a request that joins meanwhile waits for the next step).
    tokenizer_dir: where the tokenizer for text prompts is saved; default: the checkpoint directory.
    store: the state store the placement and statistics come from, where applied plans are committed
    and rebalance events recorded (see the module doc); None: the served plan at the runtime's epoch,
    the statistics since loading, no events.  stats_window_s: the store's time window.
    stats_window_tokens: instead, a token window (`switchyard serve --stats-window-tokens`).
    stats_history, stats_decay: rebalances plan on the store's last `stats_history` windows, each
    older one weighted by `stats_decay` (`placement.windows.decayed_stats`: affinity holds its load
    cap on each); snapshots and GetStats report the newest window alone.  adaptive_memory: instead,
    each rebalance plans on that memory or a longer one, whichever forecasts the store's last
    windows best (`placement.windows.planning_stats`; it reads `planning_windows` of them).
    balance_feedback: affinity's overload is priced by how the plan in service has served since its
    apply against EPLB's plan on the same statistics (`placement.feedback`; `cluster.rebalance.feedback`
    keeps what that needs, in `store` where given, so gateway replicas over it, and restarts over Redis,
    share it); False: at the model's price.
    balance_tokens: besides, each of those windows keeps the load of its runs of store entries holding this many tokens, and
    affinity holds its cap on each run (`switchyard serve --balance-tokens`; needs a store).
    resampled_windows: rebalances plan on this many windows drawn with replacement from those runs
    instead (`placement.windows.planning_stats`; `switchyard serve --resampled-windows`; needs
    balance_tokens): affinity then holds its cap on other draws of the traffic it plans on.
    cluster_preset: the hardware preset (`placement.cost.PRESETS`) with the model's sizes that
    proposals are modelled on and affinity plans for (`switchyard serve --cluster`).
    observe_after_s: how long after an apply its gain is measured ("observed" event).
    supervisor: the `Supervisor` re-creating the runtime's dead actors, whose view `serving` reports;
    None: nothing re-creates them (an engine gone stays gone).
    """

    def __init__(self, runtime: Runtime, max_queue_per_engine: int = DEFAULTS.max_queue_per_engine,
                 poll_timeout_s: float = DEFAULTS.poll_timeout_s,
                 tokenizer_dir: str | Path | None = None, store: StateStore | None = None,
                 stats_window_s: float = DEFAULTS.stats_window_s, stats_window_tokens: float | None = None,
                 stats_history: int = DEFAULTS.stats_history, stats_decay: float = DEFAULTS.stats_decay,
                 adaptive_memory: bool = DEFAULTS.adaptive_memory, balance_tokens: float | None = None,
                 resampled_windows: int | None = None, balance_feedback: bool = DEFAULTS.balance_feedback,
                 cluster_preset: str = DEFAULTS.cluster_preset,
                 observe_after_s: float = DEFAULTS.observe_after_s, supervisor: Supervisor | None = None) -> None:
        if max_queue_per_engine < 1:
            raise InvalidSetting(f"max_queue_per_engine must be at least 1, got {max_queue_per_engine}")
        if not stats_window_s > 0:
            raise InvalidSetting(f"stats_window_s must be positive, got {stats_window_s!r}")
        if stats_window_tokens is not None and not stats_window_tokens > 0:
            raise InvalidSetting(f"stats_window_tokens must be positive, got {stats_window_tokens!r}")
        positive_int("stats_history", stats_history, InvalidSetting)
        unit_interval("stats_decay", stats_decay, InvalidSetting)
        check_balance_tokens(balance_tokens, store is not None)
        check_resampled(resampled_windows, balance_tokens, error=InvalidSetting)
        self.cluster = model_cluster(runtime.spec, cluster_preset)
        self.runtime, self.store, self.stats_window_s = runtime, store, stats_window_s
        self.stats_window_tokens, self.stats_history, self.stats_decay = stats_window_tokens, stats_history, stats_decay
        self.adaptive_memory = adaptive_memory
        self.planning_windows = planning_windows((stats_history, stats_decay), adaptive_memory)
        self.balance_tokens, self.resampled_windows = balance_tokens, resampled_windows
        self.feedback = FeedbackMemory(BalanceFeedback(), store) if balance_feedback else None
        self.tokenizer = load_tokenizer(runtime.spec.model_dir if tokenizer_dir is None else tokenizer_dir)
        self.model = ModelInfo.of_spec(runtime.spec, self.tokenizer is not None)
        self.max_queue_per_engine, self.poll_timeout_s = max_queue_per_engine, poll_timeout_s
        self.applier = PlanApplier(runtime, store, self.snapshot, observe_after_s)
        self._in_flight = [0] * len(runtime.engines)
        self.supervisor = supervisor
        self._gone: set[int] = set()  # engines whose actor died: not picked until re-created
        self._handles = list(runtime.engines)  # the actor each poller polls: a new one means re-created
        self._pollers = [EnginePoller(engine, poll_timeout_s) for engine in runtime.engines]
        self._next = 0  # where the search for the least-loaded engine starts: ties go round the engines

    @property
    def num_nodes(self) -> int:
        return self.runtime.plan.topology.num_nodes

    def queue_depths(self) -> list[int]:
        return list(self._in_flight)

    def _refresh_engines(self) -> None:
        """Take up the engines the supervisor re-created: a new poller each, picked again."""
        for index, engine in enumerate(self.runtime.engines):
            if engine is not self._handles[index]:
                self._handles[index], self._pollers[index] = engine, EnginePoller(engine, self.poll_timeout_s)
                self._gone.discard(index)
                log.info("engine %d is back", index)

    def _unavailable_engines(self) -> set[int]:
        self._refresh_engines()
        return self._gone | (self.supervisor.down_engines if self.supervisor is not None else set())

    def serving(self) -> bool:
        if len(self._unavailable_engines()) >= len(self._in_flight):
            return False
        return self.supervisor is None or self.supervisor.can_serve()

    def _pick_engine(self) -> int:
        unavailable = self._unavailable_engines()
        order = [engine for engine in ((self._next + i) % len(self._in_flight) for i in range(len(self._in_flight)))
                 if engine not in unavailable]
        if not order:
            raise NotReady("no engine is running" if not self._in_flight else
                           f"all {len(self._in_flight)} engines are gone; "
                           + ("they are being re-created, retry shortly" if self.supervisor is not None
                              else "restart `switchyard serve`"))
        engine = min(order, key=lambda e: self._in_flight[e])
        if self._in_flight[engine] >= self.max_queue_per_engine:
            raise QueueFull(f"every engine has {self.max_queue_per_engine} requests in flight; retry later")
        self._next = (engine + 1) % len(self._in_flight)
        return engine

    @contextlib.asynccontextmanager
    async def open(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[TokenStream]:
        check_request(prompt, params, self.model)
        engine = self._pick_engine()
        self._in_flight[engine] += 1
        stream = TokenStream(self.runtime.engines[engine], self._pollers[engine], engine,
                             self.runtime.plan.topology.node_of_engine(engine), prompt, params, self._failover)
        try:
            yield stream
        except ray.exceptions.RayActorError as error:
            self._engine_died(stream)
            raise NotReady(f"engine {stream.engine_index} on node {stream.node} is gone: {error}") from error
        finally:
            stream.cancel()
            self._in_flight[stream.engine_index] -= 1

    def _engine_died(self, stream: TokenStream) -> None:
        """`stream`'s engine died: not picked again until re-created."""
        if self._handles[stream.engine_index] is stream.engine:  # not re-created meanwhile
            self._gone.add(stream.engine_index)
        log.warning("engine %d on node %d is gone; later requests go to the other engines", stream.engine_index,
                    stream.node)

    async def _failover(self, stream: TokenStream) -> bool:
        """`stream`'s engine died before its first token: move it to another engine, if one is up."""
        self._engine_died(stream)
        try:
            engine = self._pick_engine()
        except ServingError:
            return False
        self._in_flight[stream.engine_index] -= 1
        self._in_flight[engine] += 1
        stream.move(self.runtime.engines[engine], self._pollers[engine], engine,
                    self.runtime.plan.topology.node_of_engine(engine))
        return True

    async def placement(self) -> tuple[int, Plan]:
        if self.store is None:
            return self.runtime.epoch, self.runtime.plan
        active = await asyncio.to_thread(self.store.active_plan)
        if active is None:  # the store lost its state (a Redis restart without persistence)
            return 0, self.runtime.plan
        plan, epoch = active
        return epoch, plan

    async def snapshot(self) -> Snapshot:
        (stats, _), per_engine = await asyncio.gather(self._statistics(), self._ask_engines("traffic"))
        per_engine = [counters for counters in per_engine if counters is not None]
        none = TrafficCounters(self.runtime.plan.topology.node_of_gpu, 0).to_dict()  # while no engine is up
        traffic = {**merge_traffic(per_engine or [none]), "engines": per_engine}
        by, size = self._store_window()
        window_s, window_tokens = (0.0, 0.0) if self.store is None else (size, 0.0) if by == "time" else (0.0, size)
        return Snapshot(stats, traffic, expected_balancedness(self.runtime.plan, stats.load), window_s,
                        window_tokens)

    def _store_window(self) -> tuple[WindowBy, float]:
        """How the store's windows are cut: by tokens when `stats_window_tokens` is set, else by time."""
        if self.stats_window_tokens is not None:
            return "tokens", self.stats_window_tokens
        return "time", self.stats_window_s

    async def _statistics(self, planning: bool = False) -> tuple[RoutingStats, Memory | None]:
        """What snapshots read (and, with `planning`, proposals): the windows of `_windows`, decayed by
        the memory `planning_stats` chooses (with `resampled_windows` and `planning`, that many windows
        drawn from their runs). Also `(windows, decay)`: how many windows were merged, each older one
        weighted `decay`; no load and None when nothing was published."""
        return self._merged(await self._windows(planning), planning)

    async def _windows(self, planning: bool) -> list[RoutingStats]:
        """The statistics windows, newest first: without a store, the statistics since loading (one
        window); with one, its newest window (by tokens when configured, else by time), or for planning
        its last `planning_windows`, each with its runs of `balance_tokens`."""
        if self.store is None:  # the engines up now (one gone is left out)
            live = [stats for stats in await self._ask_engines("routing_stats") if stats is not None]
            return [merge_engine_stats(live)] if live else []
        by, size = self._store_window()
        count, pieces = (self.planning_windows, self.balance_tokens) if planning else (1, None)
        return await asyncio.to_thread(self.store.windows, by, size, count, None, pieces)

    def _merged(self, windows: list[RoutingStats], planning: bool) -> tuple[RoutingStats, Memory | None]:
        """`_statistics` of `windows` (newest first)."""
        if not windows:
            return RoutingStats.from_load(np.zeros((self.model.num_layers, self.model.num_experts)), 0.0), None
        resampled = self.resampled_windows if planning else None
        stats, memory = planning_stats(windows[::-1], (self.stats_history, self.stats_decay), self.adaptive_memory,
                                       resampled)
        if planning:
            log.info("planning on %s (%d window(s) read)", memory_text(memory_dict(memory, self._resampling())),
                     len(windows))
        return stats, memory

    def _resampling(self) -> Resampling | None:
        """`(windows, run_tokens)` a rebalance draws to plan on (`--resampled-windows`), or None."""
        return None if self.resampled_windows is None else (self.resampled_windows, self.balance_tokens)

    async def rebalance(self, dry_run: bool, policy: str, max_moves: int | None, plan: Plan | None = None,
                        expected_epoch: int | None = None, by: str = "admin") -> RebalanceOutcome:
        if plan is not None:  # applied whole: policy and max_moves only shape planning
            policy, max_moves = "given", None
        if dry_run:
            epoch = check_epoch(await self._dry_run_epoch(), expected_epoch)
            return RebalanceOutcome(epoch, await self._proposal(policy, max_moves, plan), None)
        return await self._apply("rebalance", by, policy, lambda: self._proposal(policy, max_moves, plan),
                                 expected_epoch)

    async def rollback(self, dry_run: bool = False, by: str = "admin") -> RebalanceOutcome:
        async def proposal() -> Proposal:
            return await self._proposal("rollback", None, await self.applier.previous_plan())

        if dry_run:
            return RebalanceOutcome(await self._dry_run_epoch(), await proposal(), None)
        return await self._apply("rollback", by, "rollback", proposal, None)

    async def engine_epochs(self) -> list[int]:
        """0 for an engine that is gone (being re-created)."""
        return [epoch or 0 for epoch in await self._ask_engines("epoch")]

    async def active_batches(self) -> list[int]:
        return [batch or 0 for batch in await self._ask_engines("active_batch")]

    async def _ask_engines(self, method: str) -> list[Any]:
        """Every engine's answer to `method()`, in engine order; None from an engine that is gone."""
        answers = await asyncio.gather(*[getattr(engine, method).remote() for engine in self.runtime.engines],
                                       return_exceptions=True)
        for index, answer in enumerate(answers):
            if isinstance(answer, ray.exceptions.RayActorError):
                log.warning("engine %d is gone; left out of %s", index, method)
            elif isinstance(answer, BaseException):
                raise answer
        return [None if isinstance(answer, BaseException) else answer for answer in answers]

    async def events(self, limit: int) -> list[dict[str, Any]]:
        return [] if self.store is None else await asyncio.to_thread(self.store.events, limit)

    async def close(self) -> None:
        await self.applier.wait()
        self.applier.stop_observing()

    async def _apply(self, kind: str, by: str, policy: str, proposal: Callable[[], Awaitable[Proposal]],
                     expected_epoch: int | None) -> RebalanceOutcome:
        """Plan and apply under the one-rebalance lock, from the active epoch read first (`PlanApplier.run`)."""
        return await self.applier.run(kind, by, policy, expected_epoch, proposal)

    async def _dry_run_epoch(self) -> int:
        epoch, _ = await self.placement()
        return epoch

    async def _proposal(self, policy: str, max_moves: int | None, plan: Plan | None) -> Proposal:
        """From the served plan (`runtime.plan`) to `policy`'s plan on the window, or to `plan`."""
        by, size = self._store_window()
        where = ("since loading" if self.store is None else f"in the last {size * self.planning_windows:g} s"
                 if by == "time" else "in the state store")
        windows = await self._windows(planning=True)
        stats, memory = self._merged(windows, planning=True)
        priced = plan is None and self.feedback is not None and applies_to(policy)
        level = await self._feedback_level(windows[0] if windows else None) if priced else None
        options = {} if level is None else self.feedback.feedback.options(level)
        proposal = await asyncio.to_thread(plan_proposal, stats, self.runtime.plan, self.cluster, policy, max_moves,
                                           plan, where, options)
        if level is not None and proposal.proposed != self.runtime.plan:  # what the next rebalance compares with
            baseline = await asyncio.to_thread(get_policy(BASELINE).place, stats, self.runtime.plan.topology)
            await asyncio.to_thread(self.feedback.remember, PricedPlan(proposal.proposed, level, baseline))
        return dataclasses.replace(proposal, memory=memory, resampled=None if memory is None else self._resampling(),
                                   feedback_level=level)

    async def _feedback_level(self, newest: RoutingStats | None) -> int:
        """The level the next plan's overload is priced at (`cluster.rebalance.feedback`): the plan in
        service's, moved by its balance against its EPLB plan's on the traffic it has served
        (`_served_window`; without a store, `newest`, the statistics since loading)."""
        served = newest if self.store is None else await asyncio.to_thread(self._served_window)
        return await asyncio.to_thread(self.feedback.next_level, self.runtime.plan, served, self.cluster)

    def _served_window(self) -> RoutingStats | None:
        """The store's newest window less its entries stamped before the plan in service was applied
        (where the store's active plan is it): a rebalance sooner than a window after the last one
        judges that plan on its own traffic, not on its predecessor's. None while it has served none."""
        history = self.store.plan_history(1)
        since = history[0][2] if history and history[0][1] == self.runtime.plan else None
        by, size = self._store_window()
        return self.store.window(by, size, since=since)

    async def cluster_info(self) -> dict[str, Any]:
        topology = self.runtime.plan.topology
        nodes = [node for node in await asyncio.to_thread(ray.nodes) if node["Alive"]][:topology.num_nodes]
        return {
            "nodes": [{"index": i, "ray_node_id": node["NodeID"], "address": node.get("NodeManagerAddress", "")}
                      for i, node in enumerate(nodes)],
            "engines": [{"index": e, "node": topology.node_of_engine(e)} for e in range(len(self.runtime.engines))],
            "workers": [{"index": g, "node": int(node)} for g, node in enumerate(topology.node_of_gpu)],
            "device": self.runtime.device,
        }


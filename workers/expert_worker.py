"""`ExpertWorker`: the Ray actor body that holds one GPU's (or CPU slot's) experts for every layer.

The class is plain Python so that it can be tested without Ray; `switchyard.cluster.runtime.runtime` wraps it
with `ray.remote` and pins it to its node. It reads only its own experts from the checkpoint, and
`load` swaps them for another set (another plan or model) without starting a new process.

Live migration (`switchyard.cluster.runtime.migration`) keeps experts per plan epoch: `stage` builds the
next epoch's slots from this worker's current experts and weights copied from other workers
(`export_slots`), engines name the epoch in every `forward`, so both epochs serve while engines switch
one by one, and `commit` then drops the old epoch (or `discard` the new one when the migration fails).
The runtime runs these in a second actor thread beside `forward`; they only add or drop whole epochs
(one dict operation each under the GIL), never change an epoch `forward` may be using.

Engines reach `forward` through the worker's channel (`channel.ChannelServer`, started on the first
`channel_address`): shared memory from its node, TCP to its node's IP from other nodes;
`forward_numpy` serves the Ray transport (`transport="ray"`).
Exports go one of two ways (`migration._stage_calls` picks per source and target): to a worker on
the same machine through shared memory (`export_shared`, `slot_transfer`), to one on another machine
as numpy arrays, which Ray's object store moves without pickling (`export_slots`).

Memory: with the vllm kernel a worker holds its experts three times, the plain weights (one memfd per
slot, what exports hand out and a worker on this machine maps without a copy), the packed layers the
kernel reads, and one spare of each packed layer, written at load, that a migration packs the new
epoch into (a committed migration's dropped layers become the next spares).
New memory faults in every page on first touch, which made building the new epoch ~7x slower than
writing into memory already in place (docs/runtime.md, *The copy path*).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from switchyard.workers.channel import ChannelAddress, ChannelServer
from switchyard.workers.checkpoints import load_spec, read_experts
from switchyard.workers.combiner import WINDOW_S
from switchyard.workers.expert_compute import ExpertCompute
from switchyard.workers.slot_transfer import SharedSlots, SlotPair, export, host_identity, read_shared, shared

SlotWeights = tuple[np.ndarray, np.ndarray]  # (gate_up [2F, H], down [H, F]) float32 of one slot


class ExpertWorker:
    """The experts of one worker's slots, per plan epoch.

    experts: `[L, S]` int64, the logical expert id held by each of this worker's slots, per layer
        (`Plan.gpu_experts[:, g]`).  device: "cpu" or "cuda" (the runtime asks for a GPU for the latter).
    epoch: the plan epoch these experts serve.  combine_window_s: how long a call waits for other
    engines' calls of the same layer (`combiner.CallCombiner`; 0: never waits).
    """

    def __init__(self, model_dir: str, experts: np.ndarray, device: str = "cpu", epoch: int = 1,
                 kernel: str = "auto", threads: int | None = None, combine_window_s: float = WINDOW_S) -> None:
        if threads is not None:  # the runtime sets it: workers and engines share the machine's cores
            torch.set_num_threads(threads)
        self.kernel, self.combine_window_s = kernel, combine_window_s
        self.load(model_dir, experts, device, epoch)
        self._channel: ChannelServer | None = None
        self._shared_exports: dict[int, list[list[SlotPair]]] = {}  # migration epoch -> slots held for its targets

    def channel_address(self) -> ChannelAddress:
        """The channel's addresses (`channel.ChannelServer`, started on first ask), its TCP socket on
        this Ray node's IP (127.0.0.1 outside Ray)."""
        if self._channel is None:
            self._channel = ChannelServer(self.forward, _node_ip(), self.combine_window_s)
        return self._channel.address

    def load(self, model_dir: str, experts: np.ndarray, device: str = "cpu", epoch: int = 1) -> None:
        """Replace every held expert with `experts` of `model_dir` (the process and its imports stay)."""
        self.computes: dict[int, ExpertCompute] = {}  # drop the old experts before reading the new ones
        self._spare_packed: list[torch.Tensor] = []  # layers for a migration to pack into (`_keep_spares`)
        self.experts: dict[int, np.ndarray] = {}
        self.busy_seconds = 0.0  # time spent in `forward` since loading (profiling)
        spec = load_spec(model_dir)
        experts = np.asarray(experts, dtype=np.int64)
        assert experts.shape[0] == spec.num_layers, "one row of slot experts per MoE layer"
        weights = [read_experts(spec, layer, row.tolist()) for layer, row in enumerate(experts)]
        self.computes[epoch] = ExpertCompute([w[0] for w in weights], [w[1] for w in weights],
                                             spec.config.hidden_act, device, self.kernel)
        self.experts[epoch] = experts
        self.epoch = epoch  # the newest committed epoch
        # One spare of every packed layer, written now so that its pages are in place: the first
        # migration then writes into them as fast as later ones do into a dropped epoch's layers.
        self._spare_packed = [torch.zeros_like(tensor) for pair in self.computes[epoch].packed for tensor in pair]

    def forward(self, layer: int, hidden: torch.Tensor, local_slots: torch.Tensor,
                weights: torch.Tensor, epoch: int) -> torch.Tensor:
        """One layer for the tokens routed here under plan `epoch`; see `ExpertCompute.forward` for shapes."""
        compute = self.computes.get(epoch)
        if compute is None:
            raise KeyError(f"this worker holds epochs {sorted(self.computes)}, not {epoch}")
        start = time.perf_counter()
        output = compute.forward(layer, hidden, local_slots, weights)
        self.busy_seconds += time.perf_counter() - start
        return output

    def forward_numpy(self, layer: int, hidden: np.ndarray, local_slots: np.ndarray, weights: np.ndarray,
                      epoch: int) -> tuple[np.ndarray, float]:
        """`forward` on numpy arrays (the Ray transport's call); also returns the compute seconds."""
        start = time.perf_counter()
        output = self.forward(layer, torch.from_numpy(hidden), torch.from_numpy(local_slots),
                              torch.from_numpy(weights), epoch)
        return output.numpy(), time.perf_counter() - start

    def export_slots(self, slots: list[tuple[int, int]]) -> list[SlotWeights]:
        """The weights of `(layer, slot)` of the committed epoch, in order (the source side of a copy)."""
        compute = self.computes[self.epoch]
        return [tuple(w.numpy() for w in compute.slot_weights(layer, slot)) for layer, slot in slots]

    def lower_thread_priority(self) -> None:
        """Run the calling thread only when a core would otherwise idle (Linux `SCHED_IDLE`; the policy is
        per thread). The runtime calls it once in the migration thread, so a live migration's copies
        and packing yield the cores to `forward`, which keeps its own thread, and to the engines.

        Measured on 2 shared cores under load (4 clients, 2 engines, 4 workers; engine steps/s while the
        workers stage a ~660 MiB migration, ~26 steady): 11-19 at normal priority, 16-26 under
        `SCHED_IDLE`, whose stage then takes 0.7-1.4 s instead of 0.45-1.1 s; nice 19 instead still
        gave the copies their share (docs/runtime.md, *Serving first*)."""
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))

    def host(self) -> str:
        """This worker's machine (`slot_transfer.host_identity`): exports to a worker with the same one go
        through shared memory."""
        return host_identity()

    def export_shared(self, epoch: int, slots: list[tuple[int, int]]) -> SharedSlots:
        """`export_slots` for a worker on this machine: where the weights are in shared memory (from load
        on, `slot_transfer.shared`) the target maps them as they are, no copy; the slots stay held for
        the migration to `epoch` until it is committed or discarded here (`slot_transfer.export`)."""
        compute = self.computes[self.epoch]
        descriptor, held = export([compute.slot_weights(layer, slot) for layer, slot in slots])
        self._shared_exports.setdefault(epoch, []).append(held)
        return descriptor

    def stage(self, epoch: int, experts: np.ndarray, targets: list[list[tuple[int, int]]],
              *copied: list[SlotWeights] | SharedSlots) -> int:
        """Hold `experts` `[L, S]` for `epoch` beside the committed epoch; returns the bytes received.

        targets[i]: the `(layer, slot)` that `copied[i]` fills, in order: one `export_slots` result
        (passed as an ObjectRef so Ray moves it from the source worker to here) or one `export_shared`
        result (read from the source's shared memory). Every other slot must keep the committed epoch's
        expert (`migration.plan_migration` aligns plans so that it does).
        """
        copied = tuple(_received(batch) for batch in copied)
        experts = np.asarray(experts, dtype=np.int64)
        current = self.experts[self.epoch]
        assert experts.shape == current.shape, f"staged experts {experts.shape} != held {current.shape}"
        replaced = {target: weights for slots, weights in zip(targets, copied, strict=True)
                    for target, weights in zip(slots, weights, strict=True)}
        changed = experts != current
        assert {tuple(index) for index in np.argwhere(changed).tolist()} <= set(replaced), \
            "every slot whose expert changes needs copied weights"
        self.computes[epoch] = self.computes[self.epoch].replaced(replaced, self._spare_packed)
        self.experts[epoch] = experts
        return sum(gate_up.nbytes + down.nbytes for gate_up, down in replaced.values())

    def commit(self, epoch: int) -> None:
        """Make the staged `epoch` the committed one and drop every other epoch's experts."""
        if epoch not in self.computes:
            raise KeyError(f"this worker holds epochs {sorted(self.computes)}, not {epoch}")
        kept = self.computes[epoch]
        for dropped in self.computes.values():
            if dropped is not kept:
                self._keep_spares(dropped.released(kept))
        self.computes = {epoch: kept}
        self.experts = {epoch: self.experts[epoch]}
        self.epoch = epoch
        for exported in list(self._shared_exports):
            self._close_exports(exported)

    def discard(self, epoch: int) -> None:
        """Drop a staged `epoch` (a failed migration); the committed epoch stays. No-op if absent."""
        if epoch != self.epoch and epoch in self.computes:
            self._keep_spares(self.computes.pop(epoch).released(self.computes[self.epoch]))
            self.experts.pop(epoch, None)
        self._close_exports(epoch)

    def _keep_spares(self, tensors: list[torch.Tensor]) -> None:
        """Keep packed layers of a dropped epoch for the next migration to write into, at most one set
        (as many as the committed epoch has): a worker then holds up to twice its packed experts."""
        self._spare_packed = (tensors + self._spare_packed)[:2 * len(self.computes[self.epoch].packed)]

    def _close_exports(self, epoch: int) -> None:
        """Stop holding the slots exported for the migration to `epoch` (its targets have mapped them or
        failed): their memory goes with the last process that maps them."""
        self._shared_exports.pop(epoch, None)

    def held_epochs(self) -> list[int]:
        return sorted(self.computes)

    def slot_experts(self) -> list[list[int]]:
        """`[L, S]` experts of the committed epoch (what this worker serves)."""
        return self.experts[self.epoch].tolist()

    def timings(self) -> dict[str, float]:
        return {"busy_seconds": self.busy_seconds}

    def kernel_name(self) -> str:
        """The expert kernel in use ("vllm" or "torch", see `expert_compute`)."""
        return self.computes[self.epoch].kernel


def _node_ip() -> str:
    """This Ray node's IP address (what other nodes reach it at), 127.0.0.1 in a process without Ray."""
    import ray  # only inside a Ray actor; tests use the class without Ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def _received(batch: list[SlotWeights] | SharedSlots) -> list[SlotPair]:
    """One export's slots as tensors this worker may keep, in shared memory: the source's memory mapped
    as it is (no copy), or arrays from Ray's object store copied out of it (they are read-only views
    that would pin the object) into memfds of this worker's own."""
    if isinstance(batch, SharedSlots):
        return read_shared(batch)
    return [shared(gate_up, down) for gate_up, down in batch]

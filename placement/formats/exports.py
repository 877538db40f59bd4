"""A plan in an engine's own format: SGLang's `--init-expert-location`, vLLM's EPLB map, TensorRT-LLM's YAML."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.placement.errors import PlacementError
from switchyard.placement.formats.files import file_errors
from switchyard.placement.plan import Plan

EXPORT_FORMATS = ("sglang", "vllm", "trtllm")


def export_plan(plan: Plan, fmt: str, path: str | Path, *, first_moe_layer: int = 0) -> None:
    """Write `plan` in an engine's own format: "sglang" / "vllm" (JSON), "trtllm" (YAML).

    first_moe_layer: the decoder layer number of MoE layer 0, for engines that number all decoder
        layers (SGLang, TensorRT-LLM); e.g. 1 for DeepSeek-V2-Lite, 3 for DeepSeek-V3. vLLM numbers
        MoE layers only and ignores it.
    """
    if fmt not in EXPORT_FORMATS:
        raise PlacementError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "sglang":
        text = json.dumps(to_sglang(plan, first_moe_layer)) + "\n"
    elif fmt == "vllm":
        text = json.dumps(to_vllm(plan)) + "\n"
    else:
        text = trtllm_yaml(to_trtllm(plan, first_moe_layer))
    path = Path(path)
    with file_errors(path, "write"):
        path.write_text(text)


def to_sglang(plan: Plan, first_moe_layer: int = 0) -> dict[str, Any]:
    """SGLang's `--init-expert-location` JSON: `{"physical_to_logical_map": [layers][P]}`.

    SGLang (`srt/eplb/expert_location.py`, `compute_initial_expert_location_metadata`) passes the
    file's keys to `ExpertLocationMetadata.init_by_mapping(**data)`, so this is the only key. Its map
    has a row per decoder layer (`num_hidden_layers`), so the `first_moe_layer` dense layers get the
    trivial row (slot p holds expert p % E). Launch with `--ep-size` = G and
    `--ep-num-redundant-experts` = P - E; SGLang puts slot p on GPU p // (P / G), as the plan does.
    """
    _check_first_moe_layer(first_moe_layer)
    trivial = np.arange(plan.num_physical_experts) % plan.num_logical_experts
    rows = [trivial.tolist()] * first_moe_layer + plan.physical_to_logical.tolist()
    return {"physical_to_logical_map": rows}


def to_vllm(plan: Plan) -> dict[str, Any]:
    """vLLM's EPLB state for the plan (names and shapes of `EplbModelState`, vllm
    `distributed/eplb/eplb_state.py`), rows per MoE layer as vLLM counts them.

    physical_to_logical_map `[L, P]`; logical_to_physical_map `[L, E, R]`, -1 padded (vLLM pads R to
    its own capacity on load); logical_replica_count `[L, E]`; plus ep_size (G) and
    num_redundant_experts (P - E) for `--enable-eplb`. vLLM's per-rank `expert_map` is left out: with
    EPLB it maps global slot ids to local ones, slots p // S == rank, the same for every plan.
    """
    return {
        "physical_to_logical_map": plan.physical_to_logical.tolist(),
        "logical_to_physical_map": plan.logical_to_physical.tolist(),
        "logical_replica_count": plan.replica_count.tolist(),
        "ep_size": plan.topology.num_gpus,
        "num_redundant_experts": plan.num_physical_experts - plan.num_logical_experts,
    }


def to_trtllm(plan: Plan, first_moe_layer: int = 0) -> dict[str, Any]:
    """TensorRT-LLM's `moe_config.load_balancer` file (`MoeLoadBalancerConfig`, tensorrt_llm
    `llmapi/llm_args.py`; examples/wide_ep/ep_load_balancer/README.md): `num_slots` (P),
    `initial_global_assignments` {decoder layer index: expert id of each slot} and
    `layer_updates_per_iter` 0 (static placement). Run with EP size G: every successive P / G slots
    go to one rank, as in the plan.
    """
    _check_first_moe_layer(first_moe_layer)
    rows = plan.physical_to_logical.tolist()
    assignments = {first_moe_layer + layer: row for layer, row in enumerate(rows)}
    return {"num_slots": plan.num_physical_experts, "initial_global_assignments": assignments,
            "layer_updates_per_iter": 0}


def _check_first_moe_layer(first_moe_layer: int) -> None:
    if isinstance(first_moe_layer, bool) or not isinstance(first_moe_layer, int) or first_moe_layer < 0:
        raise PlacementError(f"first_moe_layer must be a non-negative integer, got {first_moe_layer!r}")


def trtllm_yaml(config: Mapping[str, Any]) -> str:
    """`to_trtllm`'s dict as YAML, lists in flow style like TensorRT-LLM's `generate_eplb_config.py`.

    Written by hand: three keys of ints and int lists need no YAML library.
    """
    lines = [f"num_slots: {int(config['num_slots'])}",
             f"layer_updates_per_iter: {int(config['layer_updates_per_iter'])}",
             "initial_global_assignments:"]
    lines += [f"  {int(layer)}: [{', '.join(str(int(e)) for e in row)}]"
              for layer, row in config["initial_global_assignments"].items()]
    return "\n".join(lines) + "\n"

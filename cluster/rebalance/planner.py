"""What a rebalance plans: the proposal from the served plan on the statistics window, with the model's
sizes in the hardware preset. Planning itself is `placement.proposal`; this module adds the model and
turns the library's errors into the gateway's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from switchyard.cluster.errors import FailedPrecondition, InvalidRequest, InvalidSetting
from switchyard.cluster.settings import DEFAULTS
from switchyard.placement.cost import ClusterSpec
from switchyard.placement.cost import preset as cluster_preset
from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan
from switchyard.placement.proposal import Proposal, evaluate_proposal, propose
from switchyard.placement.stats import RoutingStats
from switchyard.workers.checkpoints import ModelSpec

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def model_cluster(spec: ModelSpec, preset: str = DEFAULTS.cluster_preset) -> ClusterSpec:
    """The hardware preset with the model's sizes: what a rebalance's layer time and copy bytes use, and
    what affinity plans for. `InvalidSetting` for an unknown preset, naming the choices."""
    hardware = cluster_preset(preset, InvalidSetting)
    config = spec.config
    intermediate = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    settings = vars(config)  # not getattr: transformers' `torch_dtype` property warns that it is deprecated
    dtype = str(settings.get("dtype") or settings.get("torch_dtype") or "bfloat16").removeprefix("torch.")
    return dataclasses.replace(hardware, name=f"{preset} ({spec.family.name})",
                               hidden_size=spec.hidden_size, moe_intermediate_size=int(intermediate),
                               dtype_bytes=_DTYPE_BYTES.get(dtype, 2))


def plan_proposal(stats: RoutingStats, current: Plan, cluster: ClusterSpec, policy: str, max_moves: int | None,
                  plan: Plan | None, where: str, options: Mapping[str, object] | None = None) -> Proposal:
    """From `current` to `policy`'s plan (with more of its `options`) on `stats`, or to `plan`, which needs
    no statistics (without any, its figures are those of no load). `FailedPrecondition` when planning has no statistics (`where`
    says which window was empty), `InvalidRequest` for a bad policy, budget or plan."""
    try:
        if plan is not None:
            return evaluate_proposal(stats, current, plan, cluster, policy)
        if not stats.num_tokens > 0:
            raise FailedPrecondition(f"no routing statistics {where}: serve some requests, then rebalance")
        return propose(stats, current, policy, max_moves, cluster, options)
    except PlacementError as error:
        raise InvalidRequest(str(error)) from None

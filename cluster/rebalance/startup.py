"""Which plan a starting gateway serves, and recording it: the startup half of the rebalancer's loop.

A restarted gateway resumes the store's active plan when it fits (what the last rebalance left);
otherwise the plan it was given is served, and recorded as epoch 1 when the store has none.
"""

from __future__ import annotations

import json
import logging

from switchyard.cluster.state.store import PlanConflict, StateStore
from switchyard.placement.errors import PlacementError
from switchyard.placement.plan import Plan

log = logging.getLogger(__name__)


def resumed_plan(store: StateStore, default: Plan) -> Plan:
    """The store's active plan when it fits the model and topology of `default` (a restarted gateway
    resumes what the rebalancer left), else `default`."""
    active = store.active_plan()
    if active is None:
        return default
    plan, epoch = active
    try:
        default.topology.check_same(plan.topology, "the active plan")
        plan.check_matches(default.num_layers, default.num_logical_experts, "the model")
    except PlacementError:
        return default
    log.info("serving the state store's active plan, epoch %d", epoch)
    return plan


def record_serving_plan(store: StateStore, plan: Plan) -> int:
    """Record `plan` as the active plan (epoch 1) when `store` has none; returns the active epoch.

    When a plan is active already (an earlier run, or another gateway of the deployment) it stays as
    it is, and a plan other than `plan` is logged as a warning: switching the served plan live is the
    rebalancer's job, not the start's.
    """
    active = store.active_plan()
    if active is None:
        try:
            epoch = store.set_active_plan(plan, 0)
            log.info("recorded the served plan as the active plan, epoch %d", epoch)
            return epoch
        except PlanConflict:  # another gateway of the deployment recorded one meanwhile
            active = store.active_plan()
            assert active is not None, "a plan conflict at epoch 0 means a plan is active"
    active_plan, epoch = active
    if json.dumps(active_plan.to_dict()) == json.dumps(plan.to_dict()):
        log.info("the served plan is the active plan, epoch %d", epoch)
    else:
        log.warning("the state store's active plan (epoch %d) differs from the plan served here; serving "
                    "this one, which GetPlacement does not report (rebalance to make them agree)", epoch)
    return epoch

"""The placement policies and their registry.

`POLICIES` maps a policy's name to its factory (the class; keyword options go to its constructor).
The CLI's `--policy` choices come from it, so registering a policy is one line here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from switchyard.placement.cost import ClusterSpec
from switchyard.placement.errors import PlacementError
from switchyard.placement.policies.affinity import AffinityPolicy
from switchyard.placement.policies.base import Policy
from switchyard.placement.policies.eplb import EplbPolicy
from switchyard.placement.policies.linear import LinearPolicy
from switchyard.placement.policies.round_robin import RoundRobinPolicy

__all__ = ["DEFAULT_POLICY", "POLICIES", "Policy", "get_policy", "planning_policy", "policy_names", "policy_options"]

POLICIES: dict[str, Callable[..., Policy]] = {
    LinearPolicy.name: LinearPolicy,
    RoundRobinPolicy.name: RoundRobinPolicy,
    EplbPolicy.name: EplbPolicy,
    AffinityPolicy.name: AffinityPolicy,
}

DEFAULT_POLICY = AffinityPolicy.name
"""What a rebalance plans with when it names no policy (the CLI, the gateway, automatic mode)."""


def policy_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(POLICIES)


def policy_options(name: str) -> list[str]:
    """The options the policy registered as `name` accepts (e.g. "cluster" where it plans for one)."""
    return list(inspect.signature(POLICIES[name]).parameters)


def get_policy(name: str, **options: object) -> Policy:
    """The policy registered as `name`, built with `options`; `PlacementError` for an unknown name
    or option, naming the choices."""
    factory = POLICIES.get(name)
    if factory is None:
        raise PlacementError(f"unknown policy {name!r}; choose one of {', '.join(policy_names())}")
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        choices = ", ".join(accepted) or "none"
        raise PlacementError(
            f"policy {name!r} takes no option(s) {', '.join(unknown)}; its options: {choices}"
        )
    return factory(**options)


def planning_policy(name: str, cluster: ClusterSpec | None = None, **options: object) -> Policy:
    """`get_policy(name, **options)`, given `cluster` where it plans for one (`affinity` prices a remote
    node and a pick above its load cap by it, so it minimises that cluster's modelled layer time);
    the others plan as they always do."""
    if cluster is not None and name in POLICIES and "cluster" in policy_options(name):
        options = {**options, "cluster": cluster}
    return get_policy(name, **options)

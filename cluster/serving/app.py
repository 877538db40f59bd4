"""The application builder Serve configs name (`switchyard.cluster.serve_app:app`).

`app(args)` checks the arguments (`AppArgs`) and binds the graph: the `ExpertPool` (workers and
registry), the `EngineReplica` deployment (`nodes * engines_per_node` replicas, each asking for
`1/engines_per_node` of a node's `switchyard_node` resource, so that many land on each node) and the
`GatewayReplica` ingress (`gateways` replicas, one per `switchyard_gateway` resource). Nothing starts
here: the builder runs where Serve imports it (KubeRay's submission, `serve.run`), the replicas
start the actors.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve import Application

from switchyard.cluster.runtime.runtime import NODE_RESOURCE
from switchyard.cluster.serving.args import AppArgs
from switchyard.cluster.serving.engines import EngineReplica
from switchyard.cluster.serving.experts import ExpertPool
from switchyard.cluster.serving.gateway import GatewayReplica

APP_NAME = "switchyard"
"""The application's name (the chart's default `serve.applicationName`, `switchyard serve --ray-serve`'s)."""


def app(args: dict[str, Any]) -> Application:
    """The Switchyard Serve application for `args` (docs/kubernetes.md, "The Serve application contract")."""
    parsed = AppArgs.parse(dict(args))
    raw = dict(args)
    pool = ExpertPool.bind(raw)
    share = math.floor(10_000 / parsed.engines_per_node) / 10_000  # Ray keeps 4 decimals; the shares fit in 1
    engines = EngineReplica.options(
        num_replicas=parsed.nodes * parsed.engines_per_node,
        ray_actor_options={"num_cpus": 0, "resources": {NODE_RESOURCE: share}}).bind(pool, raw)
    return GatewayReplica.options(num_replicas=parsed.gateways).bind(pool, engines, raw)

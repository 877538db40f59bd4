"""Expert placement for Mixture-of-Experts serving: pure numpy, no Ray, no I/O outside `formats`.

Glossary (dimension names used in every shape comment of this package):
    L  MoE layers.                      E  logical experts per layer (the model's experts).
    P  physical experts (slots) per layer: every slot holds one replica of one logical expert.
    N  nodes.  G  GPUs (expert workers), N * gpus_per_node.  S  slots per GPU, P = G * S.
    T  tokens.  k  experts each token picks per layer (top-k).  R  most replicas of one expert.
    logical expert    an expert of the model, id in [0, E).
    physical expert   a slot, id in [0, P); slot p lives on GPU p // S, GPU g on node g // gpus_per_node.
    redundant expert  a slot beyond the first E: a second (third, ...) replica of some expert.

Worked example: 64 experts on 2 nodes x 4 GPUs with 9 slots per GPU gives P = 72 slots per layer, so
8 slots hold redundant replicas; `Plan.physical_to_logical[l]` lists the 72 expert ids, GPU 0 holding
slots 0..8 and node 1 holding GPUs 4..7.
"""

from switchyard.placement.errors import PlacementError
from switchyard.placement.evaluate import Evaluation, evaluate
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy, policy_names
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace

__all__ = [
    "Evaluation",
    "PlacementError",
    "Plan",
    "RoutingStats",
    "RoutingTrace",
    "Topology",
    "evaluate",
    "get_policy",
    "policy_names",
]

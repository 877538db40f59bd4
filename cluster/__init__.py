"""The serving cluster, in sub-packages that follow the data flow (docs/architecture.md):

    engine/        one batched forward per step, expert dispatch, sampling, routing recorder
    runtime/       the Ray actors of one served model, live migration
    gateway/       the gRPC front door: server, servicer, status codes, auth, backend, streaming, client
    state/         the state store (embedded, Redis), the statistics publisher
    rebalance/     planning on the window, applying live, startup plan, automatic mode
    cli/           the `switchyard` command
    integrations/  the affinity policy behind vLLM's EPLB interface
    settings.py    every default and environment variable;  errors.py  the error base and its mappings
    periodic.py    the background loop of the dashboard's sampler and of automatic rebalance

What users import is below; it is loaded on first use, so `import switchyard.cluster` stays cheap (no
Ray, gRPC or torch until asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Client", "Runtime", "open_state_store"]

_WHERE = {
    "Client": "switchyard.cluster.gateway.client",
    "Runtime": "switchyard.cluster.runtime.runtime",
    "open_state_store": "switchyard.cluster.state.store",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)

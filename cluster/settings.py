"""Every default of the serving cluster and every environment variable, in one settings object.

`DEFAULTS` holds the defaults; the CLI's options, `GatewayConfig`, `RuntimeBackend`, `PlanApplier`,
`AutoRebalanceSettings` and `StatsPublisher` take theirs from it. The environment is read only when
a function here is called (`Settings.from_env`, `state_store_url`), never at import time, so a test or
a process that sets a variable before calling sees it.

    SWITCHYARD_REDIS_URL     the state store (`redis://HOST:PORT[/DB]`) when `--redis` is not given
    SWITCHYARD_TOKEN         the gateway's bearer token (`serve --token`, the client commands' `--token`)
    SWITCHYARD_ADMIN_TOKEN   the token admin calls need (`serve --admin-token`)
    SWITCHYARD_TLS_CA        the CA of a TLS gateway (`placement show/rebalance/rollback --tls-ca`)
    SWITCHYARD_RAY_CONNECT_TIMEOUT  seconds `serve --address` waits for the Ray head to answer (30)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from switchyard.cluster.errors import InvalidSetting
from switchyard.placement.windows import ADAPTIVE_MEMORY, BALANCE_FEEDBACK, PLANNING_DECAY, PLANNING_HISTORY

REDIS_URL_ENV = "SWITCHYARD_REDIS_URL"
TOKEN_ENV = "SWITCHYARD_TOKEN"
ADMIN_TOKEN_ENV = "SWITCHYARD_ADMIN_TOKEN"
TLS_CA_ENV = "SWITCHYARD_TLS_CA"
RAY_CONNECT_TIMEOUT_ENV = "SWITCHYARD_RAY_CONNECT_TIMEOUT"


@dataclass(frozen=True)
class Settings:
    """The cluster's defaults (seconds in `_s` fields); `from_env` adds the environment's values."""

    # the gateway
    host: str = "127.0.0.1"
    port: int = 50051
    max_queue_per_engine: int = 64  # requests in flight per engine before RESOURCE_EXHAUSTED
    max_batch_requests: int = 64  # prompts in one GenerateBatch
    max_message_bytes: int = 16 * 1024 * 1024
    grace_s: float = 10.0  # how long a drain waits for in-flight calls
    max_new_tokens: int = 16  # when a request names none
    poll_timeout_s: float = 0.5  # how long one `Engine.poll` waits for a token
    # statistics and rebalancing
    stats_interval_s: float = 5.0  # between two statistics entries of the engines in the store
    stats_window_s: float = 60.0  # what GetStats reports; rebalances plan on the last `stats_history`
    stats_history: int = PLANNING_HISTORY  # windows, each older one weighted by `stats_decay`
    stats_decay: float = PLANNING_DECAY
    adaptive_memory: bool = ADAPTIVE_MEMORY  # or a longer memory, whichever forecasts the past windows best
    balance_feedback: bool = BALANCE_FEEDBACK  # affinity's overload price set by its served balance
    cluster_preset: str = "h100"  # the hardware (`placement.cost.PRESETS`) rebalances model and plan for
    observe_after_s: float = 30.0  # how long after an apply its gain is measured
    migration_timeout_s: float = 120.0  # per migration phase
    auto_min_balancedness: float = 0.8
    auto_min_gain: float = 0.1
    auto_interval_s: float = 300.0
    auto_check_every_s: float = 30.0
    # faults (docs/reliability.md): the supervisor probes every actor, replaces the dead or hung ones
    dispatch_timeout_s: float = 10.0  # how long an engine waits for a worker's answer to one layer
    probe_interval_s: float = 1.0  # between two probes of every worker and engine
    probe_timeout_s: float = 3.0  # an actor that does not answer a probe within this is hung: replaced
    replace_timeout_s: float = 120.0  # for a re-created actor to load its model
    # the ops dashboard (docs/dashboard.md); `serve` listens on --port + 1 unless told
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8051  # `switchyard dashboard --server`'s
    dashboard_refresh_s: float = 2.0  # between two readings of the cluster
    # clients
    client_timeout_s: float = 60.0  # deadline of the CLI's admin calls
    # Ray
    ray_connect_timeout_s: float = 30.0  # how long `serve --address` waits for the Ray head to answer
    # Task events the GCS keeps (Ray's default: 100 000). Each request runs ~20 Ray tasks, so at the
    # default the GCS grows by hundreds of MiB under sustained load before the buffer is full
    # (docs/reliability.md); `local_cluster` sets it, the Helm chart passes it as the head's env.
    ray_task_events_max_in_gcs: int = 10_000
    # from the environment
    redis_url: str | None = None
    token: str | None = None
    admin_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """`DEFAULTS` with the environment's variables (module doc); an empty value counts as unset."""
        environ = os.environ if environ is None else environ
        connect_timeout = environ.get(RAY_CONNECT_TIMEOUT_ENV) or None
        try:
            connect_timeout_s = DEFAULTS.ray_connect_timeout_s if connect_timeout is None else float(connect_timeout)
        except ValueError:
            connect_timeout_s = -1.0
        if not 0 < connect_timeout_s < float("inf"):
            raise InvalidSetting(f"${RAY_CONNECT_TIMEOUT_ENV} must be a positive number of seconds, "
                                 f"got {connect_timeout!r}")
        return dataclasses.replace(DEFAULTS, redis_url=environ.get(REDIS_URL_ENV) or None,
                                   token=environ.get(TOKEN_ENV) or None,
                                   admin_token=environ.get(ADMIN_TOKEN_ENV) or None,
                                   ray_connect_timeout_s=connect_timeout_s)


DEFAULTS = Settings()


def state_store_url(given: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The state store URL: `given` (a `--redis` option), else `$SWITCHYARD_REDIS_URL`, else None
    (the embedded store). An empty value counts as unset."""
    return given or Settings.from_env(environ).redis_url


def check_balance_tokens(balance_tokens: float | None, has_store: bool, name: str = "balance_tokens") -> None:
    """`InvalidSetting` unless `balance_tokens` (the runs of store entries a rebalance balances on,
    `switchyard serve --balance-tokens`) is None, or positive with a state store to cut runs from."""
    if balance_tokens is None:
        return
    if isinstance(balance_tokens, bool) or not isinstance(balance_tokens, (int, float)) or not balance_tokens > 0:
        raise InvalidSetting(f"{name} must be a positive number, got {balance_tokens!r}")
    if not has_store:
        raise InvalidSetting(f"{name} needs a state store: without one the statistics since loading are a "
                             "single window with no runs of entries to balance on")

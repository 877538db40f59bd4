"""The Serve application's arguments (`args` of the config's application), checked once.

The chart renders them (docs/kubernetes.md, "The Serve application contract"); `switchyard serve
--ray-serve` builds the same mapping from its options. Unknown or ill-typed arguments fail the
application's build with one `InvalidSetting` naming them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchyard.cluster.errors import InvalidSetting
from switchyard.cluster.settings import DEFAULTS, REDIS_URL_ENV, check_balance_tokens
from switchyard.placement.cost import preset
from switchyard.placement.errors import unit_interval
from switchyard.placement.windows import check_resampled


@dataclass(frozen=True)
class AppArgs:
    """model: checkpoint directory (the same path on every node).  nodes x gpus_per_node: the plan's
    topology; nodes are the Ray nodes offering the `switchyard_node` resource.  engines_per_node:
    engine replicas per node.  gateways: Gateway replicas, one per `switchyard_gateway` resource.
    deployment: the state store's key prefix.  redis_url_env: the variable holding the store's URL
    (unset or empty: no store).  host, grpc_port, health_port, metrics_port: where the gateway listens
    (health_port: a plaintext grpc.health.v1-only port beside a TLS one; 0: none; metrics_port 0:
    no dashboard).  stats_interval_s: between statistics uploads.  stats_window_s, stats_history,
    stats_decay, adaptive_memory, balance_tokens, resampled_windows: the windows rebalances plan on
    (`RuntimeBackend`; balance_tokens needs the store, resampled_windows balance_tokens).  balance_feedback:
    affinity's overload priced by its served balance (`placement.feedback`).  cluster: the
    hardware preset rebalances plan for (`placement.cost.PRESETS`).  plan: a plan JSON file, or a policy name.  token_file, admin_token_file, tls_cert_file, tls_key_file: files
    of the secrets."""

    model: str
    nodes: int = 1
    gpus_per_node: int = 1
    engines_per_node: int = 1
    gateways: int = 1
    deployment: str = "default"
    redis_url_env: str = REDIS_URL_ENV
    host: str = "0.0.0.0"
    grpc_port: int = DEFAULTS.port
    health_port: int = 0
    metrics_port: int = 0
    stats_interval_s: float = DEFAULTS.stats_interval_s
    stats_window_s: float = DEFAULTS.stats_window_s
    stats_history: int = DEFAULTS.stats_history
    stats_decay: float = DEFAULTS.stats_decay
    adaptive_memory: bool = DEFAULTS.adaptive_memory
    balance_tokens: float | None = None
    resampled_windows: int | None = None
    balance_feedback: bool = DEFAULTS.balance_feedback
    cluster: str = DEFAULTS.cluster_preset
    plan: str = "linear"
    max_queue: int = DEFAULTS.max_queue_per_engine
    token_file: str | None = None
    admin_token_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> AppArgs:
        """`raw` (the config's `args`) checked: every name known, every value of its field's type."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise InvalidSetting(f"unknown Serve application argument(s) {unknown}; known: {sorted(fields)}")
        if "model" not in raw:
            raise InvalidSetting("the Serve application needs the argument `model` (the checkpoint directory)")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            kind = fields[name].type
            try:
                if value is None and "None" in kind:
                    values[name] = None
                elif kind == "bool":
                    if not isinstance(value, bool):
                        raise ValueError(value)
                    values[name] = value
                elif kind.startswith("int"):
                    if isinstance(value, bool) or float(value) != int(value):
                        raise ValueError(value)
                    values[name] = int(value)
                elif kind.startswith("float"):
                    values[name] = float(value)
                else:
                    values[name] = str(value)
            except (TypeError, ValueError):
                raise InvalidSetting(f"the Serve application argument {name}={value!r} is not of type {kind}") from None
        args = cls(**values)
        for name in ("nodes", "gpus_per_node", "engines_per_node", "gateways", "max_queue", "stats_history"):
            if not getattr(args, name) >= 1:
                raise InvalidSetting(f"the Serve application argument {name} must be at least 1")
        unit_interval("the Serve application argument stats_decay", args.stats_decay, InvalidSetting)
        check_balance_tokens(args.balance_tokens, args.redis_url() is not None,
                             "the Serve application argument balance_tokens")
        check_resampled(args.resampled_windows, args.balance_tokens, error=InvalidSetting,
                        name="the Serve application argument resampled_windows")
        preset(args.cluster, InvalidSetting)
        if (args.tls_cert_file is None) != (args.tls_key_file is None):
            raise InvalidSetting("TLS needs both tls_cert_file and tls_key_file")
        return args

    def redis_url(self) -> str | None:
        """The state store URL from `redis_url_env` in this process's environment, or None."""
        return os.environ.get(self.redis_url_env) or None

    def secret(self, name: str) -> str | None:
        """The stripped content of the file argument `name` (a token), or None when not given."""
        path = getattr(self, name)
        if path is None:
            return None
        try:
            return Path(path).read_text().strip() or None
        except OSError as error:
            raise InvalidSetting(f"cannot read {name} {path}: {error}") from None

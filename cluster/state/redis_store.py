"""`RedisStateStore`: the state store in a real Redis, shared by every engine and rebalancer of a cluster.

Keys (all of one deployment share the prefix `switchyard:{DEPLOYMENT}:`; the braces are literal):

    switchyard:{D}:stats:index    sorted set   entry id -> timestamp (the window's time order)
    switchyard:{D}:stats:data     hash         entry id -> `stats_to_bytes` (compressed .npz)
    switchyard:{D}:plan:epoch     string       epoch of the active plan (absent: 0, no plan)
    switchyard:{D}:plan:active    string       JSON {"epoch", "timestamp", "plan": Plan.to_dict()}
    switchyard:{D}:plan:history   list         the same JSON records, newest first, capped
    switchyard:{D}:events         list         rebalance events as JSON, newest first, capped
    switchyard:{D}:feedback:priced list        the balance feedback's priced plans as JSON
                                               (`PricedPlan.to_dict`), newest first, `MAX_PRICED` kept

Why these cannot collide with Ray: Ray's GCS fault tolerance writes one Redis hash per GCS table
named `RAY{external_storage_namespace}@{TABLE}` (e.g. `RAYdefault@NODE`; KubeRay sets the namespace
to the RayCluster's UID), and its cleanup deletes keys by that `RAY...` prefix. Every key here
starts with `switchyard:`, which no `RAY...` key does, and Ray never scans outside its prefix.
Deployment names cannot contain `:` or braces (`check_deployment`), so one deployment's prefix is
never the start of another's. The braces make `{D}` a Redis Cluster hash tag: all keys of a
deployment land in one slot, so the plan's compare-and-set script may touch several of them.

Every call has socket timeouts (`timeout_s`) and one quick retry (a pooled connection broken by a
Redis restart is re-opened once); beyond that it raises `StateStoreUnavailable` naming the URL.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from switchyard.cluster.errors import InvalidSetting
from switchyard.cluster.state.store import (
    DEFAULT_MAX_AGE_S, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EVENTS, DEFAULT_MAX_HISTORY, MAX_PRICED, PricedPlan, StateStore,
    StateStoreUnavailable, WindowBy, check_deployment, check_retention, conflict, merge_windows, stamped,
    stats_from_bytes, stats_to_bytes,
)
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats

T = TypeVar("T")

# Compare-and-set of the active plan, atomic in Redis. KEYS: epoch, active, history.
# ARGV: expected epoch, the new record (JSON, epoch = expected + 1), history cap.
# Returns {1, new epoch} when accepted, {0, the other writer's epoch} when not (an epoch alone would
# be ambiguous: another writer may have reached exactly expected + 1). Should the reply be lost and
# the call retried, the writer sees a conflict at its own epoch: reading the active plan resolves it.
_SET_PLAN = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
redis.call('SET', KEYS[1], current + 1)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return {1, current + 1}
"""

_READ_CHUNK = 32  # blobs fetched per round trip while reading a window newest first


class RedisStateStore(StateStore):
    """The state store of one deployment in the Redis at `url` (see the module doc for the keys)."""

    def __init__(self, url: str, deployment: str, timeout_s: float = 2.0,
                 max_age_s: float = DEFAULT_MAX_AGE_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_history: int = DEFAULT_MAX_HISTORY, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.url, self.deployment = url, check_deployment(deployment)
        check_retention(max_age_s, max_entries, max_history, max_events)
        self.prefix = f"switchyard:{{{deployment}}}:"
        self.max_age_s, self.max_entries = max_age_s, max_entries
        self.max_history, self.max_events = max_history, max_events
        try:
            self._redis = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(ConstantBackoff(0.05), retries=1),
            )
        except ValueError as error:
            raise InvalidSetting(f"bad Redis URL {_redacted(url)!r}: {error}") from None
        self._set_plan = self._redis.register_script(_SET_PLAN)

    def key(self, name: str) -> str:
        return self.prefix + name

    def close(self) -> None:
        self._redis.close()

    def _call(self, operation: Callable[[], T]) -> T:
        """Run `operation`, turning Redis' connection errors and timeouts into `StateStoreUnavailable`."""
        try:
            return operation()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StateStoreUnavailable(
                f"the state store at {_redacted(self.url)} is unreachable ({error}); check that "
                "redis-server runs there, or leave the Redis URL unset to use the embedded store"
            ) from error

    def ping(self) -> None:
        self._call(self._redis.ping)

    # ---- statistics ----

    def append_stats(self, engine_id: str, stats: RoutingStats, timestamp: float) -> None:
        entry_id = f"{engine_id}/{uuid.uuid4().hex}"
        index, data = self.key("stats:index"), self.key("stats:data")

        def append() -> None:
            # MULTI: the index never names a missing blob; a retried send rewrites the same entry id.
            with self._redis.pipeline() as pipe:
                pipe.hset(data, entry_id, stats_to_bytes(stats))
                pipe.zadd(index, {entry_id: float(timestamp)})
                pipe.zrange(index, -1, -1, withscores=True)
                newest = pipe.execute()[-1][0][1]
            stale = self._redis.zrangebyscore(index, "-inf", f"({newest - self.max_age_s}")
            stale += self._redis.zrange(index, 0, -self.max_entries - 1)
            if stale:  # several appenders may prune the same ids: ZREM and HDEL do not mind
                with self._redis.pipeline() as pipe:
                    pipe.zrem(index, *stale)
                    pipe.hdel(data, *stale)
                    pipe.execute()

        self._call(append)

    def windows(self, by: WindowBy, size: float, count: int, now: float | None = None,
                piece_tokens: float | None = None, since: float | None = None) -> list[RoutingStats]:
        now = time.time() if now is None else now
        return self._call(lambda: merge_windows(self._newest_first(by, size, count, now), by, size, count, now,
                                                piece_tokens, since))

    def _newest_first(self, by: WindowBy, size: float, count: int, now: float) -> Iterator[tuple[float, RoutingStats]]:
        """Entries newest first: the ids (with time windows, those of the last `count` windows only) in
        one read, so appends and prunes running meanwhile cannot shift them, then the blobs a chunk at
        a time, so a small token window decodes little."""
        index, data = self.key("stats:index"), self.key("stats:data")
        if by == "time":
            ids = self._redis.zrevrangebyscore(index, "+inf", now - size * count, withscores=True)
        else:
            ids = self._redis.zrevrange(index, 0, -1, withscores=True)
        for start in range(0, len(ids), _READ_CHUNK):
            chunk = ids[start:start + _READ_CHUNK]
            blobs = self._redis.hmget(data, [entry_id for entry_id, _ in chunk])
            for (_, timestamp), blob in zip(chunk, blobs):
                if blob is not None:  # pruned since the ids were read
                    yield timestamp, stats_from_bytes(blob)

    # ---- plans ----

    def active_plan(self) -> tuple[Plan, int] | None:
        raw = self._call(lambda: self._redis.get(self.key("plan:active")))
        if raw is None:
            return None
        record = json.loads(raw)
        return Plan.from_dict(record["plan"]), int(record["epoch"])

    def set_active_plan(self, plan: Plan, expected_epoch: int) -> int:
        record = json.dumps({"epoch": expected_epoch + 1, "timestamp": time.time(), "plan": plan.to_dict()})
        keys = [self.key("plan:epoch"), self.key("plan:active"), self.key("plan:history")]
        accepted, epoch = self._call(lambda: self._set_plan(keys=keys, args=[expected_epoch, record,
                                                                             self.max_history]))
        if not accepted:
            raise conflict(expected_epoch, int(epoch))
        return int(epoch)

    def plan_history(self, limit: int = 10) -> list[tuple[int, Plan, float]]:
        if limit < 1:
            return []
        raws = self._call(lambda: self._redis.lrange(self.key("plan:history"), 0, limit - 1))
        records = [json.loads(raw) for raw in raws]
        return [(int(r["epoch"]), Plan.from_dict(r["plan"]), float(r["timestamp"])) for r in records]

    # ---- events ----

    def record_event(self, event: dict[str, Any]) -> dict[str, Any]:
        stored = stamped(event)

        def push() -> None:
            with self._redis.pipeline() as pipe:
                pipe.lpush(self.key("events"), json.dumps(stored))
                pipe.ltrim(self.key("events"), 0, self.max_events - 1)
                pipe.execute()

        self._call(push)
        return stored

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        if limit < 1:
            return []
        raws = self._call(lambda: self._redis.lrange(self.key("events"), 0, limit - 1))
        return [json.loads(raw) for raw in raws]

    # ---- the balance feedback's priced plans ----

    def remember_priced(self, record: PricedPlan) -> None:
        def push() -> None:
            with self._redis.pipeline() as pipe:
                pipe.lpush(self.key("feedback:priced"), json.dumps(record.to_dict()))
                pipe.ltrim(self.key("feedback:priced"), 0, MAX_PRICED - 1)
                pipe.execute()

        self._call(push)

    def priced_plans(self) -> list[PricedPlan]:
        raws = self._call(lambda: self._redis.lrange(self.key("feedback:priced"), 0, MAX_PRICED - 1))
        return [PricedPlan.from_dict(json.loads(raw)) for raw in raws]


def _redacted(url: str) -> str:
    """`url` with its password replaced by `***`, so error messages and logs never show it."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)

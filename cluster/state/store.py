"""The state store: routing statistics windows, versioned placement plans, rebalance events, and the
plans the balance feedback priced.

Engines append their routing statistics here every few seconds; the rebalancer reads a window of them
merged across engines and nodes, plans, and publishes the new plan with compare-and-set on its epoch so
two rebalancers can never both win. The plans a rebalance priced for the balance feedback are kept
here too, so every gateway replica over one store, and a gateway restarted over Redis, prices the
next plan from the same record (`cluster.rebalance.feedback`). One interface, `StateStore`, two implementations:

- `EmbeddedStateStore`: in-process and thread-safe, the single-machine default (nothing to run).
- `RedisStateStore` (`switchyard.cluster.state.redis_store`): a real Redis, shared by a cluster.

`open_state_store(url, deployment)` picks one from a URL. What is stored, the Redis keys, the window
semantics and the outage behaviour are described in `docs/state-store.md`.

Glossary:
- entry: one `RoutingStats` appended by one engine at one timestamp (seconds since the epoch).
- window: the entries merged into one `RoutingStats`; by time (entries at most `size` seconds old) or
  by tokens (the newest entries holding at least `size` tokens).
- piece: a run of a window's consecutive entries holding at least `piece_tokens` tokens, whose load a
  window can keep apart (`RoutingStats.window_load`) for a plan balanced on each.
- epoch: the version of the active plan; 0 means no plan yet, each accepted plan adds 1.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal, Protocol

import numpy as np

from switchyard.cluster.errors import InvalidSetting
from switchyard.placement.errors import SwitchyardError, positive_int
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats

__all__ = [
    "EmbeddedStateStore", "PlanConflict", "PricedPlan", "StateStore", "StateStoreError", "StateStoreUnavailable",
    "open_state_store",
]

WindowBy = Literal["time", "tokens"]

# Retention bounds shared by both stores: windows are read from what is kept, so these cap memory
# (an engine appending every 5 s for an hour is 720 entries) without limiting any sensible window.
DEFAULT_MAX_AGE_S = 3600.0
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_HISTORY = 100
DEFAULT_MAX_EVENTS = 1000
MAX_PRICED = 8
"""Priced plans kept (`PricedPlan`): the proposals of a few dry runs, and the one applied."""

_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


# ---- errors ----


class StateStoreError(SwitchyardError):
    """Base of the state store's errors; the message names the cause and what to do."""


class StateStoreUnavailable(StateStoreError, ConnectionError):
    """The store cannot be reached (Redis down, a timeout); nothing was written."""

    status = "UNAVAILABLE"


class PlanConflict(StateStoreError):
    """`set_active_plan` lost a race: another writer advanced the epoch since it was read."""

    status = "ABORTED"


# ---- records ----


@dataclasses.dataclass(frozen=True)
class PricedPlan:
    """A plan the balance feedback priced (`cluster.rebalance.feedback`): its `level`, and `baseline`,
    EPLB's plan on the same statistics, which its served balance is compared with."""

    plan: Plan
    level: int
    baseline: Plan

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "plan": self.plan.to_dict(), "baseline": self.baseline.to_dict()}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PricedPlan:
        return cls(Plan.from_dict(record["plan"]), int(record["level"]), Plan.from_dict(record["baseline"]))


# ---- the interface ----


class StateStore(Protocol):
    """What engines and the rebalancer share. Every method raises `StateStoreUnavailable` when the
    backing store cannot be reached, never blocks longer than its socket timeouts. The stores subclass
    it, so they share `window`, written once here over their `windows`."""

    def ping(self) -> None:
        """Raise `StateStoreUnavailable` unless the store answers."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    def append_stats(self, engine_id: str, stats: RoutingStats, timestamp: float) -> None:
        """Add one engine's statistics taken at `timestamp`; entries past the retention are dropped."""

    def window(self, by: WindowBy, size: float, now: float | None = None, since: float | None = None
               ) -> RoutingStats | None:
        """All engines' entries inside the window merged, or None when it holds none (see module doc);
        with `since`, the entries stamped at or after it only."""
        windows = self.windows(by, size, 1, now, since=since)
        return windows[0] if windows else None

    def windows(self, by: WindowBy, size: float, count: int, now: float | None = None,
                piece_tokens: float | None = None, since: float | None = None) -> list[RoutingStats]:
        """Up to `count` consecutive windows, newest first, each merged as `window` merges one; a
        window without entries is left out; with `piece_tokens`, each keeps the load of its runs of
        entries of that many tokens; with `since`, entries stamped before it are left out
        (`merge_windows`)."""

    def active_plan(self) -> tuple[Plan, int] | None:
        """The active plan and its epoch, or None before the first plan."""

    def set_active_plan(self, plan: Plan, expected_epoch: int) -> int:
        """Make `plan` active if the epoch is still `expected_epoch` (0: no plan yet); return the new
        epoch. Raises `PlanConflict` when another writer got there first."""

    def plan_history(self, limit: int = 10) -> list[tuple[int, Plan, float]]:
        """`(epoch, plan, timestamp)` of the latest `limit` plans set, newest (the active one) first."""

    def record_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Store a JSON-able rebalance event; a `timestamp` is added when absent. Returns it as stored."""

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest `limit` events, newest first."""

    def remember_priced(self, record: PricedPlan) -> None:
        """Keep `record` as the newest of the last `MAX_PRICED` priced plans."""

    def priced_plans(self) -> list[PricedPlan]:
        """The priced plans kept, newest first."""


def open_state_store(url: str | None, deployment: str) -> StateStore:
    """The store a URL names: None -> embedded, `redis://` / `rediss://` -> Redis."""
    check_deployment(deployment)
    if url is None:
        return EmbeddedStateStore()
    if isinstance(url, str) and url.startswith(("redis://", "rediss://")):
        from switchyard.cluster.state.redis_store import RedisStateStore  # redis is only needed here

        return RedisStateStore(url, deployment)
    raise InvalidSetting(
        f"unsupported state store URL {url!r}: use redis://HOST:PORT[/DB], or no URL for the embedded store"
    )


def check_deployment(deployment: str) -> str:
    """Deployment names become part of Redis keys (`switchyard:{D}:...`), so they may not contain the
    separator `:` or braces: then one deployment's prefix can never be the start of another's key."""
    if not isinstance(deployment, str) or not _DEPLOYMENT.fullmatch(deployment):
        raise InvalidSetting(
            f"bad deployment name {deployment!r}: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return deployment


def check_retention(max_age_s: float, max_entries: int, max_history: int, max_events: int) -> None:
    """Retention bounds come from configuration: reject the ones that would keep nothing."""
    if not max_age_s > 0:
        raise InvalidSetting(f"max_age_s must be positive, got {max_age_s!r}")
    for name, value in (("max_entries", max_entries), ("max_history", max_history), ("max_events", max_events)):
        positive_int(name, value, InvalidSetting)


# ---- shared pieces: window selection, serialisation ----


def merge_windows(newest_first: Iterable[tuple[float, RoutingStats]], by: WindowBy, size: float, count: int,
                  now: float | None = None, piece_tokens: float | None = None, since: float | None = None
                  ) -> list[RoutingStats]:
    """Merge the entries of up to `count` consecutive windows from `(timestamp, stats)` pairs ordered
    newest first; the windows come newest first, and a window that holds no entry is left out.

    Stops reading at the first entry past the last window, so a store can feed entries lazily.
    by="time": window j holds the entries with `j * size < now - timestamp <= (j + 1) * size` (window 0
    also those stamped after `now`, which defaults to the wall clock).
    by="tokens": window 0 holds the newest entries until their `num_tokens` reach `size`, window 1 the
    next ones, and so on; entries are whole, so a window may carry past `size`, and the oldest window
    may hold fewer tokens when the entries run out.
    piece_tokens: each window also keeps, in `window_load`, the load of every run of consecutive
    entries holding at least this many tokens (cut as token windows are; a planner holds its load cap
    on each, `placement.windows.decayed_stats`); None: the window's load alone.
    since: entries stamped before this are left out, as if the store held none (what a plan has served
    since it was applied, `cluster.rebalance.feedback`); None: all.
    """
    if by not in ("time", "tokens"):
        raise InvalidSetting(f"window by must be 'time' or 'tokens', got {by!r}")
    if not size > 0:
        raise InvalidSetting(f"window size must be positive, got {size!r}")
    if piece_tokens is not None and not piece_tokens > 0:
        raise InvalidSetting(f"piece_tokens must be positive, got {piece_tokens!r}")
    positive_int("count", count, InvalidSetting)
    now = time.time() if now is None else now
    windows: list[RoutingStats] = []
    window, current = _Window(piece_tokens), 0
    for timestamp, stats in newest_first:
        if since is not None and timestamp < since:
            break
        if by == "time":
            index = max(0, math.ceil((now - timestamp) / size) - 1)
            if index >= count:
                break
            if index != current and window.merged is not None:
                windows.append(window.result())
                window = _Window(piece_tokens)
            current = index
        window.add(stats)
        if by == "tokens" and window.tokens >= size:
            windows.append(window.result())
            window = _Window(piece_tokens)
            if len(windows) == count:
                break
    if window.merged is not None:
        windows.append(window.result())
    return windows


class _Window:
    """One window of `merge_windows` as its entries arrive, newest first: merged as they come, and with
    `piece_tokens`, the load of each run of entries holding at least that many tokens."""

    def __init__(self, piece_tokens: float | None) -> None:
        self.piece_tokens = piece_tokens
        self.merged: RoutingStats | None = None
        self.pieces: list[np.ndarray] = []  # newest first
        self.piece: np.ndarray | None = None
        self.in_piece = 0.0  # tokens in `piece`

    @property
    def tokens(self) -> float:
        """Tokens of the entries added so far."""
        return 0.0 if self.merged is None else self.merged.num_tokens

    def add(self, stats: RoutingStats) -> None:
        self.merged = stats if self.merged is None else self.merged.merge(stats)
        if self.piece_tokens is None:
            return
        self.piece = stats.load if self.piece is None else self.piece + stats.load
        self.in_piece += stats.num_tokens
        if self.in_piece >= self.piece_tokens:
            self.pieces.append(self.piece)
            self.piece, self.in_piece = None, 0.0

    def result(self) -> RoutingStats:
        """The merged window; with pieces, their loads oldest first in `window_load` (the oldest run
        may hold fewer tokens, as the oldest token window may)."""
        assert self.merged is not None
        pieces = self.pieces + ([] if self.piece is None else [self.piece])
        if len(pieces) < 2:
            return self.merged
        return dataclasses.replace(self.merged, window_load=np.stack(pieces[::-1]))


def stats_to_bytes(stats: RoutingStats) -> bytes:
    """A compressed `.npz` of the stats' arrays: exact (float64 kept), no pickle, readable by numpy.

    Per-layer top-k sets are concatenated (`topk_sets` `[sum U_l, k]`, `set_counts` `[sum U_l]`)
    with `set_sizes` `[L]` (U_l) to split them again.
    """
    arrays: dict[str, np.ndarray] = {"load": stats.load, "num_tokens": np.float64(stats.num_tokens)}
    if stats.pair_counts is not None:
        arrays["pair_counts"] = stats.pair_counts
    if stats.topk_sets is not None:
        arrays["topk_sets"] = np.concatenate(stats.topk_sets)
        arrays["set_counts"] = np.concatenate(stats.set_counts)
        arrays["set_sizes"] = np.array([len(s) for s in stats.topk_sets], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def stats_from_bytes(data: bytes) -> RoutingStats:
    """Inverse of `stats_to_bytes`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        sets = counts = None
        if "topk_sets" in npz:
            cuts = np.cumsum(npz["set_sizes"])[:-1]
            sets = tuple(np.split(npz["topk_sets"], cuts))
            counts = tuple(np.split(npz["set_counts"], cuts))
        return RoutingStats(npz["load"], npz["pair_counts"] if "pair_counts" in npz else None, sets, counts,
                            float(npz["num_tokens"]))


def conflict(expected_epoch: int, current_epoch: int) -> PlanConflict:
    return PlanConflict(
        f"the active plan is at epoch {current_epoch}, not {expected_epoch}: another rebalance changed it; "
        "read the active plan again and re-plan"
    )


def stamped(event: dict[str, Any]) -> dict[str, Any]:
    """`event` with a `timestamp` (now) when it has none, checked to be JSON-able (a copy)."""
    if not isinstance(event, dict):
        raise InvalidSetting(f"an event must be a dict, got {type(event).__name__}")
    try:
        stored = json.loads(json.dumps(event))
    except (TypeError, ValueError) as error:
        raise InvalidSetting(f"an event must be JSON-serialisable: {error}") from None
    stored.setdefault("timestamp", time.time())
    return stored


# ---- the embedded store ----


class EmbeddedStateStore(StateStore):
    """The single-machine store: plain Python containers behind one lock, lost when the process ends.

    Keeps objects as given (`RoutingStats` and `Plan` are frozen), so no serialisation on this path.
    """

    def __init__(self, max_age_s: float = DEFAULT_MAX_AGE_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_history: int = DEFAULT_MAX_HISTORY, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        check_retention(max_age_s, max_entries, max_history, max_events)
        self.max_age_s, self.max_entries = max_age_s, max_entries
        self._entries: list[tuple[float, str, RoutingStats]] = []  # oldest first
        self._epoch = 0
        self._history: deque[tuple[int, Plan, float]] = deque(maxlen=max_history)  # newest first
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)  # newest first
        self._priced: deque[PricedPlan] = deque(maxlen=MAX_PRICED)  # newest first
        self._lock = threading.Lock()

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def append_stats(self, engine_id: str, stats: RoutingStats, timestamp: float) -> None:
        with self._lock:
            index = len(self._entries)
            while index and self._entries[index - 1][0] > timestamp:  # late arrivals keep time order
                index -= 1
            self._entries.insert(index, (float(timestamp), engine_id, stats))
            newest = self._entries[-1][0]
            keep = [e for e in self._entries if newest - e[0] <= self.max_age_s]
            self._entries = keep[-self.max_entries:]

    def windows(self, by: WindowBy, size: float, count: int, now: float | None = None,
                piece_tokens: float | None = None, since: float | None = None) -> list[RoutingStats]:
        with self._lock:
            entries = list(self._entries)
        return merge_windows(((t, s) for t, _, s in reversed(entries)), by, size, count, now, piece_tokens, since)

    def active_plan(self) -> tuple[Plan, int] | None:
        with self._lock:
            return (self._history[0][1], self._epoch) if self._epoch else None

    def set_active_plan(self, plan: Plan, expected_epoch: int) -> int:
        with self._lock:
            if self._epoch != expected_epoch:
                raise conflict(expected_epoch, self._epoch)
            self._epoch += 1
            self._history.appendleft((self._epoch, plan, time.time()))
            return self._epoch

    def plan_history(self, limit: int = 10) -> list[tuple[int, Plan, float]]:
        with self._lock:
            return list(self._history)[:max(limit, 0)]

    def record_event(self, event: dict[str, Any]) -> dict[str, Any]:
        stored = stamped(event)
        with self._lock:
            self._events.appendleft(stored)
        return json.loads(json.dumps(stored))

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(e)) for e in list(self._events)[:max(limit, 0)]]

    def remember_priced(self, record: PricedPlan) -> None:
        with self._lock:
            self._priced.appendleft(record)

    def priced_plans(self) -> list[PricedPlan]:
        with self._lock:
            return list(self._priced)

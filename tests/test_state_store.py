"""The state store: the same tests against the embedded store and a real Redis, plus the outage path.

Redis cases use the redis-server on 127.0.0.1:6379 (skipped with a reason where none answers), a
unique deployment per test, and delete its keys afterwards. Outage and key-hygiene tests start their
own redis-server on a free port, so stopping it never disturbs anyone else.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis

from switchyard.cluster.state.redis_store import RedisStateStore
from switchyard.cluster.state.store import (
    MAX_PRICED, EmbeddedStateStore, PlanConflict, PricedPlan, StateStore, StateStoreError, StateStoreUnavailable, open_state_store,
    stats_from_bytes, stats_to_bytes,
)
from switchyard.cluster.state.writer import BufferedStatsWriter
from switchyard.placement.plan import Plan
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology
from switchyard.placement.trace import RoutingTrace
from bench.ports import free_port
from waiting import wait_until

SHARED_URL = "redis://127.0.0.1:6379/0"
NUM_LAYERS, NUM_EXPERTS, TOP_K = 3, 8, 2


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _stats(seed: int, num_tokens: int = 10) -> RoutingStats:
    """Full stats (load, pairs, sets) of `num_tokens` random tokens."""
    rng = np.random.default_rng(seed)
    ids = np.stack([np.stack([rng.choice(NUM_EXPERTS, TOP_K, replace=False) for _ in range(NUM_LAYERS)])
                    for _ in range(num_tokens)])
    return RoutingStats.from_trace(RoutingTrace(ids, np.array([num_tokens]), NUM_EXPERTS))


def _plan(shift: int) -> Plan:
    """A valid 2-layer plan over 2 nodes x 2 GPUs x 2 slots (each expert once, rotated by `shift`)."""
    row = np.roll(np.arange(NUM_EXPERTS), shift)
    return Plan(np.stack([row, row[::-1]]), Topology(2, 2, 2), NUM_EXPERTS)


def _same(a: RoutingStats, b: RoutingStats) -> bool:
    """Exact equality of every view (arrays bit for bit, None where None)."""
    def eq(x, y) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))

    sets_equal = (a.topk_sets is None) == (b.topk_sets is None) and (a.topk_sets is None or (
        len(a.topk_sets) == len(b.topk_sets)
        and all(eq(x, y) for x, y in zip(a.topk_sets, b.topk_sets))
        and all(eq(x, y) for x, y in zip(a.set_counts, b.set_counts))))
    return (eq(a.load, b.load) and eq(a.pair_counts, b.pair_counts) 
            and sets_equal and a.num_tokens == b.num_tokens)


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*"))  # braces are not special in Redis patterns
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def store(request) -> Iterator[StateStore]:
    """Each test once per store; Redis under a deployment of its own, cleaned up afterwards."""
    if request.param == "embedded":
        yield EmbeddedStateStore()
        return
    if not _redis_answers(SHARED_URL):
        pytest.skip(f"no redis-server answers at {SHARED_URL}")
    redis_store = RedisStateStore(SHARED_URL, f"test-{uuid.uuid4().hex[:12]}")
    yield redis_store
    _delete_prefix(redis.Redis.from_url(SHARED_URL), redis_store.prefix)
    redis_store.close()


# ---- statistics windows ----


def test_window_by_time_keeps_recent_entries(store: StateStore) -> None:
    entries = {100.0: _stats(1), 150.0: _stats(2), 190.0: _stats(3)}
    for timestamp, stats in entries.items():
        store.append_stats("engine-0", stats, timestamp)
    assert _same(store.window("time", 50, now=200.0), entries[150.0].merge(entries[190.0]))
    assert _same(store.window("time", 100, now=200.0), entries[100.0].merge(entries[150.0]).merge(entries[190.0]))
    assert _same(store.window("time", 10, now=200.0), entries[190.0])
    assert store.window("time", 5, now=200.0) is None


def test_window_by_tokens_takes_newest_whole_entries(store: StateStore) -> None:
    old, middle, new = _stats(1, 10), _stats(2, 20), _stats(3, 30)
    for timestamp, stats in ((1.0, old), (2.0, middle), (3.0, new)):
        store.append_stats("engine-0", stats, timestamp)
    assert _same(store.window("tokens", 30), new)
    assert _same(store.window("tokens", 31), new.merge(middle))  # whole entries: 50 tokens
    assert store.window("tokens", 1000).num_tokens == 60


def test_a_window_since_a_time_leaves_out_older_entries(store: StateStore) -> None:
    """`since` (what the plan in service has served since its apply): entries stamped before it are
    left out of time and token windows alike; none after it, no window."""
    old, middle, new = _stats(1, 10), _stats(2, 20), _stats(3, 30)
    for timestamp, stats in ((100.0, old), (150.0, middle), (190.0, new)):
        store.append_stats("engine-0", stats, timestamp)
    assert _same(store.window("time", 100, now=200.0, since=150.0), middle.merge(new))
    assert _same(store.window("tokens", 1000, since=150.0), new.merge(middle))
    assert _same(store.windows("tokens", 20, 3, since=120.0)[-1], middle)  # the older window cut at `since`
    assert store.window("time", 100, now=200.0, since=191.0) is None


def test_windows_by_time_are_consecutive_and_skip_empty_ones(store: StateStore) -> None:
    entries = {95.0: _stats(1), 130.0: _stats(2), 145.0: _stats(3), 190.0: _stats(4), 205.0: _stats(5)}
    for timestamp, stats in entries.items():
        store.append_stats("engine-0", stats, timestamp)
    # windows of 20 s before now=200: (180, 200] plus the entry stamped after now, (160, 180] empty,
    # (140, 160], (120, 140]; the entry at 95 s is in the sixth window
    windows = store.windows("time", 20, 4, now=200.0)
    assert len(windows) == 3
    assert _same(windows[0], entries[205.0].merge(entries[190.0]))
    assert _same(windows[1], entries[145.0]) and _same(windows[2], entries[130.0])
    assert len(store.windows("time", 20, 6, now=200.0)) == 4
    assert _same(store.windows("time", 20, 1, now=200.0)[0], store.window("time", 20, now=200.0))
    assert store.windows("time", 5, 3, now=300.0) == []


def test_windows_by_tokens_cut_the_entries_newest_first(store: StateStore) -> None:
    stats = [_stats(i, tokens) for i, tokens in enumerate((10, 20, 30, 40))]
    for timestamp, s in enumerate(stats):
        store.append_stats("engine-0", s, float(timestamp))
    windows = store.windows("tokens", 35, 3)
    assert [w.num_tokens for w in windows] == [40, 50, 10]  # the oldest window holds what is left
    assert _same(windows[1], stats[2].merge(stats[1]))
    assert [w.num_tokens for w in store.windows("tokens", 35, 2)] == [40, 50]
    with pytest.raises(ValueError, match="count must be a positive integer, got 0"):
        store.windows("tokens", 35, 0)


def test_windows_keep_the_load_of_runs_of_entries(store: StateStore) -> None:
    """`piece_tokens` (`serve --balance-tokens`): each window keeps, oldest first, the load of its runs of
    entries holding that many tokens, cut newest first so the oldest run holds what is left; the
    merged window is the same. With entries of exactly that size the runs are those of
    `RoutingStats.from_trace(window_tokens=...)`, which the benchmark plans on."""
    rng = np.random.default_rng(7)
    ids = np.stack([np.stack([rng.choice(NUM_EXPERTS, TOP_K, replace=False) for _ in range(NUM_LAYERS)])
                    for _ in range(60)])
    trace = RoutingTrace(ids, np.array([60]), NUM_EXPERTS)
    for timestamp, start in enumerate(range(0, 60, 10)):  # six entries of 10 tokens
        store.append_stats("engine-0", RoutingStats.from_trace(trace, start, start + 10), float(timestamp))
    newest, older = store.windows("tokens", 30, 2, piece_tokens=10)
    for window, (start, stop) in ((newest, (30, 60)), (older, (0, 30))):
        np.testing.assert_array_equal(window.window_load,
                                      RoutingStats.from_trace(trace, start, stop, window_tokens=10).window_load)
    assert _same(newest, store.windows("tokens", 30, 1)[0])
    (whole,) = store.windows("time", 100, 1, now=10.0, piece_tokens=40)  # runs of 40 and 20 tokens
    np.testing.assert_array_equal(whole.window_load, np.stack([RoutingStats.from_trace(trace, 0, 20).load,
                                                               RoutingStats.from_trace(trace, 20, 60).load]))
    assert store.windows("tokens", 30, 1, piece_tokens=30)[0].window_load is None  # one run: the window
    with pytest.raises(ValueError, match="piece_tokens must be positive, got 0"):
        store.windows("tokens", 30, 1, piece_tokens=0)


def test_window_merges_engines(store: StateStore) -> None:
    stats = {f"engine-{i}": _stats(10 + i) for i in range(3)}
    for i, (engine, s) in enumerate(stats.items()):
        store.append_stats(engine, s, 1000.0 + i)
    merged = store.window("time", 60, now=1010.0)
    assert _same(merged, stats["engine-2"].merge(stats["engine-1"]).merge(stats["engine-0"]))
    assert merged.num_tokens == 30


def test_late_entries_are_placed_by_timestamp(store: StateStore) -> None:
    store.append_stats("engine-0", _stats(1), 200.0)
    store.append_stats("engine-1", _stats(2), 100.0)  # flushed late, e.g. after an outage
    assert store.window("time", 50, now=210.0).num_tokens == 10
    assert store.window("time", 150, now=210.0).num_tokens == 20


@pytest.mark.parametrize("kind", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_retention_drops_old_and_excess_entries(kind: str) -> None:
    if kind == "embedded":
        store = EmbeddedStateStore(max_age_s=100, max_entries=3)
    else:
        if not _redis_answers(SHARED_URL):
            pytest.skip(f"no redis-server answers at {SHARED_URL}")
        store = RedisStateStore(SHARED_URL, f"test-{uuid.uuid4().hex[:12]}", max_age_s=100, max_entries=3)
    try:
        store.append_stats("engine-0", _stats(1), 0.0)
        store.append_stats("engine-0", _stats(2), 150.0)  # entry at 0.0 is now older than 100 s
        assert store.window("tokens", 1e9).num_tokens == 10
        for t in (151.0, 152.0, 153.0):
            store.append_stats("engine-0", _stats(3), t)
        assert store.window("tokens", 1e9).num_tokens == 30  # at most 3 entries kept
    finally:
        if kind == "redis":
            _delete_prefix(redis.Redis.from_url(SHARED_URL), store.prefix)


@pytest.mark.parametrize("by, size", [("count", 10), ("time", 0), ("tokens", -1)])
def test_window_rejects_bad_arguments(store: StateStore, by: str, size: float) -> None:
    with pytest.raises(ValueError):
        store.window(by, size)


def test_load_only_stats_round_trip(store: StateStore) -> None:
    load_only = RoutingStats.from_load(np.arange(NUM_LAYERS * NUM_EXPERTS, dtype=float).reshape(NUM_LAYERS, -1))
    store.append_stats("engine-0", load_only, 1.0)
    assert _same(store.window("tokens", 1), load_only)


def test_serialisation_is_exact() -> None:
    stats = _stats(7, 50).decayed(1 / 3)  # fractional counts must survive bit for bit
    assert _same(stats_from_bytes(stats_to_bytes(stats)), stats)
    load_only = RoutingStats.from_load(np.full((2, 4), 0.1), num_tokens=0.7)
    assert _same(stats_from_bytes(stats_to_bytes(load_only)), load_only)
    assert stats_to_bytes(stats)[:2] == b"PK"  # an .npz (zip) numpy can read, no pickle


# ---- plans ----


def test_plan_compare_and_set_and_history(store: StateStore) -> None:
    assert store.active_plan() is None and store.plan_history() == []
    first, second = _plan(0), _plan(3)
    assert store.set_active_plan(first, expected_epoch=0) == 1
    assert store.active_plan() == (first, 1)
    assert store.set_active_plan(second, expected_epoch=1) == 2
    with pytest.raises(PlanConflict, match="epoch 2, not 1"):
        store.set_active_plan(first, expected_epoch=1)  # a second writer that read epoch 1
    assert store.active_plan() == (second, 2)
    history = store.plan_history(limit=10)
    assert [(epoch, plan) for epoch, plan, _ in history] == [(2, second), (1, first)]
    assert history[0][2] >= history[1][2] > 0
    assert [epoch for epoch, _, _ in store.plan_history(limit=1)] == [2]


def test_concurrent_writers_one_wins(store: StateStore) -> None:
    plans = [_plan(shift) for shift in range(8)]

    def attempt(plan: Plan) -> int | None:
        try:
            return store.set_active_plan(plan, expected_epoch=0)
        except PlanConflict:
            return None

    with ThreadPoolExecutor(len(plans)) as pool:
        results = list(pool.map(attempt, plans))
    assert sorted(results, key=lambda r: r is None) == [1] + [None] * (len(plans) - 1)
    assert store.active_plan() == (plans[results.index(1)], 1)
    assert len(store.plan_history()) == 1


def test_plan_conflict_is_a_state_store_error() -> None:
    assert issubclass(PlanConflict, StateStoreError)
    assert issubclass(StateStoreUnavailable, StateStoreError)


# ---- events ----


def test_events_newest_first_with_timestamps(store: StateStore) -> None:
    store.record_event({"by": "cli", "predicted_gain": 0.25, "timestamp": 5.0})
    stored = store.record_event({"by": "auto", "predicted_gain": 0.1, "observed_gain": None})
    assert stored["timestamp"] > 5.0
    events = store.events(limit=10)
    assert [e["by"] for e in events] == ["auto", "cli"]
    assert events[1] == {"by": "cli", "predicted_gain": 0.25, "timestamp": 5.0}
    assert len(store.events(limit=1)) == 1


def test_events_must_be_json(store: StateStore) -> None:
    with pytest.raises(ValueError, match="JSON"):
        store.record_event({"when": object()})


# ---- the balance feedback's priced plans ----


def test_priced_plans_newest_first_and_capped(store: StateStore) -> None:
    """What `cluster.rebalance.feedback` keeps: each record whole (plan, level, EPLB's plan), newest
    first, the newest `MAX_PRICED` only; a second store object on the same deployment (another gateway
    replica, or the gateway restarted) reads the same."""
    assert store.priced_plans() == []
    records = [PricedPlan(_plan(shift), shift % 3, _plan(shift + 1)) for shift in range(MAX_PRICED + 2)]
    for record in records:
        store.remember_priced(record)
    assert store.priced_plans() == records[::-1][:MAX_PRICED]
    if isinstance(store, RedisStateStore):
        again = RedisStateStore(store.url, store.deployment)
        try:
            assert again.priced_plans() == store.priced_plans()
        finally:
            again.close()


# ---- namespacing ----


@pytest.mark.redis
def test_deployments_do_not_see_each_other() -> None:
    if not _redis_answers(SHARED_URL):
        pytest.skip(f"no redis-server answers at {SHARED_URL}")
    a = RedisStateStore(SHARED_URL, f"test-{uuid.uuid4().hex[:12]}")
    b = RedisStateStore(SHARED_URL, f"test-{uuid.uuid4().hex[:12]}")
    try:
        a.append_stats("engine-0", _stats(1), 1.0)
        a.set_active_plan(_plan(0), 0)
        a.record_event({"by": "a"})
        assert b.window("tokens", 1) is None and b.active_plan() is None and b.events() == []
        assert b.set_active_plan(_plan(1), 0) == 1  # b's epochs are its own
    finally:
        client = redis.Redis.from_url(SHARED_URL)
        _delete_prefix(client, a.prefix)
        _delete_prefix(client, b.prefix)


@pytest.mark.parametrize("kwargs", [{"max_age_s": 0}, {"max_entries": 0}, {"max_history": 0},
                                    {"max_events": -1}])
def test_bad_retention_is_rejected(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EmbeddedStateStore(**kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RedisStateStore("redis://127.0.0.1:1", "prod", **kwargs)


@pytest.mark.parametrize("name", ["", "a:b", "x{y}", "with space", "-lead", "a" * 64, None])
def test_bad_deployment_names_are_rejected(name) -> None:
    with pytest.raises(ValueError, match="deployment"):
        RedisStateStore("redis://127.0.0.1:1", name)


# ---- a private redis-server: key hygiene, outage ----


def _start_redis(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _redis_answers(f"redis://127.0.0.1:{port}") or process.poll() is not None,
               "redis-server to start", timeout_s=10)
    assert process.poll() is None, "redis-server exited"
    return process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[tuple[int, list[subprocess.Popen]]]:
    """A redis-server of this test's own on a free port: `(port, [process])`, stopped afterwards."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    processes = [_start_redis(port)]
    yield port, processes
    for process in processes:
        if process.poll() is None:
            _stop(process)


@pytest.mark.redis
def test_no_key_outside_the_prefix(private_redis) -> None:
    port, _ = private_redis
    store = RedisStateStore(f"redis://127.0.0.1:{port}", "prod")
    store.append_stats("engine-0", _stats(1), time.time())
    store.window("time", 60)
    store.set_active_plan(_plan(0), 0)
    store.record_event({"by": "test"})
    store.remember_priced(PricedPlan(_plan(0), 1, _plan(1)))
    keys = sorted(k.decode() for k in redis.Redis(port=port).keys("*"))
    assert keys and all(k.startswith("switchyard:{prod}:") for k in keys), keys
    assert not any(k.startswith("RAY") for k in keys)  # Ray GCS FT's keys are RAY{namespace}@{table}


@pytest.mark.redis
def test_outage_buffers_bounded_and_flushes(private_redis) -> None:
    port, processes = private_redis
    store = RedisStateStore(f"redis://127.0.0.1:{port}", "prod", timeout_s=1.0)
    writer = BufferedStatsWriter(store, "engine-0", max_buffered=3)
    assert writer.write(_stats(1), timestamp=100.0)

    _stop(processes.pop())
    started = time.monotonic()
    with pytest.raises(StateStoreUnavailable, match=f"127.0.0.1:{port}"):
        store.window("tokens", 1)
    for t in (101.0, 102.0, 103.0, 104.0, 105.0):  # five entries, room for three
        assert not writer.write(_stats(int(t)), timestamp=t)
    assert time.monotonic() - started < 10, "an unreachable store must fail fast, not hang"
    assert writer.pending == 3 and writer.dropped == 2

    processes.append(_start_redis(port))  # an empty Redis comes back on the same port
    assert writer.write(_stats(106), timestamp=106.0) and writer.pending == 0
    merged = store.window("time", 10, now=106.0)
    assert merged.num_tokens == 40  # 103 to 106; 101 and 102 dropped
    assert _same(merged, _stats(106).merge(_stats(105)).merge(_stats(104)).merge(_stats(103)))


def test_buffer_bound_with_a_failing_store() -> None:
    class Down(EmbeddedStateStore):
        up = False

        def append_stats(self, engine_id, stats, timestamp) -> None:
            if not self.up:
                raise StateStoreUnavailable("down")
            super().append_stats(engine_id, stats, timestamp)

    store = Down()
    writer = BufferedStatsWriter(store, "engine-0", max_buffered=2)
    for seed in range(4):
        assert not writer.write(_stats(seed), timestamp=float(seed))
    assert (writer.pending, writer.dropped) == (2, 2)
    store.up = True
    assert writer.write(_stats(9), timestamp=9.0)
    assert store.window("tokens", 1e9).num_tokens == 30  # seeds 2, 3 and the new one


# ---- the factory ----


def test_factory_picks_the_store() -> None:
    assert isinstance(open_state_store(None, "prod"), EmbeddedStateStore)
    redis_store = open_state_store("redis://127.0.0.1:6379/0", "prod")
    assert isinstance(redis_store, RedisStateStore) and redis_store.prefix == "switchyard:{prod}:"


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "", "memory://"])
def test_factory_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported state store URL"):
        open_state_store(url, "prod")


def test_unreachable_redis_names_the_url_without_password() -> None:
    port = free_port()  # nothing listens there
    store = open_state_store(f"redis://user:secret@127.0.0.1:{port}/0", "prod")
    started = time.monotonic()
    with pytest.raises(StateStoreUnavailable, match=f"127.0.0.1:{port}") as error:
        store.ping()
    assert "secret" not in str(error.value)
    assert time.monotonic() - started < 5

"""Shared fixtures: the real routing traces beside the project, skipped with a reason where absent."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology

TRACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "traces"
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """`../shared/traces` from the repository root; tests that need it skip where it is absent."""
    if not TRACES_DIR.is_dir():
        pytest.skip(f"real routing traces not found at {TRACES_DIR} (they live beside the project)")
    return TRACES_DIR


@pytest.fixture(scope="session")
def esft_path(traces_dir: Path):
    """A function returning the path of one ESFT trace ("intent" or "law")."""

    def path(task: str) -> Path:
        trace = traces_dir / "esft" / f"{task}.npz"
        if not trace.is_file():
            pytest.skip(f"ESFT trace {trace} not found")
        return trace

    return path


def _random_plan(rng: np.random.Generator, topology: Topology, num_layers: int, num_experts: int) -> Plan:
    """A valid plan with random redundant replicas (no expert twice on a GPU)."""
    rows = []
    for _ in range(num_layers):
        while True:
            extra = rng.integers(0, num_experts, topology.num_slots - num_experts)
            row = rng.permutation(np.concatenate([np.arange(num_experts), extra]))
            per_gpu = np.sort(row.reshape(topology.num_gpus, -1), axis=1)
            if not (per_gpu[:, 1:] == per_gpu[:, :-1]).any():
                rows.append(row)
                break
    return Plan(np.stack(rows), topology, num_experts)


@pytest.fixture
def random_plan():
    """`random_plan(rng, topology, num_layers, num_experts) -> Plan`: random valid plans with replicas."""
    return _random_plan


@contextlib.contextmanager
def _fresh_redis_store(name: str) -> Iterator[object]:
    """A Redis state store under a deployment of its own (`name-<random>`), its keys deleted after;
    skips the test where no redis-server answers at `REDIS_URL`."""
    import redis

    from switchyard.cluster.state.store import StateStoreUnavailable, open_state_store

    store = open_state_store(REDIS_URL, f"{name}-{uuid.uuid4().hex[:12]}")
    try:
        store.ping()
    except StateStoreUnavailable:
        pytest.skip(f"no redis-server answers at {REDIS_URL}")
    try:
        yield store
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=store.prefix + "*"))
        if keys:
            client.delete(*keys)
        store.close()


@pytest.fixture(scope="session")
def fresh_redis_store():
    """`fresh_redis_store(name)`: a context manager giving a Redis store of a fresh deployment."""
    return _fresh_redis_store


@pytest.fixture(scope="session")
def documented_series() -> set[str]:
    """Every series name in the table of docs/metrics.md, without `_total` (as Prometheus' parser names
    counter families)."""
    names = set()
    for line in (DOCS_DIR / "metrics.md").read_text().splitlines():
        if line.startswith("| `switchyard_"):
            names.add(line.split("`")[1].removesuffix("_total"))
    assert len(names) > 20, "docs/metrics.md lists the series in a table"
    return names

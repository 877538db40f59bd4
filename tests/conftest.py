"""Shared fixtures: the real routing traces beside the project (skipped with a reason where absent), one
Ray cluster for the session, Redis stores of fresh deployments. Shared functions (`wait_until`) live in
`tests/waiting.py`, importable because pyproject puts tests/ on pytest's `pythonpath`."""

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
RAY_NODES = 2
"""Simulated nodes of the session's Ray cluster; `Runtime.start` uses the first n alive ones, so
1-node runtimes run on it too."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the session's Ray cluster is a `ray` test, so `-m "not ray"` never starts it."""
    for item in items:
        if "ray_address" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The address of one simulated `RAY_NODES`-node Ray cluster that the whole session shares, started the
    first time a test asks (about 13 s, once instead of once per module) and shut down at the end.
    Nothing is connected to it here: `ray_connected` connects this process, `--address` a CLI call."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(RAY_NODES - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def ray_connected(ray_address: str) -> Iterator[str]:
    """This process connected to the session's cluster for one module (it yields the address). The module
    disconnects at its end, so a later in-process CLI call can connect itself. Nothing leaks into the
    next module: runtimes kill their actors (none named or detached) on shutdown, and whatever a
    driver leaves dies when it disconnects."""
    from switchyard.cluster.runtime.runtime import ray_cluster

    with ray_cluster(RAY_NODES, ray_address):
        yield ray_address


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

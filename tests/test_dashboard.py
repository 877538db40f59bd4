"""The dashboard and its metrics endpoint against a real 2-node local cluster, with real traffic and a real
live rebalance, and the page in a real headless Chromium.

One Ray cluster, one runtime (2 nodes x 1 worker, an engine per node), one gateway with auth, and the
dashboard on the gateway's event loop as `switchyard serve` runs it, serve the module. The module
fixture sends traffic, applies a rebalance through the gateway (admin token) and sends traffic again
until its gain is observed; the page is photographed before and after the rebalance. With
`SWITCHYARD_SCREENSHOTS=DIR` the photographs are saved there (docs/img holds the committed ones).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from switchyard.cluster.dashboard.server import DashboardConfig, DashboardServer
from switchyard.cluster.dashboard.source import BackendSource, ClientSource
from switchyard.cluster.gateway.backend import RuntimeBackend
from switchyard.cluster.rebalance.startup import record_serving_plan
from switchyard.cluster.gateway.client import Client
from switchyard.cluster.gateway.server import BackgroundGateway, GatewayConfig
from switchyard.cluster.runtime.runtime import Runtime
from switchyard.cluster.state.publisher import StatsPublisher
from switchyard.cluster.state.store import EmbeddedStateStore
from switchyard.workers.checkpoints import init_checkpoint
from waiting import wait_until

pytestmark = pytest.mark.ray

TOKEN, ADMIN = "user-token", "admin-token"
PROMPTS = [[1, 5, 9, 33, 100, 7], [4, 8, 15, 16, 23, 42, 99], [300, 2], [77, 78, 79]]
NEW_TOKENS = 8
OBSERVE_AFTER_S = 3.0
RUN_TOKENS, RESAMPLED_WINDOWS = 8, 4  # --balance-tokens, --resampled-windows
DRAWN = f", as {RESAMPLED_WINDOWS} windows drawn from their runs of {RUN_TOKENS} tokens"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _get(url: str, token: str | None = TOKEN, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _browser():
    """Headless Debian Chromium through Selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.is_file():
            pytest.skip(f"{binary} not found: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2300"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _panels(driver) -> dict[str, str | None]:
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('[data-panel]')]"
        ".map(p => [p.dataset.panel, p.dataset.rendered || null]))")


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("SWITCHYARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


@pytest.fixture(scope="module")
def cluster(ray_connected, tmp_path_factory):
    """The gateway (auth on) and the dashboard on its loop, over a 2-node runtime with a state store;
    rebalances plan on windows drawn from the store's runs (`--resampled-windows`), which the page names."""
    model_dir = init_checkpoint("mixtral", "tiny", tmp_path_factory.mktemp("dashboard") / "mixtral", skew=1.0, seed=0)
    with Runtime.start(model_dir, num_nodes=2, workers_per_node=1) as runtime:
        store = EmbeddedStateStore()
        record_serving_plan(store, runtime.plan)
        publisher = StatsPublisher(store, runtime.engines, interval_s=0.3, source="test").start()
        backend = RuntimeBackend(runtime, store=store, stats_window_s=3600, observe_after_s=OBSERVE_AFTER_S,
                                 balance_tokens=RUN_TOKENS, resampled_windows=RESAMPLED_WINDOWS)
        gateway = BackgroundGateway(GatewayConfig(port=0, token=TOKEN, admin_token=ADMIN))
        port = gateway.start()
        gateway.attach(backend)
        dashboard = DashboardServer(BackendSource(backend, gateway.gateway.servicer.requests, tuple(publisher.writers)),
                                    DashboardConfig(port=0, tokens=(TOKEN, ADMIN), refresh_s=0.5))
        address = asyncio.run_coroutine_threadsafe(dashboard.start(), gateway.loop).result()
        try:
            yield {"target": f"127.0.0.1:{port}", "dashboard": address, "publisher": publisher}
        finally:
            asyncio.run_coroutine_threadsafe(dashboard.stop(), gateway.loop).result()
            gateway.drain(0)
            publisher.stop()


def _published(client: Client, tokens: float) -> bool:
    return client.stats().num_tokens >= tokens


@pytest.fixture(scope="module")
def scenario(cluster):
    """Traffic, a photo, a live rebalance, traffic until its gain is observed, another photo."""
    driver = _browser() if CHROMIUM.is_file() and CHROMEDRIVER.is_file() else None
    forwarded = sum(len(p) + NEW_TOKENS - 1 for p in PROMPTS)
    with Client(cluster["target"], token=TOKEN) as client, Client(cluster["target"], token=ADMIN) as admin:
        client.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS)
        wait_until(lambda: _published(client, forwarded), "the first statistics in the store")
        before = None
        if driver is not None:
            driver.get(f"{cluster['dashboard']}?token={TOKEN}")
            wait_until(lambda: all(v == "true" for k, v in _panels(driver).items() if k not in ("history", "dry-run")),
                       f"every panel but the history drawn: {_panels(driver)}", timeout_s=60)
            _screenshot(driver, "dashboard-before-rebalance.png")
            before = _panels(driver)
        applied = admin.rebalance(apply=True, policy="affinity")
        assert applied.applied and applied.applied_epoch == 2
        client.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS)  # traffic on the new plan, then observed
        wait_until(lambda: any(json.loads(e)["kind"] == "observed" for e in client.events(10).event_json),
                   "the observed gain", timeout_s=OBSERVE_AFTER_S + 60)
        wait_until(lambda: _published(client, 2 * forwarded), "every statistic in the store")
        yield {"client": client, "driver": driver, "before": before, "applied": applied,
               "requests": 2 * len(PROMPTS), "tokens": 2 * len(PROMPTS) * NEW_TOKENS, **cluster}
    if driver is not None:
        driver.quit()


def _scrape(url: str) -> dict[str, list]:
    status, text = _get(url)
    assert status == 200, text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_after_traffic_agree_with_getstats(scenario, documented_series):
    client = scenario["client"]
    stats, placement = client.stats(), client.placement()
    families = _scrape(f"{scenario['dashboard']}metrics")
    missing = documented_series - set(families) - {"switchyard_expert_load", "switchyard_expert_replicas"}
    assert not missing, f"documented but not exported: {sorted(missing)}"

    def values(name: str) -> list:
        return [sample for sample in families[name] if not sample.name.endswith("_created")]

    def one(name: str) -> float:
        (sample,) = values(name)
        return sample.value

    assert one("switchyard_requests_started") == scenario["requests"]
    assert sum(s.value for s in values("switchyard_requests_finished")) == scenario["requests"]
    assert one("switchyard_generated_tokens") == scenario["tokens"]
    ttft_count = [s for s in values("switchyard_time_to_first_token_seconds") if s.name.endswith("_count")]
    assert ttft_count[0].value == scenario["requests"]
    traffic = values("switchyard_hidden_state_bytes")
    assert sum(s.value for s in traffic if s.labels["locality"] == "cross_node") == stats.traffic.cross_node_bytes > 0
    assert sum(s.value for s in traffic if s.labels["locality"] == "same_node") == stats.traffic.same_node_bytes > 0
    assert one("switchyard_plan_epoch") == placement.epoch == 2
    assert {s.value for s in values("switchyard_engine_plan_epoch")} == {2}
    assert one("switchyard_balancedness") == pytest.approx(stats.balancedness)
    assert one("switchyard_stats_window_tokens") == stats.num_tokens
    load = np.array([list(layer.expert_load) for layer in stats.layers])
    per_layer = np.zeros(len(load))
    for sample in values("switchyard_gpu_load"):
        per_layer[int(sample.labels["layer"])] += sample.value
    np.testing.assert_allclose(per_layer, load.sum(axis=1))
    assert {s.labels["kind"]: s.value for s in values("switchyard_rebalances")}["rebalance"] == 1
    applied = scenario["applied"]
    predicted = {(s.labels["figure"], s.labels["plan"]): s.value for s in values("switchyard_last_rebalance_predicted")}
    assert predicted["balancedness", "current"] == pytest.approx(applied.current.balancedness)
    assert predicted["balancedness", "proposed"] == pytest.approx(applied.proposed.balancedness)
    assert {s.labels["when"] for s in values("switchyard_last_rebalance_observed_cross_node_bytes_per_token")} == {
        "before", "after"}
    assert "switchyard_expert_load" not in families
    per_expert = _scrape(f"{scenario['dashboard']}metrics?per_expert=true")
    expert_load = {(int(s.labels["layer"]), int(s.labels["expert"])): s.value for s in per_expert["switchyard_expert_load"]}
    assert expert_load == {(layer, expert): load[layer, expert] for layer, expert in np.ndindex(load.shape)}


def test_page_renders_every_panel_with_data(scenario):
    driver = scenario["driver"]
    if driver is None:
        _browser()  # skips with the reason
    client = scenario["client"]
    assert scenario["before"]["history"] == "false"  # before the rebalance: no history yet
    driver.get(f"{scenario['dashboard']}?token={TOKEN}")
    wait_until(lambda: (panels := _panels(driver)) and all(v == "true" for k, v in panels.items() if k != "dry-run"),
               f"every panel drawn: {_panels(driver)}", timeout_s=60)
    driver.find_element("id", "dry-run-button").click()
    wait_until(lambda: _panels(driver)["dry-run"] == "true", "the dry run's table", timeout_s=120)
    dry_run_text = driver.find_element("id", "dry-run-result").text
    assert f"window(s), each older one weighted 0.5 of the next{DRAWN}" in dry_run_text
    assert "; overload priced at balance feedback level " in dry_run_text  # the dry run plans with affinity
    _screenshot(driver, "dashboard-after-rebalance.png")

    load = np.array([list(layer.expert_load) for layer in client.stats().layers])
    layer, expert = np.unravel_index(int(np.argmax(load)), load.shape)
    drawn = driver.execute_script(
        "const items = window.switchyard.charts['expert-heatmap'].getOption().series[0].data;"
        "const top = items.reduce((a, b) => (b.value[2] > a.value[2] ? b : a));"
        "const outlined = items.filter(i => i.itemStyle && i.itemStyle.borderWidth === 2);"
        "return {top: top.value, outlined: outlined.map(i => i.value)};")
    assert drawn["top"][:2] == [expert, layer] and drawn["top"][2] == pytest.approx(load[layer, expert], abs=1e-3)
    assert drawn["outlined"] == [drawn["top"]]

    def history_rows() -> list[dict[str, str]]:
        return driver.execute_script(  # in one call: the table is redrawn every refresh
            "return [...document.querySelectorAll('#history-table tr.rebalance')]"
            ".map(r => ({text: r.innerText, observed: r.querySelector('td.observed').innerText}));")

    # The observed event is in the store (the scenario waited for it); the page shows it once its
    # sampler's next reading reaches the browser's next refresh.
    rows = wait_until(lambda: (rows := history_rows()) and "pending" not in rows[0]["observed"] and rows,
                      f"the observed gain on the page: {history_rows()}", timeout_s=30)
    assert len(rows) == 1
    applied = scenario["applied"]
    assert "1 → 2" in rows[0]["text"] and "affinity on the last" in rows[0]["text"] and DRAWN in rows[0]["text"]
    assert "; overload priced at balance feedback level 0" in rows[0]["text"]  # the first priced plan
    assert f"{applied.current.balancedness:.3f} → {applied.proposed.balancedness:.3f}" in rows[0]["text"]
    assert "→" in rows[0]["observed"] and "pending" not in rows[0]["observed"]

    driver.delete_all_cookies()
    driver.get(f"{scenario['dashboard']}api/view")
    assert "missing or wrong token" in driver.page_source


def test_dashboard_against_a_running_gateway(scenario):
    """`switchyard dashboard --server`: the same readings through the gRPC API."""
    with Client(scenario["target"], token=TOKEN) as client, Client(scenario["target"], token=ADMIN) as admin:
        source = ClientSource(client, admin)
        view = asyncio.run(source.view())
        stats = client.stats()
        assert view.epoch == 2 and view.cross_node_bytes() == stats.traffic.cross_node_bytes
        assert view.requests.started == scenario["requests"] and len(view.rebalances()) == 1
        drawn = {"windows": RESAMPLED_WINDOWS, "run_tokens": RUN_TOKENS}
        assert view.rebalances()[0]["observed"] is not None and view.rebalances()[0]["memory"]["windows"] >= 1
        assert view.rebalances()[0]["memory"]["resampled"] == drawn
        dry_run = asyncio.run(source.dry_run("eplb", None))
        assert dry_run["policy"] == "eplb" and dry_run["memory"]["windows"] >= 1  # the windows it planned on
        assert dry_run["memory"]["resampled"] == drawn and dry_run["feedback_level"] is None  # EPLB is not priced
        assert asyncio.run(source.dry_run("affinity", None))["feedback_level"] in (0, 1)
        user_only = ClientSource(client)
        with pytest.raises(Exception, match="admin token"):
            asyncio.run(user_only.dry_run("eplb", None))


@pytest.mark.parametrize(("path", "method", "token", "status", "message"), [
    ("nope", "GET", TOKEN, 404, "no such path '/nope'"),
    ("static/../app.py", "GET", TOKEN, 404, "no static file"),
    ("metrics?per_expert=maybe", "GET", TOKEN, 400, "per_expert must be true or false"),
    ("metrics?colour=red", "GET", TOKEN, 400, "unknown query parameter(s) colour"),
    ("api/dry-run?policy=fastest", "GET", TOKEN, 400, "unknown policy 'fastest'"),
    ("api/dry-run?max_moves=-1", "GET", TOKEN, 400, "max_moves must be at least 0"),
    ("api/dry-run?max_moves=two", "GET", TOKEN, 400, "max_moves must be an integer"),
    ("api/view", "POST", TOKEN, 405, "read-only"),
    ("api/view", "GET", None, 401, "missing or wrong token"),
    ("metrics", "GET", "guess", 401, "missing or wrong token"),
    ("?token=guess", "GET", None, 401, "wrong token"),
], ids=["unknown-path", "static-escape", "bad-bool", "unknown-param", "bad-policy", "negative-moves", "text-moves",
        "post", "no-token", "wrong-token", "wrong-token-link"])
def test_bad_requests_get_4xx_with_a_message(cluster, path, method, token, status, message):
    code, body = _get(cluster["dashboard"] + path, token, method)
    assert code == status, body
    assert message in json.loads(body)["error"] and "Traceback" not in body


def test_probe_needs_no_token(cluster):
    assert _get(cluster["dashboard"] + "healthz", None) == (200, "ok\n")

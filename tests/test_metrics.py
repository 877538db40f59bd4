"""The metrics exposition without a cluster: bounded cardinality at DeepSeek-V3 scale, request counters
and their quantiles, the page's time series (the endpoint against a real cluster is in test_dashboard.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from switchyard.cluster.cli.main import main
from switchyard.cluster.dashboard.history import History, Sample
from switchyard.cluster.dashboard.metrics import exposition
from switchyard.cluster.dashboard.requests import HistogramTotals, RequestMetrics, RequestTotals
from switchyard.cluster.dashboard.view import ClusterView, EngineTraffic
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology

GRAFANA = Path(__file__).resolve().parents[1] / "helm" / "switchyard" / "dashboards" / "switchyard.json"
LAYERS, EXPERTS, NODES, GPUS_PER_NODE = 58, 256, 4, 8  # DeepSeek-V3's MoE layers and experts on 32 GPUs


def _view(num_layers: int, num_experts: int, num_nodes: int, gpus_per_node: int, engines_per_node: int = 1
          ) -> ClusterView:
    rng = np.random.default_rng(0)
    load = rng.gamma(1.0, 100.0, (num_layers, num_experts))
    topology = Topology.for_experts(num_experts, num_nodes, gpus_per_node, slots_per_gpu=num_experts // (
        num_nodes * gpus_per_node) + 1)
    plan = get_policy("eplb").place(RoutingStats.from_load(load), topology)
    engines = tuple(EngineTraffic(e % num_nodes, tuple(rng.integers(0, 10**6, topology.num_gpus).tolist()),
                                  tuple(rng.integers(0, 10**3, topology.num_gpus).tolist()))
                    for e in range(num_nodes * engines_per_node))
    event = {"kind": "rebalance", "from_epoch": 1, "epoch": 2, "policy": "eplb", "copies": 3, "bytes_copied": 10,
             "apply_seconds": 0.5, "timestamp": 1.0, "predicted_before": {"balancedness": 0.7},
             "predicted_after": {"balancedness": 0.9}}
    return ClusterView({"family": "deepseek_v3", "model_dir": "/m", "num_layers": num_layers,
                        "num_experts": num_experts, "top_k": 8}, 2, plan, (2,) * len(engines), load,
                       float(load.sum()), 0.9, 60.0, 0.0, engines, (0,) * len(engines), (0,) * len(engines), (event,),
                       RequestMetrics().totals(), {"buffered": 0, "dropped": 0, "errors": 0})


def _series(text: bytes) -> list:
    return [sample for family in text_string_to_metric_families(text.decode()) for sample in family.samples]


def test_cardinality_is_layers_times_gpus_at_deepseek_scale():
    view = _view(LAYERS, EXPERTS, NODES, GPUS_PER_NODE)
    gpus = NODES * GPUS_PER_NODE
    default = _series(exposition(view.requests, view))
    assert not any("expert" in sample.labels for sample in default)
    assert sum(sample.name == "switchyard_gpu_load" for sample in default) == LAYERS * gpus
    other = len(default) - LAYERS * gpus - LAYERS  # not per layer x GPU, nor per layer
    assert other < 150, f"{other} series besides the per-layer ones"
    per_expert = _series(exposition(view.requests, view, per_expert=True))
    assert len(per_expert) - len(default) == 2 * LAYERS * EXPERTS  # load and replicas, only when asked
    more_experts = _view(LAYERS, 2 * EXPERTS, NODES, GPUS_PER_NODE)  # experts do not add default series
    assert len(_series(exposition(more_experts.requests, more_experts))) == len(default)


def test_a_failed_read_still_exports_request_counters():
    text = exposition(RequestTotals.empty(), None, view_error="the state store is unreachable").decode()
    assert text.startswith("# switchyard_up is 0: the state store is unreachable")
    assert "switchyard_up 0.0" in text and "switchyard_requests_started_total 0.0" in text


def test_request_timer_counts_tokens_gaps_and_endings():
    metrics = RequestMetrics()
    timer = metrics.timer()
    timer.tokens(1)
    timer.tokens(3)
    timer.finished("length")
    metrics.timer().close()  # its caller went away
    metrics.timer().failed("INVALID_ARGUMENT")
    totals = metrics.totals()
    assert (totals.started, totals.generated_tokens) == (3, 4)
    assert totals.finished == {"length": 1} and totals.failed == {"CANCELLED": 1, "INVALID_ARGUMENT": 1}
    assert totals.time_to_first_token.count == 1 and totals.inter_token.count == 3


@pytest.mark.parametrize(("cumulative", "q", "expected"), [
    ((0, 10, 10), 0.5, 1.5),  # all in (1, 2]: halfway
    ((10, 10, 10), 0.99, 0.99),  # all in (0, 1]
    ((0, 0, 10), 0.5, 2.0),  # all above the last bound: the last bound (PromQL's +Inf rule)
    ((0, 0, 0), 0.5, None),
], ids=["middle-bucket", "first-bucket", "inf-bucket", "empty"])
def test_quantile_follows_promql(cumulative, q, expected):
    assert HistogramTotals((1.0, 2.0), cumulative, 0.0).quantile(q) == expected


def test_history_rates_over_a_window():
    history = History(max_samples=4, window_s=2.0)
    base = RequestTotals.empty()
    for second in range(6):
        history.add(Sample(float(second), RequestTotals(second * 3, {}, {}, second * 30, base.time_to_first_token,
                                                        base.inter_token), (second,)))
    series = history.series()
    assert len(history.samples) == 4 and series["t"] == [3.0, 4.0, 5.0]
    assert series["request_rate"] == [3.0, 3.0, 3.0] and series["token_rate"] == [30.0, 30.0, 30.0]
    assert series["ttft_p50"] == [None, None, None] and series["queue_depths"] == [[3, 4, 5]]


def test_grafana_dashboard_queries_documented_series(documented_series):
    dashboard = json.loads(GRAFANA.read_text())
    assert len(dashboard["panels"]) >= 12
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"switchyard_\w+", target["expr"]):
                base = re.sub(r"_(total|bucket|count|sum)$", "", name)
                assert base in documented_series, f"{panel['title']}: {name} is not in docs/metrics.md"


def test_every_exported_series_is_documented(documented_series):
    view = _view(2, 8, 2, 2)
    names = {family.name for family in text_string_to_metric_families(
        exposition(view.requests, view, per_expert=True).decode())}
    assert names <= documented_series, f"undocumented: {sorted(names - documented_series)}"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--server", "localhost"], 2, "--server must be HOST:PORT"),
    (["--server", "127.0.0.1:1", "--port", "0"], 1, "cannot reach the gateway at 127.0.0.1:1"),
    (["--server", "127.0.0.1:50051", "--refresh", "0"], 2, "--refresh"),
], ids=["no-port", "unreachable", "zero-refresh"])
def test_dashboard_command_bad_input_is_one_line(args, code, message):
    result = CliRunner().invoke(main, ["dashboard", *args])
    assert result.exit_code == code and message in result.output, result.output
    assert result.output.count("\n") == 1

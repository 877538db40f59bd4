"""The Prometheus exposition of a `ClusterView`, computed when scraped.

Nothing here runs on the serving path: request counters are counted by the gateway
(`switchyard.cluster.dashboard.requests`), and every gauge is computed from the view read at scrape
time (the same reading the page draws), so a scrape costs one GetStats-sized read and nothing between
scrapes. Names and units follow Prometheus' and Ray's conventions: one `switchyard_` namespace,
`_total` counters, `_seconds` and `_bytes` units, snake_case labels. Series are bounded by layers x
GPUs; per-expert series (layers x experts) only when asked (`per_expert`). Every series, with the
PromQL of each dashboard panel, is listed in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from switchyard.cluster.dashboard.requests import HistogramTotals, RequestTotals
from switchyard.cluster.dashboard.view import PREDICTED_FIGURES, ClusterView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def request_families(totals: RequestTotals) -> Iterator[Metric]:
    """The gateway's request counters and latency histograms."""
    yield _counter("switchyard_requests_started", "Requests accepted by the gateway.", value=totals.started)
    finished = CounterMetricFamily("switchyard_requests_finished", "Requests that ended with their last token, "
                                   "by finish reason.", labels=["reason"])
    for reason, count in sorted(totals.finished.items()):
        finished.add_metric([reason], count)
    yield finished
    failed = CounterMetricFamily("switchyard_requests_failed", "Requests that ended with an error, by gRPC "
                                 "status code.", labels=["code"])
    for code, count in sorted(totals.failed.items()):
        failed.add_metric([code], count)
    yield failed
    yield _counter("switchyard_generated_tokens", "Tokens streamed to callers.", value=totals.generated_tokens)
    yield _histogram("switchyard_time_to_first_token_seconds", "Seconds from a request's arrival at the gateway "
                     "to its first token.", totals.time_to_first_token)
    yield _histogram("switchyard_inter_token_latency_seconds", "Seconds between two tokens of one request.",
                     totals.inter_token)


def view_families(view: ClusterView, per_expert: bool = False) -> Iterator[Metric]:
    """Every gauge and counter read off `view` (module doc); `per_expert` adds layer x expert series."""
    topology = view.plan.topology
    node_of_gpu = view.node_of_gpu()
    yield _gauge("switchyard_model_info", "The served model (value 1).", ["family", "model_dir"],
                 [([view.model["family"], view.model["model_dir"]], 1)])
    yield _gauge("switchyard_plan_epoch", "Epoch of the active placement plan.", value=view.epoch)
    engine_labels = [[str(e), str(engine.home_node)] for e, engine in enumerate(view.engines)]
    yield _gauge("switchyard_engine_plan_epoch", "Epoch each engine replica dispatches under.", ["engine", "node"],
                 zip(engine_labels, view.engine_epochs))
    yield _gauge("switchyard_engine_queue_depth", "Requests the gateway has in flight on each engine replica.",
                 ["engine", "node"], zip(engine_labels, view.queue_depths))
    yield _gauge("switchyard_engine_active_batch", "Requests in each engine replica's decode batch after its "
                 "latest step.", ["engine", "node"], zip(engine_labels, view.active_batches))
    yield _gauge("switchyard_stats_window_tokens", "Tokens in the routing statistics window.",
                 value=view.num_tokens)
    yield _gauge("switchyard_stats_window_seconds", "Length of the statistics window in seconds (0: a token "
                 "window, or since loading).", value=view.window_s)
    yield _gauge("switchyard_balancedness", "Mean over max GPU load of the active plan on the window, summed "
                 "over layers (vLLM's EPLB balancedness; 1 is perfect).", value=view.balancedness)
    yield _gauge("switchyard_layer_balancedness", "Mean over max GPU load of one layer on the window.", ["layer"],
                 (([str(layer)], value) for layer, value in enumerate(view.layer_balancedness())))
    gpu_load = view.gpu_load()
    yield _gauge("switchyard_gpu_load", "Tokens each GPU's experts serve per layer on the window (expert "
                 "load split over replicas).", ["layer", "gpu", "node"],
                 (([str(layer), str(gpu), str(node_of_gpu[gpu])], gpu_load[layer, gpu])
                  for layer in range(gpu_load.shape[0]) for gpu in range(topology.num_gpus)))
    if per_expert:
        yield _gauge("switchyard_expert_load", "Tokens that picked each expert on the window.", ["layer", "expert"],
                     (([str(layer), str(expert)], view.load[layer, expert])
                      for layer in range(view.load.shape[0]) for expert in range(view.load.shape[1])))
        replicas = view.plan.replica_count
        yield _gauge("switchyard_expert_replicas", "Replicas of each expert in the active plan.",
                     ["layer", "expert"], (([str(layer), str(expert)], replicas[layer, expert])
                                           for layer in range(replicas.shape[0]) for expert in range(replicas.shape[1])))
    yield from _traffic(view)
    yield from _rebalances(view)
    if view.store is not None:
        yield _gauge("switchyard_stats_buffered_entries", "Routing statistics entries waiting for the state "
                     "store to come back.", value=view.store["buffered"])
        yield _counter("switchyard_stats_dropped_entries", "Routing statistics entries lost to the outage "
                       "buffer's bound.", value=view.store["dropped"])
        yield _counter("switchyard_state_store_errors", "Failed writes of routing statistics to the state store.",
                       value=view.store["errors"])


def _traffic(view: ClusterView) -> Iterator[Metric]:
    for name, tokens, doc in (
            ("switchyard_hidden_state_bytes", False, "Hidden-state bytes between engines on src_node and expert "
             "workers on dst_node (dispatch and combine)."),
            ("switchyard_hidden_state_token_vectors", True, "Token vectors engines on src_node sent to expert "
             "workers on dst_node.")):
        matrix = view.node_bytes(tokens=tokens)
        family = CounterMetricFamily(name, doc, labels=["src_node", "dst_node", "locality"])
        for src in range(matrix.shape[0]):
            for dst in range(matrix.shape[1]):
                family.add_metric([str(src), str(dst), "same_node" if src == dst else "cross_node"],
                                  int(matrix[src, dst]))
        yield family


def _rebalances(view: ClusterView) -> Iterator[Metric]:
    applied = view.rebalances()
    counts = {kind: sum(1 for event in applied if event["kind"] == kind) for kind in ("rebalance", "rollback")}
    yield _gauge("switchyard_rebalances", "Applied rebalances and rollbacks in the state store's event log.",
                 ["kind"], (([kind], count) for kind, count in counts.items()))
    yield _gauge("switchyard_rebalance_failures", "Rebalance attempts that moved nothing, in the event log.",
                 value=view.failed_rebalances())
    yield _gauge("switchyard_rebalance_apply_seconds", "Wall seconds of all applied migrations in the event log.",
                 value=sum(event.get("apply_seconds", 0.0) for event in applied))
    yield _gauge("switchyard_rebalance_bytes_copied", "Expert weight bytes copied by the applied migrations in "
                 "the event log.", value=sum(event.get("bytes_copied", 0) for event in applied))
    if not applied:
        return
    last = applied[0]
    yield _gauge("switchyard_last_rebalance_timestamp_seconds", "When the last rebalance was applied (Unix time).",
                 value=last.get("timestamp", 0.0))
    yield _gauge("switchyard_last_rebalance_seconds", "Wall seconds of the last applied migration.",
                 value=last.get("apply_seconds", 0.0))
    predicted = GaugeMetricFamily("switchyard_last_rebalance_predicted", "The last rebalance's predicted figures "
                                  "of the plan before (current) and after (proposed) on its window.",
                                  labels=["figure", "plan"])
    for plan, key in (("current", "predicted_before"), ("proposed", "predicted_after")):
        for figure in PREDICTED_FIGURES:
            value = (last.get(key) or {}).get(figure)
            if value is not None:
                predicted.add_metric([figure, plan], value)
    yield predicted
    observed = last.get("observed")
    if observed is None:
        return
    per_token = GaugeMetricFamily("switchyard_last_rebalance_observed_cross_node_bytes_per_token", "Cross-node "
                                  "bytes per token vector measured before the last rebalance (since loading) "
                                  "and after it (since the switch).", labels=["when"])
    for when in ("before", "after"):
        value = observed.get(f"cross_node_bytes_per_token_{when}")
        if value is not None:
            per_token.add_metric([when], value)
    yield per_token
    yield _gauge("switchyard_last_rebalance_observed_balancedness", "Balancedness on the window measured after "
                 "the last rebalance.", value=observed.get("balancedness", 0.0))


def _gauge(name: str, doc: str, labels: list[str] | None = None, samples: Iterable[tuple[list[str], Any]] = (),
           value: float | None = None) -> GaugeMetricFamily:
    if value is not None:
        return GaugeMetricFamily(name, doc, value=float(value))
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, sample in samples:
        family.add_metric(label_values, float(sample))
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _histogram(name: str, doc: str, totals: HistogramTotals) -> HistogramMetricFamily:
    buckets = [(f"{bound:g}", count) for bound, count in zip(totals.upper_bounds, totals.cumulative)]
    buckets.append(("+Inf", totals.count))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=totals.sum)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(requests: RequestTotals, view: ClusterView | None, per_expert: bool = False,
               view_error: str | None = None) -> bytes:
    """The text format of one scrape. view: None when it could not be read (`switchyard_up` 0, the
    request metrics still there); view_error: why, as a comment line."""
    families = list(request_families(requests))
    families.append(_gauge("switchyard_up", "1 when the scrape could read the cluster's placement and statistics.",
                           value=0 if view is None else 1))
    if view is not None:
        families.extend(view_families(view, per_expert))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    text = generate_latest(registry)
    if view_error:
        text = f"# switchyard_up is 0: {view_error}\n".encode() + text
    return text

"""The ops dashboard and metrics: a page and a Prometheus endpoint that show expert load, traffic,
latency and rebalances, read from what the gateway serves (docs/dashboard.md, docs/metrics.md).

- `view`: `ClusterView`, one reading of the cluster, and the figures every panel and gauge comes from.
- `source`: where readings come from: the gateway's backend in-process, or a gateway over gRPC.
- `requests`: request counters and latency histograms, recorded by the gateway.
- `metrics`: the Prometheus exposition of a view, computed at scrape time.
- `history`, `sampler`: the background readings and the page's time series.
- `app`, `server`: the Starlette app (routes, auth, 4xx answers) and uvicorn on the caller's loop.
- `static/`: the page, its script and style, and the vendored Apache ECharts (with its licence).
"""

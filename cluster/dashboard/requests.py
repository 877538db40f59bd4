"""Request metrics recorded at the gateway: started, finished by reason, failed by status code, tokens,
time to first token and inter-token latency.

The gateway's servicer owns one `RequestMetrics` and opens a `RequestTimer` per request (a prompt of
`Generate`, or one prompt of `GenerateBatch`). Counting is prometheus_client's (its own registry, not
the process-global one, so two gateways in one process never share counters). `totals()` reads them
back as plain `RequestTotals`, which is what `GetRequestMetrics` carries and what the dashboard's
time series and its metrics endpoint are built from, whether the gateway runs in the same process or
behind a gRPC channel.

Histogram buckets are vLLM's (`vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds`),
so panels and alert rules written for vLLM read the same ranges here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0)


@dataclass(frozen=True)
class HistogramTotals:
    """One histogram's state. upper_bounds: `[B]` finite bucket bounds (seconds), ascending.
    cumulative: `[B + 1]` int64 observations <= each bound, the last one for +Inf (= count)."""

    upper_bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def minus(self, earlier: HistogramTotals) -> HistogramTotals:
        """The observations made since `earlier` (same buckets)."""
        return HistogramTotals(self.upper_bounds, tuple(np.subtract(self.cumulative, earlier.cumulative).tolist()),
                               self.sum - earlier.sum)

    def quantile(self, q: float) -> float | None:
        """PromQL's `histogram_quantile`: linear inside the bucket holding rank q * count; None when
        empty; the highest finite bound when the rank falls in +Inf."""
        if self.count <= 0:
            return None
        rank = q * self.count
        cumulative = np.asarray(self.cumulative, dtype=np.float64)
        bucket = int(np.searchsorted(cumulative, rank, side="left"))
        if bucket >= len(self.upper_bounds):
            return float(self.upper_bounds[-1])
        lower = 0.0 if bucket == 0 else self.upper_bounds[bucket - 1]
        below = 0.0 if bucket == 0 else cumulative[bucket - 1]
        inside = cumulative[bucket] - below
        fraction = (rank - below) / inside if inside > 0 else 1.0
        return float(lower + (self.upper_bounds[bucket] - lower) * fraction)


@dataclass(frozen=True)
class RequestTotals:
    """Counts since the gateway started. finished: by finish reason ("length", "stop").  failed: by gRPC
    status code name ("INVALID_ARGUMENT", "CANCELLED", ...)."""

    started: int
    finished: dict[str, int]
    failed: dict[str, int]
    generated_tokens: int
    time_to_first_token: HistogramTotals
    inter_token: HistogramTotals
    taken_at: float = field(default_factory=time.time)

    @classmethod
    def empty(cls) -> RequestTotals:
        return cls(0, {}, {}, 0, HistogramTotals(TTFT_BUCKETS, (0,) * (len(TTFT_BUCKETS) + 1), 0.0),
                   HistogramTotals(INTER_TOKEN_BUCKETS, (0,) * (len(INTER_TOKEN_BUCKETS) + 1), 0.0))


class RequestTimer:
    """One request's clock: `tokens(n)` per chunk streamed, then `finished(reason)` or `failed(code)`;
    `close()` counts a request that ended with neither (its caller went away) as CANCELLED."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics
        self.start = self.last = time.perf_counter()
        self.first_token_at: float | None = None
        self.ended = False
        metrics.started.inc()

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        self.metrics.generated_tokens.inc(count)
        gaps = count
        if self.first_token_at is None:
            self.first_token_at = now
            self.metrics.time_to_first_token.observe(now - self.start)
            gaps -= 1  # the first token has no gap before it
        for _ in range(gaps):  # a chunk of several tokens: its wait shared evenly
            self.metrics.inter_token.observe((now - self.last) / gaps)
        self.last = now

    def finished(self, reason: str) -> None:
        self.ended = True
        self.metrics.finished.labels(reason=reason).inc()

    def failed(self, code: str) -> None:
        self.ended = True
        self.metrics.failed.labels(code=code).inc()

    def close(self) -> None:
        if not self.ended:
            self.failed("CANCELLED")


class RequestMetrics:
    """The gateway's request counters and latency histograms (module doc)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = Counter("switchyard_requests_started", "Requests accepted by the gateway.",
                               registry=self.registry)
        self.finished = Counter("switchyard_requests_finished", "Requests that ended with their last token.",
                                ["reason"], registry=self.registry)
        self.failed = Counter("switchyard_requests_failed", "Requests that ended with an error status.", ["code"],
                              registry=self.registry)
        self.generated_tokens = Counter("switchyard_generated_tokens", "Tokens streamed to callers.",
                                        registry=self.registry)
        self.time_to_first_token = Histogram(
            "switchyard_time_to_first_token_seconds", "Seconds from a request's arrival to its first token.",
            buckets=TTFT_BUCKETS, registry=self.registry)
        self.inter_token = Histogram(
            "switchyard_inter_token_latency_seconds", "Seconds between two tokens of one request.",
            buckets=INTER_TOKEN_BUCKETS, registry=self.registry)

    def timer(self) -> RequestTimer:
        return RequestTimer(self)

    def totals(self) -> RequestTotals:
        """The counters as they are now (read through the registry, as a scrape would)."""
        samples = {}
        finished: dict[str, int] = {}
        failed: dict[str, int] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == "switchyard_requests_finished_total":
                    finished[sample.labels["reason"]] = int(sample.value)
                elif sample.name == "switchyard_requests_failed_total":
                    failed[sample.labels["code"]] = int(sample.value)
                else:
                    samples[(sample.name, sample.labels.get("le"))] = sample.value

        def histogram(name: str, bounds: tuple[float, ...]) -> HistogramTotals:
            cumulative = [int(samples[(f"{name}_bucket", _le(bound))]) for bound in bounds]
            cumulative.append(int(samples[(f"{name}_bucket", "+Inf")]))
            return HistogramTotals(bounds, tuple(cumulative), float(samples[(f"{name}_sum", None)]))

        return RequestTotals(
            int(samples[("switchyard_requests_started_total", None)]), finished, failed,
            int(samples[("switchyard_generated_tokens_total", None)]),
            histogram("switchyard_time_to_first_token_seconds", TTFT_BUCKETS),
            histogram("switchyard_inter_token_latency_seconds", INTER_TOKEN_BUCKETS))


def _le(bound: float) -> str:
    """prometheus_client's label text of a bucket bound (`floatToGoString`)."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)

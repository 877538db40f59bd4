"""The page's time series: request rate, tokens/s, TTFT and inter-token p50/p99, engine queue depths.

The dashboard samples the gateway's cumulative request counters every refresh (`History.add`) and
turns them into rates and quantiles the way PromQL does (`rate` over a window, `histogram_quantile`
of the window's bucket increase), so the page and a Grafana panel on docs/metrics.md's queries read
alike. The samples are a bounded ring: memory stays flat however long the dashboard runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from switchyard.cluster.dashboard.requests import RequestTotals


@dataclass(frozen=True)
class Sample:
    """One reading: when (Unix seconds), the request counters, and `[R]` queue depths per engine."""

    taken_at: float
    requests: RequestTotals
    queue_depths: tuple[int, ...]


class History:
    """At most `max_samples` samples, oldest first; rates and quantiles over `window_s` seconds."""

    def __init__(self, max_samples: int = 900, window_s: float = 10.0) -> None:
        if max_samples < 2 or not window_s > 0:
            raise ValueError(f"need at least 2 samples and a positive window, got {max_samples}, {window_s!r}")
        self.window_s = window_s
        self.samples: deque[Sample] = deque(maxlen=max_samples)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def series(self) -> dict[str, Any]:
        """Columns for the page's charts, one value per sample after the first (null where a window
        saw no observation): `t`, `request_rate`, `token_rate`, `ttft_p50`, `ttft_p99`, `itl_p50`,
        `itl_p99`, and `queue_depths` `[R][T]`."""
        samples = list(self.samples)
        columns: dict[str, list[Any]] = {key: [] for key in (
            "t", "request_rate", "token_rate", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99")}
        start = 0
        for now in samples[1:]:
            while start + 1 < len(samples) and now.taken_at - samples[start + 1].taken_at >= self.window_s:
                start += 1
            then = samples[start]
            seconds = now.taken_at - then.taken_at
            if seconds <= 0:
                continue
            ttft = now.requests.time_to_first_token.minus(then.requests.time_to_first_token)
            itl = now.requests.inter_token.minus(then.requests.inter_token)
            columns["t"].append(now.taken_at)
            columns["request_rate"].append((now.requests.started - then.requests.started) / seconds)
            columns["token_rate"].append((now.requests.generated_tokens - then.requests.generated_tokens) / seconds)
            columns["ttft_p50"].append(ttft.quantile(0.5))
            columns["ttft_p99"].append(ttft.quantile(0.99))
            columns["itl_p50"].append(itl.quantile(0.5))
            columns["itl_p99"].append(itl.quantile(0.99))
        engines = max((len(s.queue_depths) for s in samples), default=0)
        columns["queue_depths"] = [[s.queue_depths[e] if e < len(s.queue_depths) else None for s in samples[1:]]
                                   for e in range(engines)]
        return columns

"""Request counts, latencies and errors in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters per (method, route, status) and a latency histogram per (method, route).

    `route` is the route's template (/items/{item_id}), never the raw path, so that the
    number of series stays bounded whatever clients send."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            key = (method, route)
            counts = self._buckets.setdefault(key, [0] * (len(BUCKETS) + 1))
            counts[bisect_left(BUCKETS, seconds)] += 1
            self._sums[key] += seconds

    def render(self, gauges: dict[str, float]) -> str:
        """The exposition text; `gauges` are name -> value of the moment (items, uptime)."""
        lines = [
            "# HELP deepembed_requests_total HTTP requests by method, route and status.",
            "# TYPE deepembed_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                labels = f'method="{method}",route="{route}",status="{status}"'
                lines.append(f"deepembed_requests_total{{{labels}}} {n}")
            errors: dict[tuple[str, str], int] = defaultdict(int)
            for (method, route, status), n in self._requests.items():
                if status >= 400:
                    errors[(method, route)] += n
            lines += [
                "# HELP deepembed_request_errors_total HTTP requests answered 4xx or 5xx.",
                "# TYPE deepembed_request_errors_total counter",
            ]
            for (method, route), n in sorted(errors.items()):
                lines.append(
                    f'deepembed_request_errors_total{{method="{method}",route="{route}"}} {n}'
                )
            lines += [
                "# HELP deepembed_request_seconds HTTP request latency.",
                "# TYPE deepembed_request_seconds histogram",
            ]
            for (method, route), counts in sorted(self._buckets.items()):
                base = f'method="{method}",route="{route}"'
                total = 0
                for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                    total += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'deepembed_request_seconds_bucket{{{base},le="{le}"}} {total}')
                lines.append(
                    f"deepembed_request_seconds_sum{{{base}}} {self._sums[(method, route)]}"
                )
                lines.append(f"deepembed_request_seconds_count{{{base}}} {total}")
        for name, value in gauges.items():
            lines += [f"# TYPE deepembed_{name} gauge", f"deepembed_{name} {value}"]
        return "\n".join(lines) + "\n"

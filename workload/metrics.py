"""Latency percentiles in constant memory, shared by CDC lag, transaction latency, end-to-end.

A run may record millions of samples; keeping them all would make a consumer's memory grow
with the run. :class:`Histogram` buckets samples on a log scale instead (each bucket 1% wider
than the last, like HdrHistogram's fixed relative precision): memory depends only on the range
of values seen, a percentile is exact to within 1%, and histograms from several consumers
merge by adding counts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

GROWTH = 1.01  # relative width of a bucket: percentiles are exact to within 1%
_LOG_GROWTH = math.log(GROWTH)
MIN_VALUE = 1e-6  # seconds; anything smaller lands in bucket 0
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


class Histogram:
    """Thread-safe log-bucketed histogram of non-negative values (seconds, by convention)."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf

    @staticmethod
    def _bucket(value: float) -> int:
        if value <= MIN_VALUE:
            return 0
        return int(math.log(value / MIN_VALUE) / _LOG_GROWTH) + 1

    @staticmethod
    def _bucket_value(bucket: int) -> float:
        """The midpoint of a bucket, the value reported for every sample in it."""
        if bucket == 0:
            return MIN_VALUE
        low = MIN_VALUE * GROWTH ** (bucket - 1)
        return low * (1 + GROWTH) / 2

    def record(self, value: float) -> None:
        if value < 0 or math.isnan(value):
            raise ValueError(f"a latency cannot be {value}")
        bucket = self._bucket(value)
        with self._lock:
            self._counts[bucket] = self._counts.get(bucket, 0) + 1
            self.count += 1
            self.total += value
            self.max = max(self.max, value)
            self.min = min(self.min, value)

    def record_many(self, values: Iterable[float]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: Histogram) -> None:
        with other._lock:
            counts = dict(other._counts)
            count, total, mx, mn = other.count, other.total, other.max, other.min
        with self._lock:
            for bucket, n in counts.items():
                self._counts[bucket] = self._counts.get(bucket, 0) + n
            self.count += count
            self.total += total
            self.max = max(self.max, mx)
            self.min = min(self.min, mn)

    def percentile(self, p: float) -> float | None:
        """The value below which ``p`` percent of samples fall (None when empty)."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is not within 0..100")
        with self._lock:
            if self.count == 0:
                return None
            rank = max(1, math.ceil(self.count * p / 100))
            seen = 0
            for bucket in sorted(self._counts):
                seen += self._counts[bucket]
                if seen >= rank:
                    value = self._bucket_value(bucket)
                    return min(max(value, self.min), self.max)
        return self.max  # unreachable: the counts add up to self.count

    def mean(self) -> float | None:
        with self._lock:
            return self.total / self.count if self.count else None

    def summary(self, percentiles: Iterable[float] = DEFAULT_PERCENTILES) -> dict:
        """Count, mean, max and percentiles, in milliseconds, for run records and reports."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        out = {"count": self.count, "mean_ms": ms(self.mean()), "max_ms": ms(self.max or None)}
        for p in percentiles:
            label = f"p{p:g}".replace(".", "_")
            out[f"{label}_ms"] = ms(self.percentile(p))
        return out

"""The latency histogram: percentiles within 1%, merge, constant memory."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload.metrics import GROWTH, Histogram


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-5, 100.0), min_size=1, max_size=300), st.floats(0, 100))
def test_percentiles_are_within_one_percent_of_the_exact_ones(values, p):
    h = Histogram()
    h.record_many(values)
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil, as the nearest-rank definition
    exact = ordered[int(rank) - 1]
    got = h.percentile(p)
    assert exact / GROWTH <= got <= exact * GROWTH


def test_merge_equals_recording_everything_in_one():
    rng = random.Random(3)
    values = [rng.expovariate(100) for _ in range(5000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    whole.record_many(values)
    a.record_many(values[:2000])
    b.record_many(values[2000:])
    a.merge(b)
    assert a.count == whole.count == 5000
    for p in (50, 99, 99.9):
        assert a.percentile(p) == whole.percentile(p)


def test_memory_depends_on_the_range_not_the_count():
    h = Histogram()
    rng = random.Random(1)
    for _ in range(200_000):
        h.record(rng.uniform(0.001, 1.0))
    assert len(h._counts) < 800  # log(1000)/log(1.01) ~ 694 buckets at most


def test_summary_in_milliseconds_and_empty_histograms():
    h = Histogram()
    assert h.percentile(99) is None and h.summary()["p99_ms"] is None
    h.record_many([0.010, 0.020, 0.030])
    s = h.summary()
    assert s["count"] == 3 and s["max_ms"] == 30.0
    assert 19.8 <= s["p50_ms"] <= 20.2


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_samples_are_refused(bad):
    with pytest.raises(ValueError):
        Histogram().record(bad)

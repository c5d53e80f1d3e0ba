"""The store against the real database: any arrival order, any duplicates, same end state."""

import random

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.allocation_fixtures import executions, reset_allocations, state_digest, traded_dsn
from workload.allocate.store import AllocationStore
from workload.db import run_transaction
from workload.dialect import detect
from workload.verify import run_checks

pytestmark = pytest.mark.integration
__all__ = ["traded_dsn"]  # the fixture, imported for pytest


def apply_all(dsn, items, batch_sizes, snapshot_every=1):
    with psycopg.connect(dsn, autocommit=True) as conn:
        store = AllocationStore(detect(conn), snapshot_every=snapshot_every)
        i = 0
        sizes = iter(batch_sizes)
        while i < len(items):
            n = next(sizes, 50)
            batch = items[i : i + n]
            run_transaction(conn, lambda c, b=batch: store.apply(c, b))
            i += n


def failed_checks(dsn):
    with psycopg.connect(dsn) as conn:
        return [(r.check.name, r.count, r.examples[:3]) for r in run_checks(conn) if not r.passed]


@pytest.fixture
def reference(traded_dsn):
    """The end state of applying the executions in order, one at a time."""
    items = executions(traded_dsn)
    apply_all(traded_dsn, items, [1] * len(items))
    assert failed_checks(traded_dsn) == []
    digest = state_digest(traded_dsn)
    reset_allocations(traded_dsn)
    return traded_dsn, items, digest


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    order_seed=st.integers(0, 2**32),
    duplicate_share=st.floats(0, 0.5),
    batch_sizes=st.lists(st.integers(1, 400), min_size=1, max_size=30),
)
def test_any_arrival_order_and_duplicates_give_the_same_end_state(
    reference, order_seed, duplicate_share, batch_sizes
):
    dsn, items, expected = reference
    rng = random.Random(order_seed)
    stream = items + rng.sample(items, int(len(items) * duplicate_share))
    rng.shuffle(stream)
    reset_allocations(dsn)
    apply_all(dsn, stream, batch_sizes)
    assert failed_checks(dsn) == []
    assert state_digest(dsn) == expected


def test_snapshot_cadence_changes_snapshots_not_the_end_state(reference):
    dsn, items, expected = reference
    apply_all(dsn, items, [7] * len(items), snapshot_every=25)
    assert failed_checks(dsn) == []
    assert state_digest(dsn) == expected
    with psycopg.connect(dsn) as conn:
        snapshots = conn.execute("SELECT count(*) FROM allocations.snapshots").fetchone()[0]
        blocks = conn.execute("SELECT count(*) FROM allocations.block_fills").fetchone()[0]
    assert blocks <= snapshots < len(items) / 5


def test_a_gap_holds_later_fills_pending_until_it_closes(reference):
    dsn, items, expected = reference
    held_back = [e for e in items if e.seq == 2]
    rest = [e for e in items if e.seq != 2]
    apply_all(dsn, rest, [100] * len(rest))
    with psycopg.connect(dsn) as conn:
        pending = conn.execute(
            "SELECT count(*) FROM allocations.fills WHERE status = 'pending'"
        ).fetchone()[0]
        outboxed = conn.execute("SELECT count(*) FROM allocations.oms_outbox").fetchone()[0]
    single = {e.block_order_id for e in items} - {e.block_order_id for e in held_back}
    assert pending == len(rest) - sum(1 for e in rest if e.seq == 1)
    assert outboxed == len(single), "only block orders without a seq 2 may complete"
    apply_all(dsn, held_back, [len(held_back)])
    assert failed_checks(dsn) == []
    assert state_digest(dsn) == expected


def test_verify_reports_a_corrupted_allocation(reference):
    dsn, items, _ = reference
    apply_all(dsn, items, [200] * len(items))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE allocations.account_allocations SET quantity = quantity + 1 "
            "WHERE (block_order_id, account_id) IN "
            "(SELECT block_order_id, account_id FROM allocations.account_allocations LIMIT 1)"
        )
        conn.execute(
            "DELETE FROM allocations.fills WHERE execution_id = "
            "(SELECT execution_id FROM allocations.fills LIMIT 1)"
        )
    names = {name for name, _, _ in failed_checks(dsn)}
    assert {"allocations_sum_to_last_snapshot", "execution_has_one_fill"} <= names


def test_caches_stay_bounded_and_evictions_change_nothing(traded_dsn):
    """A consumer runs for days: its per-block-order caches must not grow with them, and a
    block order evicted while still filling must be read again, not allocated to nobody."""
    items = executions(traded_dsn)
    apply_all(traded_dsn, items, [50] * len(items))
    expected = state_digest(traded_dsn)
    reset_allocations(traded_dsn)
    with psycopg.connect(traded_dsn, autocommit=True) as conn:
        store = AllocationStore(detect(conn), cache_size=3)
        for i in range(0, len(items), 50):
            run_transaction(conn, lambda c, b=items[i : i + 50]: store.apply(c, b))
            assert len(store._known) <= 3 and len(store._ordered) <= 3
    assert len({e.block_order_id for e in items}) > 3 * 10
    assert failed_checks(traded_dsn) == []
    assert state_digest(traded_dsn) == expected

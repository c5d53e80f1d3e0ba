"""The retry helper against real conflicts on the real embedded PostgreSQL."""

import random
import threading

import psycopg
import pytest
from psycopg import IsolationLevel

from workload.db import RetriesExhausted, RetryPolicy, RetryStats, open_pool, run_transaction

pytestmark = pytest.mark.integration


@pytest.fixture
def counter_dsn(fresh_dsn):
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (1, 0), (2, 0)")
    return fresh_dsn


def test_serialization_failures_are_retried_until_every_increment_lands(counter_dsn):
    """Many threads read-modify-write one row at SERIALIZABLE: 40001s happen and every
    transaction still commits exactly once."""
    stats = RetryStats()
    pool = open_pool(counter_dsn, size=6, isolation=IsolationLevel.SERIALIZABLE)
    per_thread, threads = 25, 6

    def increment(conn):
        (n,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
        conn.execute("UPDATE counter SET n = %s WHERE id = 1", (n + 1,))

    def worker():
        for _ in range(per_thread):
            with pool.connection() as conn:
                run_transaction(conn, increment, stats=stats, policy=RetryPolicy(max_attempts=200))

    try:
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        with pool.connection() as conn:
            (n,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
    finally:
        pool.close()
    assert n == per_thread * threads
    assert stats.transactions == per_thread * threads
    assert stats.retries > 0, "the test must provoke conflicts to mean anything"
    assert set(stats.by_sqlstate) == {"40001"}


def test_a_deadlock_is_retried(counter_dsn):
    """Two transactions lock rows 1,2 and 2,1; PostgreSQL kills one with 40P01; it retries."""
    stats = RetryStats()
    barrier = threading.Barrier(2)
    errors = []

    def lock_in_order(first, second):
        attempts = {"n": 0}

        def work(conn):
            attempts["n"] += 1
            conn.execute("UPDATE counter SET n = n + 1 WHERE id = %s", (first,))
            if attempts["n"] == 1:
                barrier.wait(timeout=10)
            conn.execute("UPDATE counter SET n = n + 1 WHERE id = %s", (second,))

        try:
            with psycopg.connect(counter_dsn, autocommit=True) as conn:
                conn.execute("SET deadlock_timeout = '100ms'")
                run_transaction(conn, work, stats=stats)
        except Exception as exc:  # surfaced to the test thread below
            errors.append(exc)

    a = threading.Thread(target=lock_in_order, args=(1, 2))
    b = threading.Thread(target=lock_in_order, args=(2, 1))
    a.start(), b.start()
    a.join(), b.join()
    assert errors == []
    assert stats.by_sqlstate.get("40P01") == 1
    with psycopg.connect(counter_dsn) as conn:
        assert conn.execute("SELECT sum(n) FROM counter").fetchone()[0] == 4


def test_other_errors_are_not_retried(counter_dsn):
    stats = RetryStats()
    calls = []

    def bad(conn):
        calls.append(1)
        conn.execute("INSERT INTO counter VALUES (1, 0)")  # duplicate key

    with psycopg.connect(counter_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            run_transaction(conn, bad, stats=stats)
    assert calls == [1] and stats.retries == 0


def test_retries_are_bounded(counter_dsn):
    """A transaction that always conflicts gives up after max_attempts, each one counted."""
    stats = RetryStats()
    sleeps = []

    def always_conflicts(conn):
        conn.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = 'serialization_failure'; END $$"
        )

    with psycopg.connect(counter_dsn, autocommit=True) as conn:
        with pytest.raises(RetriesExhausted, match="40001 after 4 attempts"):
            run_transaction(
                conn,
                always_conflicts,
                policy=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02),
                stats=stats,
                rng=random.Random(1),
                sleep=sleeps.append,
            )
    assert stats.retries == 4 and stats.exhausted == 1
    assert len(sleeps) == 3 and all(0 <= s <= 0.02 for s in sleeps)


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(base_delay=0.01, max_delay=0.1)
    rng = random.Random(0)
    caps = [min(0.1, 0.01 * 2**n) for n in range(1, 8)]
    for attempt, cap in zip(range(1, 8), caps, strict=True):
        samples = [policy.delay(attempt, rng) for _ in range(200)]
        assert max(samples) <= cap and max(samples) > cap * 0.8

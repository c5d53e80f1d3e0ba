"""Connections, pools and the one retry helper every transaction goes through.

Why one helper: CockroachDB runs every transaction at SERIALIZABLE isolation and asks the
client to retry (SQLSTATE 40001) when transactions conflict; PostgreSQL at SERIALIZABLE does
the same, and any isolation can deadlock (40P01). Retrying is correct only for those errors and
only for the whole transaction, so :func:`run_transaction` owns BEGIN/COMMIT, retries exactly
those SQLSTATEs with jittered exponential backoff, gives up after a bounded number of attempts,
and counts every retry for the run's metrics. Anything else propagates at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool

from workload.dialect import Dialect, detect
from workload.errors import LabError
from workload.roles import explain_connect_error
from workload.settings import redact_url

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

CONNECT_HINT = (
    "start the embedded stack with `python -m workload up`, or pass a reachable server "
    "with --dsn / LAB_DSN"
)


def connect(url: str, *, autocommit: bool = True, timeout: int = 10) -> psycopg.Connection:
    """A connection, or a LabError naming the server (password hidden) and the fix."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=timeout)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        hint = explain_connect_error(str(exc), url) or CONNECT_HINT
        # libpq quotes the URL it could not parse, password and all: redact the whole line.
        raise LabError(redact_url(f"cannot connect to {url}: {reason}; {hint}")) from None
    except psycopg.ProgrammingError as exc:
        raise LabError(redact_url(f"bad database URL {url}: {exc}")) from None


def server_dialect(url: str) -> Dialect:
    with connect(url) as conn:
        return detect(conn)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded, jittered exponential backoff ("full jitter"): attempt n sleeps a uniform
    random time in [0, min(max_delay, base_delay * 2**n)], which spreads competing retries
    apart instead of letting them collide again in lockstep."""

    max_attempts: int = 12
    base_delay: float = 0.002
    max_delay: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


DEFAULT_POLICY = RetryPolicy()


@dataclass
class RetryStats:
    """Counts shared by every thread of a run (transactions, retries by SQLSTATE, give-ups)."""

    transactions: int = 0
    retries: int = 0
    exhausted: int = 0
    by_sqlstate: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _count(self, *, committed: bool = False, sqlstate: str | None = None, gave_up=False):
        with self._lock:
            if committed:
                self.transactions += 1
            if sqlstate:
                self.retries += 1
                self.by_sqlstate[sqlstate] += 1
            if gave_up:
                self.exhausted += 1

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "transactions": self.transactions,
                "retries": self.retries,
                "exhausted": self.exhausted,
                "by_sqlstate": dict(self.by_sqlstate),
            }


class RetriesExhausted(Exception):
    """A transaction still conflicted after every allowed attempt."""


def run_transaction(
    conn: psycopg.Connection,
    work: Callable[[psycopg.Connection], T],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    stats: RetryStats | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work(conn)`` in one transaction, retrying the whole of it on 40001/40P01.

    ``work`` must be safe to run again from the start: it may run several times, and only the
    last run's effects are committed. ``conn`` must not be inside a transaction already.
    """
    rng = rng or random.Random()
    for attempt in range(1, policy.max_attempts + 1):
        try:
            with conn.transaction():
                result = work(conn)
        except psycopg.Error as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            if sqlstate not in RETRYABLE_SQLSTATES:
                raise
            if stats is not None:
                stats._count(sqlstate=sqlstate, gave_up=attempt == policy.max_attempts)
            if attempt == policy.max_attempts:
                raise RetriesExhausted(
                    f"transaction still failing with SQLSTATE {sqlstate} after "
                    f"{policy.max_attempts} attempts: {exc}"
                ) from exc
            sleep(policy.delay(attempt, rng))
        else:
            if stats is not None:
                stats._count(committed=True)
            return result
    raise AssertionError("unreachable")  # the loop returns or raises


def open_pool(
    url: str,
    *,
    size: int = 4,
    name: str = "lab",
    isolation: IsolationLevel | None = None,
    timeout: float = 15.0,
) -> ConnectionPool:
    """One pool per process (or per consumer), opened and warmed up before use.

    Connections are in autocommit mode so that transactions are always explicit
    (``run_transaction`` or ``with conn.transaction()``); ``isolation`` applies to them.
    """

    def configure(conn: psycopg.Connection) -> None:
        conn.autocommit = True
        if isolation is not None:
            conn.isolation_level = isolation

    pool = ConnectionPool(
        url,
        min_size=size,
        max_size=size,
        name=name,
        open=False,
        configure=configure,
        check=ConnectionPool.check_connection,
        kwargs={"connect_timeout": 10},
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except Exception as exc:  # PoolTimeout hides the cause; say what the user can do
        pool.close()
        raise LabError(
            f"cannot open {size} connections to {redact_url(url)} ({exc}); {CONNECT_HINT}"
        ) from None
    return pool

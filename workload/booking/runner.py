"""Run the booking phase: K booking workers and a settlement relay, until stopped or idle.

Each worker is a thread with its own connection, claiming and booking small batches of
outboxed block orders; the relay is one more thread publishing settlement rows. psycopg and
confluent-kafka release the GIL while they wait on the network, which is where both spend
their time. The run ends when ``stop`` is set (the ``book`` command sets it on SIGINT and
SIGTERM) or, with ``until_idle``, once nothing was booked, dead-lettered or published for that
long. Either way every worker finishes its transaction, and the relay makes a last pass so
that what was booked is published before the report is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from workload.booking.booker import Booker, BookingOutcome
from workload.booking.money import Fees
from workload.booking.settlement import (
    DEFAULT_SETTLEMENT_TOPIC,
    PublishFailed,
    SettlementRelay,
    ensure_topic,
)
from workload.db import RetryStats, open_pool, run_transaction, server_dialect
from workload.errors import LabError
from workload.metrics import Histogram
from workload.topics import DEFAULT_PARTITIONS, check_topic_name

log = logging.getLogger("workload.booking")

RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
FINAL_PUBLISH_SECONDS = 15.0  # how long the last relay pass may try before giving up

STATUS_QUERY = """
SELECT (SELECT count(*) FROM allocations.settlements WHERE published_at IS NULL),
       (SELECT coalesce(sum(waiting), 0) FROM allocations.block_bookings
         WHERE status = 'waiting'),
       (SELECT count(*) FROM allocations.oms_outbox AS o
         WHERE NOT EXISTS (SELECT 1 FROM allocations.block_bookings AS k
                            WHERE k.block_order_id = o.block_order_id))
"""


@dataclass(frozen=True)
class BookingOptions:
    batch_size: int = 4  # block orders claimed per transaction
    poll_interval: float = 0.2  # seconds a worker sleeps when it found nothing to book
    fee_rate: Decimal = Decimal(0)  # a fraction of each booking's amount
    fee_per_share: Decimal = Decimal(0)
    workers: int = 1
    until_idle: float | None = None  # seconds; None: until stopped
    settlement_topic: str = DEFAULT_SETTLEMENT_TOPIC
    settlement_partitions: int = DEFAULT_PARTITIONS  # only when the topic is created
    hold_seconds: float = 30.0  # a waiting buy is retried after this even if nothing woke it
    publish_batch: int = 500
    max_seconds: float | None = None  # a hard stop, for benchmarks and tests

    def validate(self) -> BookingOptions:
        if self.batch_size < 1 or self.workers < 1 or self.publish_batch < 1:
            raise LabError("--batch-size and --workers must be at least 1")
        if self.poll_interval <= 0:
            raise LabError("--poll-interval must be positive")
        if self.hold_seconds <= 0:
            raise LabError("hold_seconds must be positive")
        if self.until_idle is not None and self.until_idle <= 0:
            raise LabError("--until-idle must be positive")
        try:
            Fees(self.fee_rate, self.fee_per_share)
        except ValueError as exc:
            raise LabError(f"bad fee: {exc} (--fee-rate, --fee-per-share)") from None
        check_topic_name(self.settlement_topic)
        return self


@dataclass
class WorkerMetrics:
    name: str = ""
    transactions: int = 0
    failed_transactions: int = 0
    blocks_booked: int = 0
    bookings: int = 0
    shares: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    txn_latency: Histogram = field(default_factory=Histogram)
    retries: RetryStats = field(default_factory=RetryStats)

    def add(self, outcome: BookingOutcome, seconds: float) -> None:
        self.transactions += 1
        self.txn_latency.record(seconds)
        self.blocks_booked += outcome.blocks_booked
        self.bookings += outcome.bookings
        self.shares += outcome.shares
        self.dead_letters.update(outcome.dead_letters)


@dataclass
class BookingReport:
    options: BookingOptions
    workers: list[WorkerMetrics] = field(default_factory=list)
    settlements_published: int = 0
    publish_failures: int = 0
    settlements_unpublished: int = 0  # at the end (left for the next run's relay)
    waiting: int = 0  # allocations still waiting for cash at the end
    not_started: int = 0  # outboxed block orders no booker looked at yet
    first_booking_at: float | None = None  # monotonic
    last_progress_at: float | None = None
    wall_seconds: float = 0.0

    @property
    def bookings(self) -> int:
        return sum(w.bookings for w in self.workers)

    @property
    def blocks_booked(self) -> int:
        return sum(w.blocks_booked for w in self.workers)

    @property
    def dead_letters(self) -> Counter:
        total: Counter = Counter()
        for w in self.workers:
            total.update(w.dead_letters)
        return total

    @property
    def active_seconds(self) -> float:
        if self.first_booking_at is None or self.last_progress_at is None:
            return 0.0
        return max(self.last_progress_at - self.first_booking_at, 1e-9)

    @property
    def bookings_per_second(self) -> float:
        return self.bookings / self.active_seconds if self.active_seconds else 0.0

    def as_dict(self) -> dict:
        latency = Histogram()
        retries = Counter()
        for w in self.workers:
            latency.merge(w.txn_latency)
            retries.update({k: v for k, v in w.retries.as_dict().items() if isinstance(v, int)})
        return {
            "workers": self.options.workers,
            "batch_size": self.options.batch_size,
            "fee_rate": str(self.options.fee_rate),
            "fee_per_share": str(self.options.fee_per_share),
            "blocks_booked": self.blocks_booked,
            "bookings": self.bookings,
            "shares": sum(w.shares for w in self.workers),
            "bookings_per_s": round(self.bookings_per_second, 1),
            "active_seconds": round(self.active_seconds, 3),
            "transactions": sum(w.transactions for w in self.workers),
            "failed_transactions": sum(w.failed_transactions for w in self.workers),
            "txn_latency_ms": latency.summary(),
            "retries": dict(retries),
            "dead_letters": dict(self.dead_letters),
            "waiting": self.waiting,
            "not_started": self.not_started,
            "settlement_topic": self.options.settlement_topic,
            "settlements_published": self.settlements_published,
            "settlements_unpublished": self.settlements_unpublished,
            "publish_failures": self.publish_failures,
        }


class _Progress:
    """When anything last moved, shared by the workers, the relay and the idle watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first_booking_at: float | None = None
        self.last_at = time.monotonic()

    def moved(self, booked: bool = False) -> None:
        with self._lock:
            self.last_at = time.monotonic()
            if booked and self.first_booking_at is None:
                self.first_booking_at = self.last_at


def run_booking(
    dsn: str,
    bootstrap: str,
    options: BookingOptions = BookingOptions(),
    stop: threading.Event | None = None,
) -> BookingReport:
    """Book the OMS outbox until ``stop`` is set, or ``options.until_idle`` seconds pass
    with nothing to do; returns what was booked, dead-lettered and published."""
    options.validate()
    ensure_topic(bootstrap, options.settlement_topic, options.settlement_partitions)
    dialect = server_dialect(dsn)
    stop = stop or threading.Event()
    fees = Fees(options.fee_rate, options.fee_per_share)
    relay = SettlementRelay(bootstrap, options.settlement_topic, batch_size=options.publish_batch)
    pool = open_pool(dsn, size=options.workers + 1, name="booking")
    report = BookingReport(options=options)
    progress = _Progress()
    started = time.monotonic()
    errors: list[BaseException] = []
    workers_done = threading.Event()

    def guarded(target, *args) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported by the caller after stopping the rest
            errors.append(exc)
            stop.set()

    workers = []
    for i in range(options.workers):
        metrics = WorkerMetrics(name=f"booker-{i + 1}")
        report.workers.append(metrics)
        booker = Booker(
            dialect, fees, batch_size=options.batch_size, hold_seconds=options.hold_seconds
        )
        workers.append(
            threading.Thread(
                target=guarded,
                args=(_work, booker, pool, metrics, progress, options, stop),
                name=metrics.name,
                daemon=True,
            )
        )
    relay_thread = threading.Thread(
        target=guarded,
        args=(_relay, relay, pool, report, progress, options, stop, workers_done),
        name="settlement-relay",
        daemon=True,
    )
    for t in [*workers, relay_thread]:
        t.start()
    try:
        while not stop.wait(0.1):
            now = time.monotonic()
            if options.max_seconds is not None and now - started >= options.max_seconds:
                break
            if options.until_idle is not None and now - progress.last_at >= options.until_idle:
                break
    finally:
        stop.set()
        for t in workers:
            t.join()
        workers_done.set()
        relay_thread.join()
        relay.close()
        try:
            with pool.connection() as conn:
                unpublished, waiting, not_started = conn.execute(STATUS_QUERY).fetchone()
            report.settlements_unpublished = unpublished
            report.waiting = waiting
            report.not_started = not_started
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("cannot read the booking status at the end: %s", exc)
        pool.close()
    if errors:
        raise errors[0]
    report.first_booking_at = progress.first_booking_at
    report.last_progress_at = progress.last_at
    report.wall_seconds = time.monotonic() - started
    return report


def _work(
    booker: Booker,
    pool: ConnectionPool,
    metrics: WorkerMetrics,
    progress: _Progress,
    options: BookingOptions,
    stop: threading.Event,
) -> None:
    attempt = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with pool.connection() as conn:
                outcome = run_transaction(conn, booker.book_batch, stats=metrics.retries)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # Nothing was committed; the same block orders are claimed again once the
            # server is back, which is safe.
            metrics.failed_transactions += 1
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            log.warning("%s: database unavailable (%s); retrying in %.1f s",
                        metrics.name, _reason(exc), delay)  # fmt: skip
            stop.wait(delay)
            continue
        except BaseException:
            metrics.failed_transactions += 1
            raise
        attempt = 0
        booker.committed()
        if outcome.claimed:
            metrics.add(outcome, time.perf_counter() - started)
        if outcome.progressed:
            progress.moved(booked=outcome.bookings > 0)
        elif outcome.claimed < options.batch_size:
            stop.wait(options.poll_interval)


def _relay(
    relay: SettlementRelay,
    pool: ConnectionPool,
    report: BookingReport,
    progress: _Progress,
    options: BookingOptions,
    stop: threading.Event,
    workers_done: threading.Event,
) -> None:
    """Publish until stopped; then, once the workers have committed their last batch, drain
    what is left (for a bounded time: an unreachable broker must not hold the run)."""
    attempt = 0
    final_deadline: float | None = None
    while True:
        if stop.is_set() and workers_done.is_set() and final_deadline is None:
            final_deadline = time.monotonic() + FINAL_PUBLISH_SECONDS
        try:
            with pool.connection() as conn:
                published = run_transaction(conn, relay.publish_batch)
        except (PublishFailed, psycopg.OperationalError, PoolTimeout) as exc:
            report.publish_failures += 1
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            log.warning("settlement relay: %s; retrying in %.1f s", _reason(exc), delay)
            if final_deadline is None:
                stop.wait(delay)
            elif time.monotonic() + delay > final_deadline:
                return
            else:
                time.sleep(delay)
            continue
        attempt = 0
        if published:
            report.settlements_published += published
            progress.moved()
            continue
        if final_deadline is not None:
            return  # drained after the workers stopped
        if stop.is_set():
            workers_done.wait()
            continue
        stop.wait(options.poll_interval)


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def print_report(report: BookingReport) -> None:
    d = report.as_dict()
    txn = d["txn_latency_ms"]
    print(
        f"booked {d['bookings']:,} allocations of {d['blocks_booked']:,} block orders "
        f"({d['shares']:,} shares) with {d['workers']} worker(s) in {d['active_seconds']:.2f} s "
        f"= {d['bookings_per_s']:,.0f} bookings/s"
    )
    print(
        f"  {d['transactions']:,} transactions, p50 {txn['p50_ms']} ms, p99 {txn['p99_ms']} ms; "
        f"retries {d['retries'].get('retries', 0)}; settlements published "
        f"{d['settlements_published']:,} to {d['settlement_topic']!r}"
        + (f", {d['settlements_unpublished']:,} left" if d["settlements_unpublished"] else "")
    )
    if d["dead_letters"]:
        letters = ", ".join(f"{k} {v}" for k, v in sorted(d["dead_letters"].items()))
        print(f"  dead letters: {letters} (allocations.booking_dead_letters)")
    if d["waiting"] or d["not_started"]:
        print(
            f"  still to book: {d['waiting']:,} allocation(s) waiting for their request's "
            f"sells, {d['not_started']:,} block order(s) not started"
        )

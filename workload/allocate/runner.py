"""Run K allocation consumers in one consumer group and report what they did.

Each consumer is a thread with its own Kafka consumer and its own database connection from
a pool sized for them (confluent-kafka and psycopg both release the GIL while they wait on
the network, which is where an allocation consumer spends its time). The run ends on
SIGINT/SIGTERM (each consumer flushes, commits and leaves the group) or, with ``until_idle``,
once every partition is drained and nothing new arrived for that long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg import IsolationLevel

from workload.allocate.consumer import (
    AllocationConsumer,
    AllocatorOptions,
    ConsumerMetrics,
    TransactionHook,
    merge_metrics,
)
from workload.allocate.store import AllocationStore
from workload.db import open_pool, server_dialect
from workload.errors import LabError
from workload.topics import TopicSpec, ensure_topics

log = logging.getLogger("workload.allocate")

ISOLATION_LEVELS = {
    "default": None,
    "read-committed": IsolationLevel.READ_COMMITTED,
    "repeatable-read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}


@dataclass(frozen=True)
class RunOptions:
    until_idle: float | None = None  # seconds; None: until stopped
    isolation: str = "default"
    max_seconds: float | None = None  # a hard stop, for benchmarks and tests


@dataclass
class AllocationReport:
    options: AllocatorOptions
    total: ConsumerMetrics
    consumers: list[ConsumerMetrics] = field(default_factory=list)
    partitions: int = 0
    wall_seconds: float = 0.0

    @property
    def active_seconds(self) -> float:
        """From the first message read to the last offset committed: the time spent
        allocating, without the group join before it or the idle wait after it."""
        t = self.total
        if t.first_message_at is None or t.last_commit_at is None:
            return 0.0
        return max(t.last_commit_at - t.first_message_at, 1e-9)

    @property
    def executions_per_second(self) -> float:
        return self.total.allocated / self.active_seconds if self.active_seconds else 0.0

    def as_dict(self) -> dict:
        t = self.total
        return {
            "strategy": self.options.strategy,
            "consumers": self.options.consumers,
            "batch_size": self.options.batch_size,
            "linger_ms": self.options.linger_ms,
            "snapshot_every": self.options.snapshot_every,
            "partitions": self.partitions,
            "executions_allocated": t.allocated,
            "executions_received": t.received,
            "duplicates": t.duplicates,
            "executions_per_s": round(self.executions_per_second, 1),
            "active_seconds": round(self.active_seconds, 3),
            "transactions": t.transactions,
            "failed_transactions": t.failed_transactions,
            "database_outages": t.database_outages,
            "outage_seconds": round(t.outage_seconds, 3),
            "snapshots": t.snapshots,
            "completed_blocks": t.completed_blocks,
            "txn_latency_ms": t.txn_latency.summary(),
            "e2e_latency_ms": t.e2e_latency.summary(),
            "retries": t.retries.as_dict(),
            "dead_letters": dict(t.dead_letters),
            "consumer_lag": t.lag,
        }


def run_allocation(
    dsn: str,
    bootstrap: str,
    options: AllocatorOptions,
    run: RunOptions = RunOptions(),
    stop: threading.Event | None = None,
    on_transaction: TransactionHook | None = None,
    on_progress: Callable[[ConsumerMetrics], None] | None = None,
) -> AllocationReport:
    """Allocate until stopped or idle; returns the merged metrics of every consumer."""
    if options.consumers < 1:
        raise LabError("--consumers must be at least 1")
    if options.batch_size < 1 or options.linger_ms < 0 or options.snapshot_every < 1:
        raise LabError("--batch-size and --snapshot-every must be >= 1, --linger-ms >= 0")
    if run.isolation not in ISOLATION_LEVELS:
        raise LabError(f"--isolation must be one of {', '.join(ISOLATION_LEVELS)}")
    topic, _dlq = ensure_topics(
        bootstrap, TopicSpec(name=options.topic, dead_letter_name=options.dead_letter_topic)
    )
    if options.consumers > topic.partitions:
        raise LabError(
            f"{options.consumers} consumers but topic {options.topic!r} has "
            f"{topic.partitions} partitions: a partition has one consumer at a time, so the "
            f"extra consumers would only wait; use --consumers {topic.partitions} or fewer"
        )
    dialect = server_dialect(dsn)
    stop = stop or threading.Event()
    pool = open_pool(
        dsn,
        size=options.consumers + 1,  # one each, and one for the block strategy's lookups
        name="allocate",
        isolation=ISOLATION_LEVELS[run.isolation],
    )
    started = time.monotonic()
    consumers = [
        AllocationConsumer(
            f"allocator-{i + 1}",
            options,
            bootstrap,
            pool,
            AllocationStore(dialect, snapshot_every=options.snapshot_every),
            stop,
            on_transaction,
        )
        for i in range(options.consumers)
    ]
    errors: list[BaseException] = []

    def work(consumer: AllocationConsumer) -> None:
        try:
            consumer.run()
        except BaseException as exc:  # reported by the main thread after stopping the rest
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=work, args=(c,), name=c.name, daemon=True) for c in consumers
    ]
    for t in threads:
        t.start()
    try:
        idle_since: float | None = None
        while not stop.is_set():
            time.sleep(0.25)
            now = time.monotonic()
            if on_progress is not None:
                on_progress(merge_metrics([c.metrics for c in consumers]))
            if run.max_seconds is not None and now - started >= run.max_seconds:
                break
            if run.until_idle is not None and _drained(consumers, now, run.until_idle):
                idle_since = idle_since or now
                if now - idle_since >= 0.5:  # drained on two looks in a row
                    break
            else:
                idle_since = None
    finally:
        stop.set()
        for t in threads:
            t.join()
        pool.close()
    if errors:
        raise errors[0]
    return AllocationReport(
        options=options,
        total=merge_metrics([c.metrics for c in consumers]),
        consumers=[c.metrics for c in consumers],
        partitions=topic.partitions,
        wall_seconds=time.monotonic() - started,
    )


def _drained(consumers: list[AllocationConsumer], now: float, idle: float) -> bool:
    """Every consumer has joined, is not waiting out a database outage, is caught up (nothing
    left to read, or a watermark after its last execution on every partition: a live source
    keeps sending watermarks), and has read no execution for ``idle`` seconds (counted from
    the last one, the join, or the end of the last outage)."""
    quiet_since = 0.0
    for c in consumers:
        m = c.metrics
        if m.assigned_at is None or m.outage_since is not None:
            return False  # not joined yet, or waiting for the database with work in hand
        if not (m.lag == 0 or m.caught_up):
            return False
        quiet_since = max(
            quiet_since, m.assigned_at, m.last_message_at or 0.0, m.outage_ended_at or 0.0
        )
    return now - quiet_since >= idle

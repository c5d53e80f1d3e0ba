"""Reconcile: re-drive executions that never reached the allocations domain.

Kafka is the pipeline's only path from trades to allocations, and a broker that loses what it
held (the embedded Tansu broker keeps topics, messages and committed offsets in memory; a
restart empties it) drops every execution it had acknowledged but no consumer had allocated
yet. The relay does not send them again: its slot is already past them. ``verify`` sees the
hole (``execution_has_one_fill``: executions with no fill; ``no_fill_left_pending``: later
fills of the same block orders waiting behind it), and the trades domain still holds every
execution, so the hole can be filled from there.

The design: re-publish, not re-implement. Each execution with no fill is read from
trades.executions and produced again into the executions topic, exactly as the relay or a
CockroachDB changefeed would (CRDB's JSON envelope, keyed by block order, on the partition
the changefeed picks for that key, idempotent producer), so the running allocation consumers
allocate it through their one code path, with their strategy, metrics and dead letters.
``updated`` is the time of the re-drive: an old commit timestamp would show up as hours of
end-to-end latency, and the consumers treat it as metadata only. Redelivery is what the
pipeline is built for: a fill is keyed by its execution id, so an execution that was only
late (still on its way when reconcile looked) is recognised as a duplicate and changes
nothing; nothing can be allocated twice. A round publishes what is missing, then waits for
the consumers; the next round publishes again what is still missing, up to a bound.

When no consumer group runs, ``apply=True`` (``--apply``) allocates the missing executions
directly with :class:`workload.allocate.store.AllocationStore` in the retry helper, a batch of
block orders per transaction: the same store, the same idempotent writes, the same row locks,
so it is safe even next to running consumers.

Either way the run ends when verify's execution checks pass (``passed``), or after the last
round with what is still missing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from confluent_kafka import KafkaException, Producer

from workload import topics
from workload.allocate.store import AllocationStore
from workload.cdc.encoding import Partitioner
from workload.db import RetryStats, connect, run_transaction
from workload.dialect import detect
from workload.envelope import HLC, Execution, InvalidExecution, encode_change
from workload.errors import LabError
from workload.verify import CHECKS, CheckResult, run_checks

# verify's checks that a re-drive makes pass; the rest are the allocations' own invariants.
EXECUTION_CHECKS = ("execution_has_one_fill", "no_fill_left_pending")

MISSING = """
SELECT e.execution_id, e.block_order_id, e.seq, e.activity, e.quantity, e.price,
       e.ref_execution_id, e.order_type, e.destination, e.executed_at
  FROM trades.executions e
  LEFT JOIN allocations.fills f USING (execution_id)
 WHERE f.execution_id IS NULL
 ORDER BY e.block_order_id, e.seq, e.execution_id
"""

# Pending fills, split by whether their block order has an execution with no fill: those are
# waiting for the gap a re-drive closes; the others wait for something trades never had.
PENDING = """
SELECT count(*) FILTER (WHERE gap.block_order_id IS NOT NULL),
       count(*) FILTER (WHERE gap.block_order_id IS NULL)
  FROM allocations.fills p
  LEFT JOIN (SELECT DISTINCT e.block_order_id
               FROM trades.executions e
               LEFT JOIN allocations.fills f USING (execution_id)
              WHERE f.execution_id IS NULL) gap USING (block_order_id)
 WHERE p.status = 'pending'
"""

Say = Callable[[str], None]


@dataclass(frozen=True)
class ReconcileOptions:
    topic: str = topics.DEFAULT_TOPIC
    partitions: int = topics.DEFAULT_PARTITIONS  # only if the topic must be created
    batch_size: int = 1000  # executions per produce flush, or per transaction with apply
    rounds: int = 5
    wait: float = 30.0  # seconds a round waits for the consumers to allocate what it published
    apply: bool = False  # allocate directly instead of publishing
    dry_run: bool = False

    def __post_init__(self) -> None:
        topics.check_topic_name(self.topic)
        if self.batch_size < 1:
            raise LabError(f"--batch-size {self.batch_size} must be at least 1")
        if self.rounds < 1:
            raise LabError(f"--rounds {self.rounds} must be at least 1")
        if self.wait <= 0:
            raise LabError(f"--wait {self.wait:g} must be positive")
        if self.partitions < 1:
            raise LabError(f"--partitions {self.partitions} must be at least 1")


@dataclass(frozen=True)
class Gap:
    """What allocations lack, compared with trades."""

    missing: list[Execution]  # executions with no fill, by block order and seq
    waiting: int  # pending fills of block orders with a missing execution
    stuck: int  # pending fills with no missing execution to wait for
    unreadable: int = 0  # executions the envelope cannot carry (they fail its validation)

    @property
    def blocks(self) -> int:
        return len({e.block_order_id for e in self.missing})

    def describe(self) -> str:
        text = (
            f"{len(self.missing):,} execution(s) with no fill in {self.blocks:,} block "
            f"order(s); {self.waiting:,} pending fill(s) waiting behind them"
        )
        if self.stuck:
            text += f"; {self.stuck:,} pending fill(s) waiting for no known execution"
        if self.unreadable:
            text += f"; {self.unreadable:,} execution(s) not valid for the envelope"
        return text


@dataclass
class ReconcileReport:
    found: int = 0  # executions with no fill at the start
    published: int = 0
    applied: int = 0  # fills the direct path applied
    rejected: int = 0  # executions the direct path's store rejected
    rounds: int = 0
    remaining: int = 0  # executions still with no fill at the end
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.checks)

    def as_dict(self) -> dict:
        return {
            "found": self.found,
            "published": self.published,
            "applied": self.applied,
            "rejected": self.rejected,
            "rounds": self.rounds,
            "remaining": self.remaining,
            "passed": self.passed,
            "failed_checks": {r.check.name: r.count for r in self.checks if not r.passed},
        }


def find_gap(conn: psycopg.Connection) -> Gap:
    missing, unreadable = [], 0
    for row in conn.execute(MISSING).fetchall():
        try:
            missing.append(Execution(*row))
        except InvalidExecution:
            unreadable += 1
    waiting, stuck = conn.execute(PENDING).fetchone()
    return Gap(missing, waiting, stuck, unreadable)


def execution_checks(conn: psycopg.Connection) -> list[CheckResult]:
    return run_checks(conn, [c for c in CHECKS if c.name in EXECUTION_CHECKS])


def republish(
    bootstrap: str, options: ReconcileOptions, items: list[Execution], say: Say = print
) -> int:
    """Produce ``items`` into the executions topic as the relay would; returns how many the
    broker acknowledged (all of them, or a LabError)."""
    spec = topics.TopicSpec(name=options.topic, partitions=options.partitions)
    topic, _dead_letters = topics.ensure_topics(bootstrap, spec)
    if topic.created:
        say(f"created topic {topic.name} ({topic.partitions} partitions): it did not exist")
    partition_of = Partitioner(topic.partitions)
    failures: list[str] = []

    def delivered(error, _message) -> None:
        if error is not None:
            failures.append(error.str())

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "crdblab-reconcile",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "allow.auto.create.topics": False,
            "message.timeout.ms": 30_000,
            "log_level": 0,  # failures come back in the delivery reports
        }
    )
    updated = HLC.from_datetime(datetime.now(UTC))
    sent = 0
    try:
        for start in range(0, len(items), options.batch_size):
            for e in items[start : start + options.batch_size]:
                key, value = encode_change(e, updated)
                while True:
                    try:
                        producer.produce(
                            topic.name, value, key, partition=partition_of(key),
                            on_delivery=delivered,
                        )  # fmt: skip
                        break
                    except BufferError:
                        producer.poll(0.05)
            left = producer.flush(60)
            if left or failures:
                reason = failures[0] if failures else f"{left} message(s) unacknowledged"
                raise LabError(
                    f"the broker at {bootstrap} did not take the re-published executions "
                    f"({reason}); {topics.KAFKA_HINT}"
                )
            sent = min(len(items), start + options.batch_size)
            if len(items) > options.batch_size:
                say(f"  published {sent:,}/{len(items):,}")
    except KafkaException as exc:
        raise LabError(f"cannot publish to {bootstrap}: {exc.args[0].str()}") from None
    return sent


def apply_directly(
    conn: psycopg.Connection, items: list[Execution], batch_size: int, say: Say = print
) -> tuple[int, int]:
    """Allocate ``items`` through the store, whole block orders per transaction (a block
    order's executions together, so its gap closes in one go); (applied, rejected)."""
    store = AllocationStore(detect(conn))
    stats = RetryStats()
    batches: list[list[Execution]] = [[]]
    last_block: uuid.UUID | None = None
    for e in items:  # sorted by block order
        if len(batches[-1]) >= batch_size and e.block_order_id != last_block:
            batches.append([])
        batches[-1].append(e)
        last_block = e.block_order_id
    applied = rejected = done = 0
    for batch in batches:
        if not batch:
            continue
        outcome = run_transaction(conn, lambda c, b=batch: store.apply(c, b), stats=stats)
        applied += len(outcome.applied)
        rejected += len(outcome.rejected)
        for r in outcome.rejected[:5]:
            say(f"  rejected {r.execution_id} ({r.reason}): {r.detail}")
        done += len(batch)
        if len(batches) > 1:
            say(f"  allocated {done:,}/{len(items):,} (fills applied {applied:,})")
    return applied, rejected


def reconcile(
    dsn: str, bootstrap: str | None, options: ReconcileOptions, say: Say = print
) -> ReconcileReport:
    """Find executions with no fill and re-drive them until verify's execution checks pass
    or ``options.rounds`` rounds are spent; ``say`` gets one line per step."""
    if not options.apply and not options.dry_run and not bootstrap:
        raise LabError(
            "re-publishing needs a Kafka bootstrap (--kafka-bootstrap), or use --apply to "
            "allocate directly"
        )
    report = ReconcileReport()
    with connect(dsn) as conn:
        gap = find_gap(conn)
        report.found = len(gap.missing)
        say(f"found {gap.describe()}")
        if options.dry_run or not gap.missing:
            report.remaining = len(gap.missing)
            report.checks = execution_checks(conn)
            return report
        for round_number in range(1, options.rounds + 1):
            report.rounds = round_number
            if options.apply:
                say(f"round {round_number}: allocating {len(gap.missing):,} execution(s) here")
                applied, rejected = apply_directly(conn, gap.missing, options.batch_size, say)
                report.applied += applied
                report.rejected += rejected
            else:
                say(
                    f"round {round_number}: re-publishing {len(gap.missing):,} execution(s) to "
                    f"{options.topic}; waiting up to {options.wait:g} s for the consumers"
                )
                report.published += republish(bootstrap, options, gap.missing, say)
                _wait_for_consumers(conn, len(gap.missing), options.wait, say)
            gap = find_gap(conn)
            report.checks = execution_checks(conn)
            if report.passed:
                break
            say(f"still {gap.describe()}")
        report.remaining = len(gap.missing)
    return report


def _wait_for_consumers(conn: psycopg.Connection, published: int, wait: float, say: Say) -> None:
    count = "SELECT count(*) FROM trades.executions e LEFT JOIN allocations.fills f " \
            "USING (execution_id) WHERE f.execution_id IS NULL"  # fmt: skip
    deadline = time.monotonic() + wait
    last = published
    last_said = time.monotonic()
    while True:
        left = conn.execute(count).fetchone()[0]
        if left == 0:
            say("  every execution has a fill")
            return
        now = time.monotonic()
        if now >= deadline:
            say(
                f"  {left:,} still without a fill after {wait:g} s: is an allocation consumer "
                "group (`python -m workload allocate`) reading the topic? (--apply allocates "
                "without one)"
            )
            return
        if left != last and now - last_said >= 1.0:
            say(f"  {max(0, published - left):,}/{published:,} allocated")
            last, last_said = left, now
        time.sleep(0.25)

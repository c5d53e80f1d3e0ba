"""One allocation consumer: Kafka in, transactions out, offsets committed after the database.

The three strategies differ only in *when* buffered executions are flushed, and how many go
into one transaction (:class:`workload.allocate.store.AllocationStore` does the rest):

- ``per-execution``: every execution is its own small transaction;
- ``micro-batch``: up to ``batch_size`` executions, or whatever arrived within ``linger_ms``,
  in one transaction (the store groups them by block order);
- ``block``: the legacy way: a block order's executions wait in memory until they complete
  it (a contiguous run of seqs whose net fill reaches the order quantity), then one large
  transaction allocates the whole block order. What is still waiting when the run stops is
  flushed as a partial allocation, as an end-of-day batch would.

Delivery is at least once; the effect is exactly once. A partition's offset is committed only
after every execution before it is committed in the database (executions of incomplete block
orders hold their partition's offset back) and after any dead letter is acknowledged by the
broker. After a crash, or when a partition moves to another consumer, what was not committed
is delivered again and the store recognises it.

Dead letters: a message that cannot be decoded (bad JSON, missing or wrong fields, negative
quantity, oversized, ...) or an execution the store rejects (unknown block order, overfill,
bust of nothing, ...) is published to the dead-letter topic with its reason, the original
payload and where it came from, and counted; the consumer goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from psycopg_pool import ConnectionPool, PoolTimeout

from workload.allocate.store import AllocationStore, BatchOutcome, FillRow, Rejection
from workload.db import RetryStats, run_transaction
from workload.envelope import DEFAULT_MAX_SIZE, Execution, InvalidMessage, Resolved, decode
from workload.metrics import Histogram
from workload.topics import DEAD_LETTER_SUFFIX, DEFAULT_TOPIC

log = logging.getLogger("workload.allocate")

STRATEGIES = ("block", "per-execution", "micro-batch")
DEAD_LETTER_PAYLOAD_LIMIT = 64 * 1024  # bytes of the original payload kept in a dead letter
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
# The pool has a connection per consumer, so taking one never waits in normal operation;
# waiting this long means the pool cannot reconnect: an outage, to be counted and logged.
CONNECTION_WAIT = 2.0

T = TypeVar("T")

TransactionHook = Callable[[str, int, float, BaseException | None], None]
"""Called after every allocation transaction: (strategy, executions, seconds, error)."""


@dataclass(frozen=True)
class AllocatorOptions:
    strategy: str = "micro-batch"
    consumers: int = 1
    batch_size: int = 100
    linger_ms: float = 50.0
    snapshot_every: int = 1
    topic: str = DEFAULT_TOPIC
    dead_letter_topic: str | None = None  # default: topic + ".dlq"
    group_id: str = "allocation"
    poll_batch: int = 500
    max_message_bytes: int = DEFAULT_MAX_SIZE

    @property
    def dead_letters(self) -> str:
        return self.dead_letter_topic or self.topic + DEAD_LETTER_SUFFIX


@dataclass
class ConsumerMetrics:
    """One consumer's counters; :func:`merge_metrics` adds several up for a run."""

    name: str = ""
    allocated: int = 0  # fills applied to block states (each execution once)
    received: int = 0  # execution messages read, duplicates included
    duplicates: int = 0
    transactions: int = 0
    failed_transactions: int = 0
    database_outages: int = 0  # times the database went away under this consumer
    outage_seconds: float = 0.0  # time spent waiting for it to come back
    snapshots: int = 0
    completed_blocks: int = 0
    resolved: int = 0  # resolved (watermark) messages read
    dead_letters: Counter = field(default_factory=Counter)
    txn_latency: Histogram = field(default_factory=Histogram)
    e2e_latency: Histogram = field(default_factory=Histogram)
    retries: RetryStats = field(default_factory=RetryStats)
    lag: int | None = None  # messages behind the high watermark on the assigned partitions
    first_message_at: float | None = None  # monotonic
    last_commit_at: float | None = None
    last_message_at: float | None = None
    assigned: bool = False
    assigned_at: float | None = None  # monotonic time of the latest partition assignment
    caught_up: bool = False  # every assigned partition had a watermark after its last data
    outage_since: float | None = None  # monotonic; set while the database is unreachable
    outage_ended_at: float | None = None


class AllocationConsumer:
    """A member of the allocation consumer group. ``run()`` until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        options: AllocatorOptions,
        bootstrap: str,
        pool: ConnectionPool,
        store: AllocationStore,
        stop: threading.Event,
        on_transaction: TransactionHook | None = None,
    ):
        if options.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {options.strategy!r}")
        self.name = name
        self.options = options
        self.pool = pool
        self.store = store
        self.stop = stop
        self.on_transaction = on_transaction
        self.metrics = ConsumerMetrics(name=name)
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": options.group_id,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # librdkafka's 45 s default makes every group join wait for a dead member's
                # session to expire; 6 s keeps joins (and this lab's restarts) to seconds.
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                "partition.assignment.strategy": "roundrobin",
                "fetch.wait.max.ms": 100,
                "max.poll.interval.ms": 600_000,
                # librdkafka prefetches up to 64 MiB per consumer by default: over 100,000
                # executions, minutes of allocation work, so that a consumer's memory follows
                # the backlog rather than its work. 8 MiB still holds >10,000 executions.
                "queued.max.messages.kbytes": 8192,
            }
        )
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        self._buffer: list[_Pending] = []  # per-execution and micro-batch
        self._buffered_since: float | None = None
        self._blocks: dict[uuid.UUID, _BlockBuffer] = {}  # block strategy
        self._consumed: dict[int, int] = {}  # partition -> last offset read
        self._assigned: set[int] = set()
        # Resolved messages are watermarks: one that arrives after a partition's last
        # execution says the source has published everything before it, so the partition
        # is caught up even though watermarks keep arriving.
        self._last_data: dict[int, float] = {}
        self._last_watermark: dict[int, float] = {}
        self._committed: dict[int, int] = {}  # partition -> offset committed
        self._dead_letters_unacked = 0
        self._lag_checked = 0.0

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> ConsumerMetrics:
        self._consumer.subscribe(
            [self.options.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not self.stop.is_set():
                self.poll_once(timeout=0.2)
            self.flush_all()
        finally:
            # close() leaves the group at once, so the partitions move without waiting for
            # the session timeout.
            self._consumer.close()
            self._producer.flush(10)
            # The clients' callbacks are bound methods (a reference cycle): drop them now so
            # their connections close with the run, not whenever the garbage collector runs.
            self._consumer = self._producer = None
        return self.metrics

    def poll_once(self, timeout: float) -> int:
        """Read what is there (up to poll_batch), flush what is due, commit; returns messages."""
        messages = self._consumer.consume(self.options.poll_batch, timeout)
        now = time.monotonic()
        for message in messages:
            self._take(message, now)
        self._flush_due(time.monotonic())
        self._commit()
        if now - self._lag_checked > 1.0:
            self._update_lag()
            self._lag_checked = now
        self.metrics.caught_up = self._caught_up()
        return len(messages)

    def _take(self, message, now: float) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consumer error %s", self.name, error)
            return
        partition, offset = message.partition(), message.offset()
        self._consumed[partition] = max(offset, self._consumed.get(partition, -1))
        try:
            decoded = decode(
                message.key(), message.value(), max_size=self.options.max_message_bytes
            )
        except InvalidMessage as exc:
            self._saw_data(partition, now)
            self._dead_letter(exc.reason, exc.detail, message=message)
            return
        if isinstance(decoded, Resolved):
            self.metrics.resolved += 1
            self._last_watermark[partition] = now
            return
        self._saw_data(partition, now)
        self.metrics.received += 1
        pending = _Pending(decoded, partition, offset, message.key(), message.value())
        if self.options.strategy == "block":
            self._block_buffer(decoded.block_order_id).add(pending)
        else:
            if not self._buffer:
                self._buffered_since = now
            self._buffer.append(pending)

    def _saw_data(self, partition: int, now: float) -> None:
        """Executions (and bad messages) count as activity; watermarks do not."""
        self._last_data[partition] = now
        self.metrics.last_message_at = now
        if self.metrics.first_message_at is None:
            self.metrics.first_message_at = now

    def _caught_up(self) -> bool:
        return bool(self._assigned) and all(
            self._last_watermark.get(p, -1.0) > self._last_data.get(p, 0.0) for p in self._assigned
        )

    # -- flushing -----------------------------------------------------------------------------

    def _flush_due(self, now: float) -> None:
        strategy = self.options.strategy
        if strategy == "per-execution":
            while self._buffer:
                self._flush([self._buffer.pop(0)])
        elif strategy == "micro-batch":
            while len(self._buffer) >= self.options.batch_size:
                batch = self._buffer[: self.options.batch_size]
                del self._buffer[: self.options.batch_size]
                self._flush(batch)
            linger = self.options.linger_ms / 1000
            if self._buffer and now - (self._buffered_since or now) >= linger:
                batch, self._buffer = self._buffer, []
                self._flush(batch)
        else:
            for block_id in [b for b, buf in self._blocks.items() if buf.complete]:
                self._flush(self._blocks.pop(block_id).items)
        if not self._buffer:
            self._buffered_since = None

    def flush_all(self) -> None:
        """Flush everything buffered (on shutdown or idle: incomplete block orders too)."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._flush(batch)
        for block_id in list(self._blocks):
            self._flush(self._blocks.pop(block_id).items)
        self._commit()

    def _flush(self, items: list[_Pending]) -> None:
        """One allocation transaction for ``items``; retried until the database answers."""
        executions = [p.execution for p in items]
        by_id = {p.execution.execution_id: p for p in items}
        started = time.perf_counter()

        def apply(conn: psycopg.Connection) -> BatchOutcome:
            nonlocal started
            started = time.perf_counter()
            return run_transaction(
                conn, lambda c: self.store.apply(c, executions), stats=self.metrics.retries
            )

        def failed(exc: BaseException) -> None:
            self._hook(len(items), time.perf_counter() - started, exc)
            self.metrics.failed_transactions += 1

        try:
            outcome = self._with_database(apply, on_failure=failed)
        except BaseException as exc:
            if not isinstance(exc, psycopg.OperationalError | PoolTimeout):
                failed(exc)
            raise
        seconds = time.perf_counter() - started
        self._record(outcome, seconds, by_id)
        self._hook(len(items), seconds, None)

    def _with_database(
        self,
        work: Callable[[psycopg.Connection], T],
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> T:
        """``work`` on a pooled connection, waiting out a database outage.

        When the server goes away (a restart, the network) nothing of ``work`` was committed,
        or, if the connection broke during COMMIT, the effect is idempotent anyway: the same
        work runs again once the server is back. No offset moves meanwhile (offsets are only
        committed after this returns). Kept trying while the run goes on; given up soon once
        it is asked to stop. Each outage is logged once when it starts and once when it ends,
        and counted in the metrics.
        """
        attempt = 0
        while True:
            try:
                with self.pool.connection(timeout=CONNECTION_WAIT) as conn:
                    result = work(conn)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if on_failure is not None:
                    on_failure(exc)
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                m = self.metrics
                if m.outage_since is None:
                    m.outage_since = time.monotonic()
                    m.database_outages += 1
                    log.warning("%s: database unavailable (%s); waiting for it, offsets held",
                                self.name, reason)  # fmt: skip
                if self.stop.is_set() and attempt >= 3:
                    raise
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.info("%s: database still unavailable (%s); retrying in %.1f s",
                         self.name, reason, delay)  # fmt: skip
                time.sleep(delay)
                continue
            m = self.metrics
            if m.outage_since is not None:
                down = time.monotonic() - m.outage_since
                m.outage_seconds += down
                m.outage_since, m.outage_ended_at = None, time.monotonic()
                log.warning("%s: database back after %.1f s; allocating again", self.name, down)
            return result

    def _record(self, outcome: BatchOutcome, seconds: float, by_id: dict) -> None:
        m = self.metrics
        m.transactions += 1
        m.txn_latency.record(seconds)
        m.allocated += len(outcome.applied)
        m.duplicates += outcome.duplicates
        m.snapshots += outcome.snapshots
        m.completed_blocks += len(outcome.completed)
        committed_at = datetime.now(UTC)
        for fill in outcome.applied:
            pending = by_id.get(fill.execution_id)
            source_time = fill.executed_at
            if pending is not None and pending.execution.updated is not None:
                source_time = pending.execution.updated.to_datetime()
            m.e2e_latency.record(max(0.0, (committed_at - source_time).total_seconds()))
        for rejection in outcome.rejected:
            pending = by_id.get(rejection.execution_id)
            self._dead_letter(rejection.reason, rejection.detail, pending=pending,
                              rejection=rejection)  # fmt: skip

    def _hook(self, executions: int, seconds: float, error: BaseException | None) -> None:
        if self.on_transaction is not None:
            self.on_transaction(self.options.strategy, executions, seconds, error)

    # -- offsets ------------------------------------------------------------------------------

    def _held_back(self) -> dict[int, int]:
        """Per partition, the lowest offset still waiting in memory (not yet in the database)."""
        low: dict[int, int] = {}
        pending = self._buffer + [p for b in self._blocks.values() for p in b.items]
        for p in pending:
            low[p.partition] = min(p.offset, low.get(p.partition, p.offset))
        return low

    def _commit(self) -> None:
        if self._dead_letters_unacked:
            # A dead letter must be durable before the offset that dropped it moves on.
            if self._producer.flush(30) > 0:
                log.warning("%s: dead letters not acknowledged; offsets held back", self.name)
                return
            self._dead_letters_unacked = 0
        held = self._held_back()
        offsets = []
        for partition, last in self._consumed.items():
            next_offset = held.get(partition, last + 1)
            if next_offset > self._committed.get(partition, -1):
                offsets.append(TopicPartition(self.options.topic, partition, next_offset))
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a rebalance in progress, or the broker went away
            log.warning("%s: offset commit failed (%s); will retry", self.name, exc)
            return
        for tp in offsets:
            self._committed[tp.partition] = tp.offset
        self.metrics.last_commit_at = time.monotonic()

    def _on_assign(self, consumer, partitions) -> None:
        self.metrics.assigned = True
        self.metrics.assigned_at = time.monotonic()
        for tp in partitions:
            self._committed.pop(tp.partition, None)
            self._assigned.add(tp.partition)

    def _on_revoke(self, consumer, partitions) -> None:
        """Before partitions move to another member: hand over a clean, committed state."""
        revoked = {tp.partition for tp in partitions}
        if self.options.strategy == "block":
            # Incomplete block orders are not allocated early; their messages were never
            # committed, so the next owner reads them again from the committed offset.
            self._blocks = {
                b: buf for b, buf in self._blocks.items() if buf.partition not in revoked
            }
        elif self._buffer:
            batch, self._buffer = self._buffer, []
            self._flush(batch)
        self._commit()
        for partition in revoked:
            self._consumed.pop(partition, None)
            self._committed.pop(partition, None)
            self._assigned.discard(partition)

    def _update_lag(self) -> None:
        try:
            assignment = self._consumer.assignment()
            if not assignment:
                self.metrics.lag = 0 if self.metrics.assigned else None  # nothing to read
                return
            positions = self._consumer.position(assignment)
            lag = 0
            for tp in positions:
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=2.0)
                position = tp.offset if tp.offset >= 0 else self._committed.get(tp.partition, 0)
                lag += max(0, high - position)
            self.metrics.lag = lag
        except Exception as exc:  # lag is a measurement; never let it stop the consumer
            log.debug("%s: lag unavailable: %s", self.name, exc)

    # -- dead letters -------------------------------------------------------------------------

    def _dead_letter(
        self,
        reason: str,
        detail: str,
        message=None,
        pending: _Pending | None = None,
        rejection: Rejection | None = None,
    ) -> None:
        self.metrics.dead_letters[reason] += 1
        if message is not None:
            key, value = message.key(), message.value()
            source = {"topic": message.topic(), "partition": message.partition(),
                      "offset": message.offset()}  # fmt: skip
        elif pending is not None:
            key, value = pending.key, pending.value
            source = {"topic": self.options.topic, "partition": pending.partition,
                      "offset": pending.offset}  # fmt: skip
        else:  # applied later than it arrived: describe the stored fill instead
            key, value = None, _describe_fill(rejection.fill if rejection else None)
            source = {"topic": self.options.topic, "stored_fill": True}
        letter = {
            "reason": reason,
            "detail": detail,
            "source": source,
            "consumer": self.name,
            "strategy": self.options.strategy,
            "at": datetime.now(UTC).isoformat(),
            **_payload("key", key),
            **_payload("payload", value),
        }
        self._producer.produce(
            self.options.dead_letters, key=key, value=json.dumps(letter).encode()
        )
        self._producer.poll(0)
        self._dead_letters_unacked += 1
        log.info("%s: dead letter (%s): %s", self.name, reason, detail)

    def _block_buffer(self, block_id: uuid.UUID) -> _BlockBuffer:
        buf = self._blocks.get(block_id)
        if buf is None:
            buf = self._with_database(lambda conn: _BlockBuffer.load(conn, block_id))
            self._blocks[block_id] = buf
        return buf


@dataclass
class _Pending:
    execution: Execution
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class _BlockBuffer:
    """What the block strategy knows about one block order while its executions gather.

    It starts from the database's view (what earlier runs applied) and tracks only what it
    needs to know when the block order is complete: the net fill, the order quantity after
    replaces, and whether the seqs are contiguous.
    """

    block_order_id: uuid.UUID
    base_seq: int
    base_filled: int
    base_quantity: int
    already_complete: bool
    items: list[_Pending] = field(default_factory=list)

    @classmethod
    def load(cls, conn: psycopg.Connection, block_id: uuid.UUID) -> _BlockBuffer:
        row = conn.execute(
            "SELECT applied_seq, filled_quantity, order_quantity, status = 'complete' "
            "FROM allocations.block_fills WHERE block_order_id = %s",
            (block_id,),
        ).fetchone()
        if row is None:
            found = conn.execute(
                "SELECT quantity FROM orders.block_orders WHERE block_order_id = %s",
                (block_id,),
            ).fetchone()
            # An unknown block order: flush it at once so the store dead-letters it.
            row = (0, 0, found[0], False) if found else (0, 0, 0, True)
        return cls(block_id, *row)

    @property
    def partition(self) -> int | None:
        return self.items[0].partition if self.items else None

    def add(self, pending: _Pending) -> None:
        self.items.append(pending)

    @property
    def complete(self) -> bool:
        if self.already_complete:
            return True  # redeliveries of a finished block order: let the store drop them
        by_seq = {}
        for p in self.items:
            by_seq.setdefault(p.execution.seq, p.execution)
        filled, quantity, seq = self.base_filled, self.base_quantity, self.base_seq
        while seq + 1 in by_seq:
            seq += 1
            e = by_seq[seq]
            if e.activity == "execute":
                filled += e.quantity
            elif e.activity == "bust":
                filled -= e.quantity
            elif e.activity == "replace":
                quantity = e.quantity
        return filled == quantity and seq > self.base_seq


def _payload(name: str, raw: bytes | None) -> dict:
    """The original bytes, as text when they are UTF-8, else base64; cut at a limit."""
    if raw is None:
        return {name: None}
    cut = raw[:DEAD_LETTER_PAYLOAD_LIMIT]
    out: dict = {}
    try:
        out[name] = cut.decode("utf-8")
    except UnicodeDecodeError:
        out[name] = base64.b64encode(cut).decode()
        out[f"{name}_encoding"] = "base64"
    if len(raw) > len(cut):
        out[f"{name}_truncated_from"] = len(raw)
    return out


def _describe_fill(fill: FillRow | Execution | None) -> bytes | None:
    if fill is None:
        return None
    fields = {
        k: (str(v) if v is not None and not isinstance(v, int) else v)
        for k, v in vars(fill).items()
        if k != "updated"
    }
    return json.dumps(fields).encode()


COUNTERS = (
    "allocated", "received", "duplicates", "transactions", "failed_transactions", "snapshots",
    "completed_blocks", "resolved", "database_outages", "outage_seconds",
)  # fmt: skip


def merge_metrics(parts: list[ConsumerMetrics]) -> ConsumerMetrics:
    total = ConsumerMetrics(name="total")
    for m in parts:
        for name in COUNTERS:
            setattr(total, name, getattr(total, name) + getattr(m, name))
        total.dead_letters.update(m.dead_letters)
        total.txn_latency.merge(m.txn_latency)
        total.e2e_latency.merge(m.e2e_latency)
        for key, value in m.retries.as_dict().items():
            if key == "by_sqlstate":
                total.retries.by_sqlstate.update(value)
            else:
                setattr(total.retries, key, getattr(total.retries, key) + value)
        if m.lag is not None:
            total.lag = (total.lag or 0) + m.lag
        for name, pick in (("first_message_at", min), ("last_commit_at", max),
                           ("last_message_at", max), ("assigned_at", max)):  # fmt: skip
            values = [v for v in (getattr(total, name), getattr(m, name)) if v is not None]
            setattr(total, name, pick(values) if values else None)
        total.assigned = total.assigned or m.assigned
        if m.outage_since is not None:
            since = total.outage_since
            total.outage_since = m.outage_since if since is None else min(since, m.outage_since)
    return total


__all__ = [
    "STRATEGIES",
    "AllocationConsumer",
    "AllocatorOptions",
    "ConsumerMetrics",
    "TransactionHook",
    "merge_metrics",
]

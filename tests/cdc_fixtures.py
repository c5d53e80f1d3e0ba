"""Fixtures and helpers of the CDC tests: a database with a slot of its own, a topic of its own,
a relay in a thread, executions to write, and a reader of the topic.

Replication slots are cluster-wide and a database with a slot cannot be dropped, so every test
gets a uniquely named slot that is dropped before its database is.

A test module uses the fixture by importing ``cdc_target_fixture`` (it registers as
``cdc_target``).
"""

from __future__ import annotations

import contextlib
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from workload import topics
from workload.cdc import CdcOptions
from workload.cdc import slot as slots
from workload.cdc.relay import Relay, RelayConfig, RelayOptions
from workload.cdc.slot import SlotSpec
from workload.endpoints import Endpoints
from workload.envelope import Activity, Execution
from workload.settings import Settings

FAST_RELAY = RelayOptions(resolved_interval=0.2, status_interval=0.2, idle_poll=0.01)

INSERT = (
    "INSERT INTO trades.executions (execution_id, block_order_id, seq, activity, quantity, "
    "price, ref_execution_id, order_type, destination, executed_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class CdcTarget:
    """A database with the kit's schema, a slot and a topic, all this test's own."""

    dsn: str
    bootstrap: str
    slot: SlotSpec
    topic_spec: topics.TopicSpec
    run_dir: Path

    @property
    def topic(self) -> str:
        return self.topic_spec.name

    def options(self, relay: RelayOptions = FAST_RELAY) -> CdcOptions:
        return CdcOptions(topics=self.topic_spec, slot=self.slot, relay=relay)

    def endpoints(self) -> Endpoints:
        return Endpoints(self.dsn, self.bootstrap, "test", embedded=False)

    def settings(self) -> Settings:
        return Settings(dsn=self.dsn, kafka_bootstrap=self.bootstrap, run_dir=self.run_dir)

    def relay_config(self, options: RelayOptions = FAST_RELAY) -> RelayConfig:
        return RelayConfig(
            slot=self.slot,
            topics=self.topic_spec,
            status_path=self.run_dir / "cdc" / "relay.json",
            options=options,
        )


def drop_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None:
            return
        if row[0] is not None:  # a relay a test could not stop: end its session first
            conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        for _ in range(50):
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                threading.Event().wait(0.1)


@pytest.fixture(name="cdc_target")
def cdc_target_fixture(lab_stack, schema_dsn, tmp_path) -> Iterator[CdcTarget]:
    """A database, slot and publication, and a topic (4 partitions) of the test's own; the
    slot exists before the test writes, so it captures everything."""
    target = CdcTarget(
        dsn=schema_dsn,
        bootstrap=lab_stack.kafka_bootstrap,
        slot=SlotSpec(slot=unique("t_slot_"), publication=unique("t_pub_")),
        topic_spec=topics.TopicSpec(name=unique("t-exec-"), partitions=4),
        run_dir=tmp_path / ".lab",
    )
    try:
        with psycopg.connect(schema_dsn, autocommit=True) as conn:
            slots.setup(conn, target.slot)
        topics.ensure_topics(target.bootstrap, target.topic_spec)
        yield target
    finally:
        drop_slot(schema_dsn, target.slot.slot)


@contextlib.contextmanager
def relay_thread(target: CdcTarget, relay: Relay | None = None, **kw) -> Iterator[Relay]:
    """A relay running in a thread for the duration of the block, stopped even on failure."""
    relay = relay or Relay(
        target.relay_config(**kw),
        database_url=lambda: target.dsn,
        kafka_bootstrap=lambda: target.bootstrap,
    )
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            relay.run(stop)
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name="relay", daemon=True)
    thread.start()
    try:
        wait_until(lambda: relay.state == "running" or failure, what="the relay to start")
        if failure:
            raise failure[0]
        yield relay
    finally:
        stop.set()
        thread.join(60)
    if failure:
        raise failure[0]


def wait_until(condition: Callable[[], object], *, what: str, timeout: float = 60.0):
    """Poll ``condition`` until it is truthy; fail the test (not a timing assertion: a bound
    so that a broken relay fails instead of hanging) after ``timeout``."""
    event = threading.Event()
    deadline = datetime.now(UTC) + timedelta(seconds=timeout)
    while datetime.now(UTC) < deadline:
        value = condition()
        if value:
            return value
        event.wait(0.02)
    pytest.fail(f"timed out waiting for {what}")


# --------------------------------------------------------------------------------------------
# Executions


def make_executions(count: int, *, block_orders: int, rng: random.Random) -> list[Execution]:
    """Valid executions of every activity, with the awkward values a relay must carry."""
    blocks = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(block_orders)]
    texts = ["plain", 'quote " and \\ backslash', "new\nline\ttab", "ünïcødé ✓ 東京", "\x01\x1f"]
    start = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    executions: list[Execution] = []
    for seq in range(count):
        block = blocks[seq % block_orders]
        activity = [Activity.EXECUTE, Activity.EXECUTE, Activity.BUST, Activity.REPLACE][seq % 4]
        micros = rng.choice([0, 1, 10, 120_000, 123_456, 999_999, rng.randrange(1_000_000)])
        executed_at = start + timedelta(seconds=seq, microseconds=micros)
        kwargs: dict = dict(
            execution_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            block_order_id=block,
            seq=seq,
            activity=activity,
            quantity=rng.randrange(1, 10_000),
            price=None,
            ref_execution_id=None,
            order_type=None,
            destination=None,
            executed_at=executed_at,
        )
        if activity is Activity.EXECUTE:
            kwargs["price"] = Decimal(rng.choice(["101.25", "0.0001", "12345678901234.9999"]))
        elif activity is Activity.BUST:
            kwargs["ref_execution_id"] = executions[-1].execution_id
        else:
            kwargs["order_type"] = rng.choice(texts)
            kwargs["destination"] = rng.choice([*texts, None])
        executions.append(Execution(**kwargs))
    return executions


def row_of(execution: Execution) -> tuple:
    return (
        execution.execution_id, execution.block_order_id, execution.seq, str(execution.activity),
        execution.quantity, execution.price, execution.ref_execution_id, execution.order_type,
        execution.destination, execution.executed_at,
    )  # fmt: skip


def insert(dsn: str, executions: list[Execution], *, per_transaction: int) -> None:
    """Write the executions in transactions of ``per_transaction`` rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, len(executions), per_transaction):
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    INSERT, [row_of(e) for e in executions[first : first + per_transaction]]
                )


# --------------------------------------------------------------------------------------------
# Reading the topic


@dataclass
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class TopicReader:
    """Reads every partition of a topic from the beginning, without a consumer group (a group
    join costs seconds against Tansu)."""

    bootstrap: str
    topic: str
    partitions: int
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": unique("t-reader-"),
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)]
        )

    def read_until(self, condition: Callable[[list[Message]], bool], what: str) -> list[Message]:
        def done() -> bool:
            for message in self._consumer.consume(1000, timeout=0.2):
                if message.error() is None:
                    self.messages.append(
                        Message(
                            message.partition(), message.offset(), message.key(), message.value()
                        )
                    )
            return condition(self.messages)

        wait_until(done, what=what)
        return self.messages

    def changes(self) -> list[Message]:
        return [m for m in self.messages if m.key is not None]

    def close(self) -> None:
        self._consumer.close()


@contextlib.contextmanager
def topic_reader(target: CdcTarget, partitions: int | None = None) -> Iterator[TopicReader]:
    reader = TopicReader(target.bootstrap, target.topic, partitions or target.topic_spec.partitions)
    try:
        yield reader
    finally:
        reader.close()


def changes_at_least(count: int) -> Callable[[list[Message]], bool]:
    return lambda messages: sum(1 for m in messages if m.key is not None) >= count

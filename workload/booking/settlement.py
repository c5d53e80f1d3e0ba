"""Settlement instructions to the back office: a Kafka topic fed from a table (an outbox relay).

A booking writes its settlement row in the same transaction as the holdings change, with
``published_at`` NULL. The relay then, in its own small transactions, claims unpublished rows
(``FOR UPDATE SKIP LOCKED``, so several relays share the work), produces them, waits for the
broker's acknowledgement, and only then sets ``published_at``. A crash anywhere leaves the
row unpublished or publishes it again: never lost, sometimes twice. Every message is keyed by
its settlement id (one per booking, derived from the block order and the account), so a
consumer drops duplicates by key.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewTopic
from psycopg import sql

from workload.errors import LabError
from workload.topics import (
    BROKER_DEFAULT_REPLICATION,
    DEFAULT_PARTITIONS,
    KAFKA_HINT,
    admin_client,
    check_topic_name,
    partition_count,
)

log = logging.getLogger("workload.booking")

DEFAULT_SETTLEMENT_TOPIC = "settlements"
SCHEMA_VERSION = 1
_NAMESPACE = uuid.UUID("5e771e00-b00c-4a11-9c0d-0b5e771e0001")

SETTLEMENT_COLUMNS = (
    "settlement_id", "block_order_id", "account_id", "security_id", "side", "quantity",
    "price", "gross_amount", "cash_amount", "fee", "net_amount", "trade_date", "settle_date",
)  # fmt: skip

CLAIM_UNPUBLISHED = sql.SQL("""
SELECT {columns}
  FROM allocations.settlements
 WHERE published_at IS NULL
 ORDER BY published_at, created_at
 LIMIT %s
   FOR UPDATE SKIP LOCKED
""").format(columns=sql.SQL(", ").join(map(sql.Identifier, SETTLEMENT_COLUMNS)))

MARK_PUBLISHED = """
UPDATE allocations.settlements SET published_at = now()
 WHERE settlement_id = ANY(%s) AND published_at IS NULL
"""


def settlement_id(block_order_id: uuid.UUID, account_id: uuid.UUID) -> uuid.UUID:
    """The same id for the same booking, however often it is attempted."""
    return uuid.uuid5(_NAMESPACE, f"{block_order_id}/{account_id}")


def encode(row: tuple) -> tuple[bytes, bytes]:
    """(key, value) of one settlements row (in :data:`SETTLEMENT_COLUMNS` order)."""
    fields = dict(zip(SETTLEMENT_COLUMNS, row, strict=True))

    def text(value):
        # Decimals as strings: a JSON number would pass through a float in most consumers.
        if isinstance(value, uuid.UUID | Decimal):
            return str(value)
        if isinstance(value, date | datetime):
            return value.isoformat()
        return value

    message = {"schema_version": SCHEMA_VERSION} | {k: text(v) for k, v in fields.items()}
    return str(fields["settlement_id"]).encode(), json.dumps(message, sort_keys=True).encode()


def decode(value: bytes) -> dict:
    """A settlement message as the database row's Python values (for back-office consumers
    and tests)."""
    raw = json.loads(value)
    out = dict(raw)
    for name in ("settlement_id", "block_order_id", "account_id", "security_id"):
        out[name] = uuid.UUID(raw[name])
    for name in ("price", "gross_amount", "cash_amount", "fee", "net_amount"):
        out[name] = Decimal(raw[name])
    for name in ("trade_date", "settle_date"):
        out[name] = date.fromisoformat(raw[name])
    return out


def ensure_topic(
    bootstrap: str,
    name: str = DEFAULT_SETTLEMENT_TOPIC,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    timeout: float = 10.0,
) -> int:
    """Create the settlements topic unless it exists (safe to call again, from several
    processes at once); returns its partition count. Created here, before anything produces,
    for the reason ``workload.topics`` gives: an auto-created topic gets the broker's default."""
    check_topic_name(name)
    if partitions < 1:
        raise LabError(f"a topic needs at least 1 partition, not {partitions}")
    admin = admin_client(bootstrap, timeout=timeout)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise LabError(
            f"cannot reach the Kafka broker at {bootstrap} ({exc.args[0].str()}); {KAFKA_HINT}"
        ) from None
    if name not in existing:
        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=BROKER_DEFAULT_REPLICATION
        )
        future = admin.create_topics([topic], operation_timeout=timeout, request_timeout=timeout)[
            name
        ]
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise LabError(f"cannot create Kafka topic {name!r}: {error.str()}") from None
    return partition_count(bootstrap, name, timeout=timeout)


class PublishFailed(Exception):
    """The broker did not acknowledge every settlement of a batch; they stay unpublished."""


@dataclass
class RelayPass:
    published: int = 0


class SettlementRelay:
    """Publishes unpublished settlement rows; one per process is enough, more are safe."""

    def __init__(self, bootstrap: str, topic: str, *, batch_size: int = 500, ack_timeout=10.0):
        self.topic = topic
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,  # implies acks=all
                "linger.ms": 5,
                "log_level": 0,  # failures surface as PublishFailed, not as stderr noise
            }
        )

    def publish_batch(self, conn: psycopg.Connection) -> int:
        """Claim, produce and mark one batch; must run inside a transaction (the retry
        helper's). The claim's row locks are held until the broker has acknowledged, which is
        what keeps two relays from publishing the same rows; a retry re-produces, which is
        harmless."""
        rows = conn.execute(CLAIM_UNPUBLISHED, (self.batch_size,)).fetchall()
        if not rows:
            return 0
        failures: list[str] = []

        def delivered(error, _message) -> None:
            if error is not None:
                failures.append(error.str())

        for row in rows:
            key, value = encode(row)
            self._producer.produce(self.topic, key=key, value=value, on_delivery=delivered)
        if self._producer.flush(self.ack_timeout) > 0:
            failures.append("not acknowledged in time")
        if failures:
            raise PublishFailed(f"{len(failures)} settlement(s) not published: {failures[0]}")
        conn.execute(MARK_PUBLISHED, ([row[0] for row in rows],))
        return len(rows)

    def close(self) -> None:
        self._producer.flush(self.ack_timeout)

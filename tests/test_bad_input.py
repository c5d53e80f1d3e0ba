"""Bad input end to end: every kind of bad message of issue 10, between valid ones, through a
real consumer group and the real broker. Each lands in the dead-letter topic with its reason,
the consumer's counters count it per reason, and the consumer goes on: the valid messages
after it are allocated and ``verify`` passes.

(``tests/test_envelope.py`` checks every reason of the decoder and fuzzes it; this file checks
what the running consumer does with them.)

Extra fields are dead-lettered, not tolerated (``extra_field`` in "after", ``bad_envelope`` at
the top level). CockroachDB does not add envelope fields across versions by itself: the
changefeed's fields follow the options it is created with (``diff``, ``mvcc_timestamp``, ...),
which the kit sets, and "after" holds exactly the table's columns. An unknown column therefore
means the table or the changefeed changed underneath the consumer; allocating while ignoring a
column whose meaning it does not know (a cancel flag, a currency) could allocate wrongly, which
is worse than stopping that message. The dead-letter topic keeps the message with its reason,
nothing is lost, and the counter shows the drift at once.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from confluent_kafka import Producer

from tests.allocation_fixtures import executions, new_topic, traded_dsn
from tests.test_allocation_pipeline import failed_checks, read_dead_letters
from workload.allocate import AllocatorOptions, RunOptions, run_allocation
from workload.envelope import HLC, encode_change

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["traded_dsn"]

MAX_BYTES = 64 * 1024  # the consumer's limit here; the broker takes more


def bad_messages(good) -> dict[str, tuple[str, bytes, bytes]]:
    """name -> (expected reason, key, value), each a valid execution but for its fault."""
    key, value = encode_change(good, HLC.from_datetime(good.executed_at))
    envelope = json.loads(value)
    after, updated = envelope["after"], envelope["updated"]

    def change(changes: dict | None = None, drop: str | None = None, **top) -> bytes:
        row = {**after, "execution_id": str(uuid.uuid4()), **(changes or {})}
        if drop:
            del row[drop]
        return json.dumps({"after": row, "updated": updated, **top}).encode()

    ghost = str(uuid.uuid4())
    return {
        "malformed JSON": ("bad_json", key, b'{"after": {not json'),
        "missing field": ("missing_field", key, change(drop="quantity")),
        "extra field": ("extra_field", key, change({"currency": "USD"})),
        "extra envelope field": ("bad_envelope", key, change(source={"db": "x"})),
        "wrong type": ("wrong_type", key, change({"quantity": "fifty"})),
        "negative quantity": ("bad_quantity", key, change({"quantity": -50})),
        "zero quantity": ("bad_quantity", key, change({"quantity": 0})),
        "unknown block order": (
            "unknown_block_order",
            json.dumps([ghost]).encode(),
            change({"block_order_id": ghost}),
        ),
        "oversized": ("too_large", key, b'{"after": "' + b"x" * (MAX_BYTES + 1000) + b'"}'),
    }


def test_every_kind_of_bad_message_is_dead_lettered_with_its_reason_and_counted(
    lab_stack, traded_dsn
):
    items = executions(traded_dsn)
    bad = bad_messages(items[0])
    topic = new_topic(lab_stack.kafka_bootstrap, partitions=2)
    producer = Producer({"bootstrap.servers": lab_stack.kafka_bootstrap})
    half = len(items) // 2

    def produce(batch) -> None:
        for e in batch:
            k, v = encode_change(e, HLC.from_datetime(e.executed_at))
            producer.produce(topic, key=k, value=v)

    produce(items[:half])  # valid messages before the bad ones ...
    for _, key, value in bad.values():
        producer.produce(topic, key=key, value=value)
    produce(items[half:])  # ... and after them, on the same partitions
    assert producer.flush(30) == 0

    options = AllocatorOptions(topic=topic, group_id=f"bad-{uuid.uuid4().hex[:8]}",
                               consumers=2, max_message_bytes=MAX_BYTES)  # fmt: skip
    report = run_allocation(traded_dsn, lab_stack.kafka_bootstrap, options,
                            RunOptions(until_idle=1.5, max_seconds=120))  # fmt: skip

    expected = Counter(reason for reason, _, _ in bad.values())
    assert report.total.dead_letters == expected  # the counters, per reason
    assert report.total.allocated == len(items)  # it went on past every bad message
    assert failed_checks(traded_dsn) == []

    letters = read_dead_letters(lab_stack.kafka_bootstrap, topic + ".dlq", len(bad))
    assert Counter(letter["reason"] for letter in letters) == expected
    assert all(letter["detail"] and "payload" in letter for letter in letters)
    payloads = {letter["reason"]: letter for letter in letters}
    assert payloads["bad_json"]["payload"] == '{"after": {not json'
    assert payloads["too_large"]["payload_truncated_from"] == len(bad["oversized"][2])

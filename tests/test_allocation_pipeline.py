"""The allocation consumers through the real broker: strategies, duplicates, dead letters,
and a consumer SIGKILLed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer

from tests.allocation_fixtures import (
    executions,
    new_topic,
    publish,
    reset_allocations,
    state_digest,
    traded_dsn,
)
from tests.conftest import REPO
from workload.allocate import AllocatorOptions, RunOptions, run_allocation
from workload.allocate.store import AllocationStore
from workload.db import run_transaction
from workload.dialect import detect
from workload.envelope import HLC, encode_change
from workload.verify import run_checks

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["traded_dsn"]


def failed_checks(dsn):
    with psycopg.connect(dsn) as conn:
        return [(r.check.name, r.count, r.examples[:3]) for r in run_checks(conn) if not r.passed]


def allocate(dsn, bootstrap, topic, **options):
    opts = AllocatorOptions(topic=topic, group_id=f"group-{uuid.uuid4().hex[:8]}", **options)
    return run_allocation(dsn, bootstrap, opts, RunOptions(until_idle=1.5, max_seconds=120))


def reference_digest(dsn, items):
    """The end state of an undisturbed, in-order application (no Kafka)."""
    reset_allocations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        store = AllocationStore(detect(conn))
        run_transaction(conn, lambda c: store.apply(c, items))
    digest = state_digest(dsn)
    reset_allocations(dsn)
    return digest


@pytest.mark.parametrize(
    ("strategy", "consumers"), [("per-execution", 2), ("micro-batch", 3), ("block", 2)]
)
def test_each_strategy_allocates_everything_exactly_once(
    lab_stack, traded_dsn, strategy, consumers
):
    items = executions(traded_dsn)
    expected = reference_digest(traded_dsn, items)
    topic = new_topic(lab_stack.kafka_bootstrap, partitions=4)
    publish(lab_stack.kafka_bootstrap, topic, items)
    report = allocate(
        traded_dsn, lab_stack.kafka_bootstrap, topic, strategy=strategy, consumers=consumers
    )
    assert report.total.allocated == len(items)
    assert report.total.dead_letters == {}
    assert failed_checks(traded_dsn) == []
    assert state_digest(traded_dsn) == expected
    d = report.as_dict()
    assert d["executions_per_s"] > 0 and d["txn_latency_ms"]["count"] == d["transactions"]
    if strategy == "per-execution":
        assert d["transactions"] == len(items)
    elif strategy == "block":
        with psycopg.connect(traded_dsn) as conn:
            blocks = conn.execute("SELECT count(*) FROM orders.block_orders").fetchone()[0]
        assert d["transactions"] == blocks  # one transaction per completed block order


def test_duplicates_on_the_topic_change_nothing(lab_stack, traded_dsn):
    items = executions(traded_dsn)
    expected = reference_digest(traded_dsn, items)
    topic = new_topic(lab_stack.kafka_bootstrap)
    # Everything twice, the second time in reverse: redeliveries out of order.
    publish(lab_stack.kafka_bootstrap, topic, items + items[::-1])
    report = allocate(traded_dsn, lab_stack.kafka_bootstrap, topic, strategy="micro-batch")
    assert report.total.allocated == len(items)
    assert report.total.duplicates + report.total.allocated >= len(items)
    assert failed_checks(traded_dsn) == []
    assert state_digest(traded_dsn) == expected


def read_dead_letters(bootstrap, topic, expected, timeout=30):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    letters = []
    deadline = time.monotonic() + timeout
    try:
        while len(letters) < expected and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.5):
                if m.error() is None:
                    letters.append(json.loads(m.value()))
    finally:
        consumer.close()
    return letters


def test_each_kind_of_bad_message_is_dead_lettered_and_the_rest_allocated(lab_stack, traded_dsn):
    items = executions(traded_dsn)
    good = items[0]
    key, value = encode_change(good, HLC.from_datetime(good.executed_at))
    after = json.loads(value)["after"]

    def variant(**changes):
        body = {"after": {**after, **changes}, "updated": json.loads(value)["updated"]}
        return key, json.dumps(body).encode()

    missing = dict(after)
    del missing["quantity"]
    ghost_block = str(uuid.uuid4())
    ghost = {**after, "block_order_id": ghost_block, "execution_id": str(uuid.uuid4())}
    bad = {
        "bad_json": (key, b"{not json"),
        "missing_field": (key, json.dumps({"after": missing}).encode()),
        "negative_quantity": variant(quantity=-50, execution_id=str(uuid.uuid4())),
        "wrong_type": variant(quantity="fifty", execution_id=str(uuid.uuid4())),
        "unknown_block_order": (
            json.dumps([ghost_block]).encode(),
            json.dumps({"after": ghost, "updated": json.loads(value)["updated"]}).encode(),
        ),
        # Above the consumer's limit (64 KiB here), below the broker's.
        "oversized": (key, b'{"after": "' + b"x" * 100_000 + b'"}'),
    }
    topic = new_topic(lab_stack.kafka_bootstrap)
    publish(lab_stack.kafka_bootstrap, topic, items, raw=list(bad.values()))
    report = allocate(
        traded_dsn, lab_stack.kafka_bootstrap, topic, strategy="micro-batch",
        max_message_bytes=64 * 1024,
    )  # fmt: skip

    assert report.total.allocated == len(items), "the good executions are all allocated"
    assert sum(report.total.dead_letters.values()) == len(bad)
    assert failed_checks(traded_dsn) == []
    letters = read_dead_letters(lab_stack.kafka_bootstrap, topic + ".dlq", len(bad))
    assert len(letters) == len(bad)
    reasons = sorted(letter["reason"] for letter in letters)
    assert "unknown_block_order" in reasons
    assert all(letter["detail"] and "payload" in letter for letter in letters)
    assert any(
        letter.get("payload_truncated_from") == len(bad["oversized"][1]) for letter in letters
    )
    assert any(letter["payload"] == "{not json" for letter in letters)


def test_a_consumer_killed_mid_run_and_restarted_ends_identical(lab_stack, traded_dsn):
    """SIGKILL the consumer while it waits inside an allocation transaction, start it again:
    the end state is that of an undisturbed run."""
    items = executions(traded_dsn)
    expected = reference_digest(traded_dsn, items)
    topic = new_topic(lab_stack.kafka_bootstrap)
    publish(lab_stack.kafka_bootstrap, topic, items)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["PYTHONPATH"] = str(REPO)
    command = [
        sys.executable, "-m", "workload", "allocate", "--dsn", traded_dsn,
        "--kafka-bootstrap", lab_stack.kafka_bootstrap, "--topic", topic,
        "--group", f"killed-{uuid.uuid4().hex[:6]}", "--strategy", "per-execution",
        "--until-idle", "2s", "--no-record",  # tests write nothing into the working tree
    ]  # fmt: skip
    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < len(items) // 4:
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline, "the consumer allocated too little to kill"
            time.sleep(0.05)
            done = _count(traded_dsn, "SELECT count(*) FROM allocations.fills")
        with psycopg.connect(traded_dsn) as locker:
            # Every allocation transaction stores its fills, then writes its block order's
            # state: holding that table makes the next one wait there, its fills written and
            # not committed, and the kill lands inside it.
            locker.execute("LOCK TABLE allocations.block_fills IN EXCLUSIVE MODE")
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            while not _count(traded_dsn, query):
                assert victim.poll() is None, victim.communicate()
                assert time.monotonic() < deadline, "the consumer never waited on the lock"
                time.sleep(0.05)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            locker.rollback()
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert 0 < done < len(items), "kill it mid-run"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert failed_checks(traded_dsn) == []
    assert state_digest(traded_dsn) == expected


def _count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchone()[0]


def test_more_consumers_than_partitions_is_refused(lab_stack, traded_dsn):
    from workload.errors import LabError

    topic = new_topic(lab_stack.kafka_bootstrap, partitions=2)
    with pytest.raises(LabError, match=r"3 consumers but topic .* has 2 partitions"):
        allocate(traded_dsn, lab_stack.kafka_bootstrap, topic, consumers=3)

"""The PostgreSQL relay on the embedded stack: what reaches the topic, and that nothing is lost.

Each test has its own database, slot and topic (``cdc_target``); relays run in a thread and
are stopped at the end of the test, or run as a process the test stops (or SIGKILLs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
from collections import defaultdict
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.cdc_fixtures import (
    cdc_target_fixture,  # noqa: F401 (registers the cdc_target fixture)
    changes_at_least,
    insert,
    make_executions,
    relay_thread,
    topic_reader,
    wait_until,
)
from workload import cdc
from workload.cdc import process
from workload.cdc import reader as reader_module
from workload.cdc.encoding import changefeed_partition
from workload.cdc.relay import Relay, RelayOptions
from workload.cdc.slot import SlotSpec
from workload.embedded import KafkaBroker, terminate
from workload.envelope import COLUMNS, HLC, Execution, Resolved, decode, encode_change
from workload.errors import LabError

pytestmark = pytest.mark.integration


def decoded(messages) -> list[tuple]:
    """(partition, offset, decoded message, raw message) for every message."""
    return [(m.partition, m.offset, decode(m.key, m.value), m) for m in messages]


def execution_ids(messages) -> list:
    return [decode(m.key, m.value).execution_id for m in messages if m.key is not None]


def test_every_execution_reaches_the_topic_once_as_crdb_would_publish_it(cdc_target):
    executions = make_executions(240, block_orders=7, rng=random.Random(4))
    per_transaction = 20  # 12 transactions
    with relay_thread(cdc_target) as relay, topic_reader(cdc_target) as reader:
        insert(cdc_target.dsn, executions, per_transaction=per_transaction)
        reader.read_until(changes_at_least(len(executions)), "every execution on the topic")
        metrics = wait_until(
            lambda: (m := relay.metrics())["changes_published"] >= len(executions) and m,
            what="the relay to count its acknowledgements",
        )

    changes = [d for d in decoded(reader.changes()) if isinstance(d[2], Execution)]
    by_id = {d[2].execution_id: d for d in changes}
    inserted = {e.execution_id: e for e in executions}
    assert len(changes) == len(executions) and by_id.keys() == inserted.keys()

    for execution_id, (partition, _, got, raw) in by_id.items():
        wanted = inserted[execution_id]
        assert got == wanted  # every column, as written
        # byte for byte what CockroachDB's changefeed writes for that row at that time
        assert (raw.key, raw.value) == encode_change(wanted, got.updated)
        value = json.loads(raw.value)
        assert value.keys() == {"after", "updated"}
        assert value["after"].keys() == COLUMNS
        assert json.loads(raw.key) == [str(wanted.block_order_id)]
        assert partition == changefeed_partition(raw.key, cdc_target.topic_spec.partitions)

    partitions_of_block = defaultdict(set)
    for partition, _, got, _ in changes:
        partitions_of_block[got.block_order_id].add(partition)
    assert len(partitions_of_block) == 7
    assert all(len(partitions) == 1 for partitions in partitions_of_block.values())

    # "updated": one per transaction, strictly increasing in commit order
    per_transaction_stamps = [
        {by_id[e.execution_id][2].updated for e in executions[i : i + per_transaction]}
        for i in range(0, len(executions), per_transaction)
    ]
    assert all(len(stamps) == 1 for stamps in per_transaction_stamps)
    stamps = [next(iter(s)) for s in per_transaction_stamps]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(stamp.logical == 0 for stamp in stamps)

    assert metrics["changes_published"] == len(executions)
    assert metrics["transactions"] == len(per_transaction_stamps)
    assert metrics["lag_ms"]["count"] == len(executions)
    assert metrics["lag_ms"]["p99_ms"] is not None


def test_transactions_larger_than_a_read_or_a_chunk(cdc_target, monkeypatch):
    """A read hands its messages over in chunks (a huge transaction never sits whole in
    memory) and returns whole transactions even past its limit; all of it arrives, the
    transaction with one timestamp."""
    monkeypatch.setattr(reader_module, "CHUNK", 64)
    big = make_executions(500, block_orders=5, rng=random.Random(14))
    small = make_executions(40, block_orders=5, rng=random.Random(15))
    options = RelayOptions(batch_changes=100, resolved_interval=0.1, idle_poll=0.01)
    with relay_thread(cdc_target, options=options) as relay, topic_reader(cdc_target) as reader:
        insert(cdc_target.dsn, big, per_transaction=500)
        insert(cdc_target.dsn, small, per_transaction=4)
        reader.read_until(changes_at_least(540), "every execution")
        wait_until(lambda: relay.metrics()["changes_published"] == 540, what="its count")
    changes = [decode(m.key, m.value) for m in reader.changes()]
    assert {c.execution_id for c in changes} == {e.execution_id for e in big + small}
    assert len(changes) == 540
    big_ids = {e.execution_id for e in big}
    assert len({c.updated for c in changes if c.execution_id in big_ids}) == 1
    assert relay.metrics()["transactions"] == 11


def test_resolved_messages_reach_every_partition_and_bound_what_follows(cdc_target):
    first = make_executions(40, block_orders=9, rng=random.Random(5))
    second = make_executions(40, block_orders=9, rng=random.Random(6))
    partitions = cdc_target.topic_spec.partitions
    with relay_thread(cdc_target) as relay, topic_reader(cdc_target) as reader:
        insert(cdc_target.dsn, first, per_transaction=5)
        reader.read_until(changes_at_least(40), "the first executions")
        seen = relay.resolved_messages
        reader.read_until(
            lambda ms: (
                {m.partition for m in ms if m.key is None} == set(range(partitions))
                and relay.resolved_messages >= seen + 2 * partitions
            ),
            "resolved messages on every partition",
        )
        insert(cdc_target.dsn, second, per_transaction=5)
        reader.read_until(changes_at_least(80), "the second executions")

    by_partition = defaultdict(list)
    for partition, offset, message, _ in decoded(reader.messages):
        by_partition[partition].append((offset, message))
    assert set(by_partition) == set(range(partitions))
    for messages in by_partition.values():
        resolved_so_far = HLC(0)
        for _, message in sorted(messages, key=lambda pair: pair[0]):
            if isinstance(message, Resolved):
                assert message.ts >= resolved_so_far  # never goes back
                resolved_so_far = message.ts
            else:
                assert message.updated > resolved_so_far  # nothing arrives below a resolved
    assert relay.metrics()["resolved"] is not None


def test_a_clean_stop_advances_the_slot_and_the_next_run_repeats_nothing(cdc_target):
    executions = make_executions(60, block_orders=3, rng=random.Random(7))
    with relay_thread(cdc_target) as relay, topic_reader(cdc_target) as reader:
        insert(cdc_target.dsn, executions, per_transaction=6)
        reader.read_until(changes_at_least(60), "the executions")
    status = cdc.relay_metrics(cdc_target.run_dir)
    assert status["state"] == "stopped" and status["changes_published"] == 60
    assert status["pid"] == os.getpid() and status["slot"] == cdc_target.slot.slot
    with psycopg.connect(cdc_target.dsn, autocommit=True) as conn:
        confirmed = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (cdc_target.slot.slot,),
        ).fetchone()[0]
    assert confirmed == relay.metrics()["confirmed_lsn"]

    more = make_executions(10, block_orders=2, rng=random.Random(8))
    with relay_thread(cdc_target) as again, topic_reader(cdc_target) as reader:
        insert(cdc_target.dsn, more, per_transaction=10)
        reader.read_until(changes_at_least(70), "the new executions")
        wait_until(lambda: again.metrics()["changes_published"] == 10, what="its count")
    ids = execution_ids(reader.changes())
    assert len(ids) == len(set(ids)) == 70
    # the second run's "updated" starts above the first run's last resolved timestamp
    last = HLC.parse(status["resolved"])
    assert all(decode(m.key, m.value).updated > last for m in reader.changes()[60:])


def test_the_relay_reconnects_when_its_database_session_is_killed(cdc_target):
    first = make_executions(30, block_orders=3, rng=random.Random(9))
    second = make_executions(30, block_orders=3, rng=random.Random(10))
    database = urlsplit(cdc_target.dsn).path.lstrip("/")
    with relay_thread(cdc_target) as relay, topic_reader(cdc_target) as reader:
        insert(cdc_target.dsn, first, per_transaction=10)
        reader.read_until(changes_at_least(30), "the first executions")
        with psycopg.connect(cdc_target.dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'crdblab-cdc-relay%%' AND datname = %s",
                (database,),
            ).fetchone()[0]
        assert killed == 2  # its control session and its reader
        insert(cdc_target.dsn, second, per_transaction=10)
        reader.read_until(changes_at_least(60), "the executions written after the kill")
        assert relay.reconnects["database"] >= 1
    assert set(execution_ids(reader.changes())) == {e.execution_id for e in first + second}


def test_the_relay_waits_out_a_broker_restart(cdc_target, tmp_path):
    """Tansu keeps topics in memory: a restarted broker has none, on a new port. The relay
    notices the failed deliveries, finds the broker again, creates the topic again and
    publishes what the slot still holds."""
    broker = KafkaBroker(tmp_path / "broker")
    record = broker.start()
    current = {"bootstrap": record.url}
    cdc_target.bootstrap = record.url
    relay = Relay(
        cdc_target.relay_config(RelayOptions(ack_timeout=2, max_backoff=0.5)),
        database_url=lambda: cdc_target.dsn,
        kafka_bootstrap=lambda: current["bootstrap"],
    )
    first = make_executions(20, block_orders=2, rng=random.Random(11))
    second = make_executions(20, block_orders=2, rng=random.Random(12))
    try:
        with relay_thread(cdc_target, relay):
            with topic_reader(cdc_target) as reader:
                insert(cdc_target.dsn, first, per_transaction=10)
                reader.read_until(changes_at_least(20), "executions on the first broker")
            terminate(record, timeout=0.2)  # Tansu takes seconds to exit on SIGTERM: kill it
            insert(cdc_target.dsn, second, per_transaction=10)
            wait_until(lambda: relay.reconnects["kafka"] >= 1, what="the relay to notice")
            record = broker.start()
            current["bootstrap"] = cdc_target.bootstrap = record.url
            with topic_reader(cdc_target) as reader:
                reader.read_until(changes_at_least(20), "executions on the restarted broker")
        assert set(execution_ids(reader.changes())) == {e.execution_id for e in second}
        assert relay.metrics()["last_error"].startswith("kafka: ")
    finally:
        terminate(record, timeout=0.2)


def test_the_relay_killed_mid_stream_loses_nothing(cdc_target):
    """SIGKILL the background relay while executions stream in, write more while it is dead,
    start it again: every execution reaches the topic (duplicates allowed, none missing)."""
    options = cdc_target.options(RelayOptions(batch_changes=50, status_interval=0.05))
    endpoints, settings = cdc_target.endpoints(), cdc_target.settings()
    executions = make_executions(1200, block_orders=20, rng=random.Random(13))
    before_kill, after_kill = executions[:800], executions[800:]

    def published() -> int:
        return (cdc.relay_metrics(cdc_target.run_dir) or {}).get("changes_published", 0)

    writer = threading.Thread(
        target=insert, args=(cdc_target.dsn, before_kill), kwargs={"per_transaction": 10}
    )
    try:
        pid = cdc.start(endpoints, settings, options)["relay_pid"]
        writer.start()
        wait_until(lambda: published() >= 100, what="the relay to publish some")
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not process.relay_record(cdc_target.run_dir).is_running(),
            what="the relay to die",
        )
        writer.join()
        insert(cdc_target.dsn, after_kill, per_transaction=10)  # while no relay runs
        assert cdc.status(endpoints, settings, options)["relay"]["state"] == "crashed"

        restarted = cdc.start(endpoints, settings, options)
        assert restarted["relay_started"] and restarted["relay_pid"] != pid
        again = cdc.start(endpoints, settings, options)  # idempotent
        assert not again["relay_started"] and again["relay_pid"] == restarted["relay_pid"]
        elsewhere = dataclasses.replace(
            options, topics=dataclasses.replace(options.topics, name=options.topics.name + "-b")
        )
        with pytest.raises(LabError, match=r"a relay already runs .* stop it first"):
            cdc.start(endpoints, settings, elsewhere)
        wanted = {e.execution_id for e in executions}
        with topic_reader(cdc_target) as reader:
            reader.read_until(
                lambda messages: set(execution_ids(messages)) >= wanted,
                "every execution after the restart",
            )
        assert set(execution_ids(reader.changes())) == wanted
        status = cdc.status(endpoints, settings, options)
        assert status["relay"]["state"] == "running"
        assert status["topic"]["partitions"] == 4 and status["topic"]["messages"] > 0
    finally:
        if writer.is_alive():
            writer.join()
        stopped = cdc.stop(endpoints, settings, options, drop_slot=True)
    assert stopped["relay_stopped"]
    assert stopped["dropped"] == [
        f"slot {cdc_target.slot.slot}",
        f"publication {cdc_target.slot.publication}",
    ]
    assert process.relay_record(cdc_target.run_dir) is None


def test_a_second_relay_on_the_same_slot_is_refused(cdc_target):
    with relay_thread(cdc_target):
        other = Relay(
            cdc_target.relay_config(),
            database_url=lambda: cdc_target.dsn,
            kafka_bootstrap=lambda: cdc_target.bootstrap,
        )
        with pytest.raises(LabError, match="another relay is reading replication slot"):
            other.run(threading.Event())


def test_the_relay_refuses_a_missing_slot(cdc_target):
    config = dataclasses.replace(cdc_target.relay_config(), slot=SlotSpec(slot="t_no_such_slot"))
    relay = Relay(
        config,
        database_url=lambda: cdc_target.dsn,
        kafka_bootstrap=lambda: cdc_target.bootstrap,
    )
    with pytest.raises(LabError, match="'t_no_such_slot' does not exist; create it with"):
        relay.run(threading.Event())

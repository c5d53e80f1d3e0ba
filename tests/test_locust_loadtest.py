"""workload.loadtest: what the locustfiles rely on, tested without Locust."""

import json
import threading
import time
import uuid

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.allocation_fixtures import (
    executions,
    new_topic,
    publish,
    reset_allocations,
    traded_dsn,
)
from workload import records
from workload.allocate.store import AllocationStore
from workload.db import run_transaction
from workload.dialect import detect
from workload.errors import LabError
from workload.loadtest import (
    CONSUMER_SLOTS,
    ConsumerWorker,
    LoadOptions,
    PipelineView,
    RateWindow,
    RunShape,
    SlotLedger,
    Tally,
    TransactionEvent,
    WireHistogram,
    build_record,
    cdc_lag_text,
    partition_count,
    resolve_target,
    verify_outcome,
)

__all__ = ["traded_dsn"]


# -- options ----------------------------------------------------------------------------------


def test_options_treat_an_emptied_web_ui_field_as_not_given():
    options = LoadOptions.from_values(
        {"dsn": "", "bootstrap": "  ", "topology": "docker-3n", "strategy": None, "other": 1}
    )
    assert options.dsn is None and options.bootstrap is None
    assert options.topology == "docker-3n"
    assert options.strategy == LoadOptions().strategy


@pytest.mark.parametrize(
    "values",
    [{"strategy": "bulk"}, {"batch_size": 0}, {"market_rate": 0}, {"until_idle": -1}],
)
def test_bad_options_say_which(values):
    with pytest.raises(LabError, match="--"):
        LoadOptions.from_values(values)


def test_the_options_win_over_stack_outputs_and_lab_variables_are_not_read_twice(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            {
                "sqlUrl": "postgresql://root@crdb:26257/defaultdb",
                "kafkaBootstrap": "kafka:9092",
                "topology": "docker-3n-2cpu",
            }
        )
    )
    env = {"LAB_DSN": "postgresql://from-env@x/db", "LAB_SCALE": "small"}
    from_outputs = LoadOptions(stack_outputs=str(outputs)).settings(env)
    assert from_outputs.dsn == "postgresql://root@crdb:26257/defaultdb"
    assert from_outputs.kafka_bootstrap == "kafka:9092"
    assert from_outputs.topology == "docker-3n-2cpu"
    assert from_outputs.scale == "small"  # variables the options do not cover still count
    flagged = LoadOptions(stack_outputs=str(outputs), dsn="postgresql://u@h/d").settings(env)
    assert flagged.dsn == "postgresql://u@h/d"
    assert flagged.kafka_bootstrap == "kafka:9092"


@pytest.mark.integration
def test_no_database_url_finds_the_embedded_stack_through_the_run_directory(lab_stack):
    target = resolve_target(LoadOptions(run_dir=str(lab_stack.run_dir)), need_kafka=True)
    assert target.endpoints.embedded
    assert target.endpoints.dsn == lab_stack.dsn
    assert target.endpoints.kafka_bootstrap == lab_stack.kafka_bootstrap
    assert target.endpoints.topology == "embedded-postgres"
    assert not target.dialect.is_cockroachdb


def test_no_stack_in_the_run_directory_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(LabError, match="python -m workload up"):
        resolve_target(LoadOptions(run_dir=str(tmp_path)), need_kafka=True)


@pytest.mark.integration
def test_partition_count_reads_metadata_and_creates_nothing(lab_stack):
    bootstrap = lab_stack.kafka_bootstrap
    assert partition_count(bootstrap, new_topic(bootstrap, partitions=3)) == 3
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(LabError, match="cdc start"):
        partition_count(bootstrap, missing)
    listed = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    assert missing not in listed


# -- a consumer in a thread -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_a_consumer_worker_hands_every_transaction_over(lab_stack, traded_dsn):
    items = executions(traded_dsn)
    topic = new_topic(lab_stack.kafka_bootstrap, partitions=2)
    publish(lab_stack.kafka_bootstrap, topic, items)
    options = LoadOptions(strategy="micro-batch", topic=topic, group=f"g-{uuid.uuid4().hex[:8]}")
    target = resolve_target(LoadOptions(dsn=traded_dsn, bootstrap=lab_stack.kafka_bootstrap),
                            need_kafka=True)  # fmt: skip
    worker = ConsumerWorker("worker-1", options.allocator, lab_stack.kafka_bootstrap,
                            traded_dsn, target.dialect)  # fmt: skip
    thread = threading.Thread(target=worker.run)
    thread.start()
    handed: list[TransactionEvent] = []
    deadline = time.monotonic() + 60
    while worker.metrics.allocated < len(items) and time.monotonic() < deadline:
        handed += worker.drain()
        time.sleep(0.1)
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()  # left the group and returned
    handed += worker.drain()
    assert worker.metrics.allocated == len(items)
    assert len(handed) == worker.metrics.transactions
    assert sum(e.executions for e in handed) == worker.metrics.received
    assert all(e.strategy == "micro-batch" and e.error is None for e in handed)


# -- what a process measured ------------------------------------------------------------------


def event(seconds, executions=1, ended_at=100.0, error=None):
    return TransactionEvent("per-execution", executions, seconds, error, ended_at)


def test_a_tally_survives_the_wire_and_merges_bucket_by_bucket():
    one, two = Tally(), Tally()
    for i in range(200):
        one.record(event(0.001 * (i + 1), ended_at=10.0 + i))
        two.record(event(0.5, executions=3, ended_at=5.0))
    two.record(event(1.0, error=RuntimeError("down")))
    one.count_allocated("p1-consumer-1", 150)
    two.count_allocated("p2-consumer-1", 600)
    one.lag["p1-consumer-1"] = 7
    one.add_retries({"transactions": 3, "retries": 2, "exhausted": 0, "by_sqlstate": {"40001": 2}})
    two.add_retries({"transactions": 1, "retries": 1, "exhausted": 1, "by_sqlstate": {"40001": 1}})

    travelled = [Tally.from_wire(json.loads(json.dumps(t.to_wire()))) for t in (one, two)]
    total = Tally.merged(travelled)

    reference = WireHistogram()
    for t in (one, two):
        reference.merge(t.txn_latency)
    assert total.txn_latency.summary() == reference.summary()
    assert total.transactions == 400 and total.failed_transactions == 1
    assert total.executions == 200 + 600
    assert total.total_allocated == 750
    assert total.total_lag == 7
    assert total.first_at == pytest.approx(4.5) and total.last_at == 209.0
    assert total.retries == {"transactions": 4, "retries": 3, "exhausted": 1,
                             "by_sqlstate": {"40001": 3}}  # fmt: skip


def test_an_empty_tally_travels_too():
    back = Tally.from_wire(json.loads(json.dumps(Tally().to_wire())))
    assert back.txn_latency.count == 0 and back.active_seconds == 0.0
    assert back.total_lag is None


# -- slots, rates, the Pipeline tab -------------------------------------------------------------


def test_the_ledger_hands_out_each_slot_once_and_frees_only_the_holders():
    ledger = SlotLedger()
    ledger.reset({CONSUMER_SLOTS: 2})
    assert ledger.claim(CONSUMER_SLOTS, "a") == 0
    assert ledger.claim(CONSUMER_SLOTS, "b") == 1
    assert ledger.claim(CONSUMER_SLOTS, "c") is None  # a third member would get no partition
    ledger.release(CONSUMER_SLOTS, 0, "c")  # not its slot
    assert ledger.claim(CONSUMER_SLOTS, "c") is None
    ledger.release(CONSUMER_SLOTS, 0, "a")
    assert ledger.claim(CONSUMER_SLOTS, "c") == 0
    assert ledger.held(CONSUMER_SLOTS) == 2 and ledger.capacity(CONSUMER_SLOTS) == 2
    assert ledger.claim("unknown", "d") is None
    ledger.reset({CONSUMER_SLOTS: 1})
    assert ledger.held(CONSUMER_SLOTS) == 0


def test_the_rate_window_forgets_what_is_older_than_its_span():
    window = RateWindow(seconds=10)
    assert window.rate() == 0.0
    for second in range(31):
        window.add(float(second), 100 * second if second <= 20 else 2000)
    # Only the last ten seconds count: nothing was allocated in them.
    assert window.rate() == pytest.approx(0.0, abs=10)
    window.reset()
    window.add(0.0, 0)
    window.add(2.0, 500)
    assert window.rate() == 250.0


def test_the_pipeline_rows_say_what_is_unknown():
    rows = PipelineView("docker-3n", 1234.56, cdc_lag_text(None), None, 3, 12).rows()
    values = {r["metric"]: r["value"] for r in rows}
    assert values == {
        "Topology under test": "docker-3n",
        "Allocated executions/s": "1,234.6",
        "CDC lag": "n/a",
        "Consumer lag": "n/a",
        "Consumers in the group": "3 of 12 partitions",
    }
    relay = {"source": "relay", "lag_ms": {"p50_ms": 12.0, "p99_ms": 80.5}}
    assert cdc_lag_text(relay) == "p50 12.0 ms, p99 80.5 ms (relay)"
    changefeed = {"source": "changefeed", "high_water_lag_ms": 1500.0}
    assert "1,500 ms behind" in cdc_lag_text(changefeed)


# -- the run record ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_load_test_record_is_valid_and_measured_like_allocate(seeded_dsn, tmp_path):
    tally = Tally()
    for i in range(10):
        tally.record(event(0.01, executions=5, ended_at=1000.0 + i))
    tally.count_allocated("locust0-consumer-1", 50)
    target = resolve_target(LoadOptions(dsn=seeded_dsn, topology="lab-pg"), need_kafka=False)
    shape = RunShape("micro-batch", {"driver": "locust", "consumers": 2}, records.utc_now(), 12.5)
    record = build_record(target, tally, shape, None)
    path = records.write_record(record, tmp_path)
    back = records.RunRecord.from_json(path.read_text())
    assert back.source == "locust" and back.strategy == "micro-batch"
    assert back.topology.name == "lab-pg" and back.topology.platform == "custom"
    assert back.results.executions_allocated == 50
    # 50 executions from the first transaction's start (999.99) to the last's end (1009).
    assert back.results.executions_per_s == pytest.approx(50 / 9.01, abs=0.1)
    assert back.results.txn_latency_ms["count"] == 10
    assert back.data.accounts == 200 and back.data.scale is None  # not named: not claimed
    assert back.duration_s == 12.5
    assert back.results.verify == "passed"  # nothing traded yet: nothing inconsistent


@pytest.mark.integration
def test_verify_tells_a_stop_mid_flight_from_an_inconsistency(traded_dsn):
    reset_allocations(traded_dsn)
    with psycopg.connect(traded_dsn, autocommit=True) as conn:
        outcome, note = verify_outcome(conn)
        assert outcome == "skipped" and "execution_has_one_fill" in note
        store = AllocationStore(detect(conn))
        run_transaction(conn, lambda c: store.apply(c, executions(traded_dsn)))
        assert verify_outcome(conn) == ("passed", "")
        conn.execute(
            "UPDATE orders.block_orders SET quantity = quantity + 1 WHERE block_order_id = "
            "(SELECT block_order_id FROM orders.block_orders ORDER BY 1 LIMIT 1)"
        )
        outcome, note = verify_outcome(conn)
    assert outcome == "failed" and "customer_orders_sum_to_block" in note

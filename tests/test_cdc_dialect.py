"""The CockroachDB changefeed statements, as rendered (no CockroachDB runs here)."""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from workload.cdc import changefeed, changefeed_spec
from workload.cdc.options import SINK_BOOTSTRAP_OUTPUT, CdcOptions
from workload.dialect import (
    COCKROACHDB,
    POSTGRESQL,
    ChangefeedSpec,
    Dialect,
    KafkaSinkConfig,
    cancel_job,
    changefeed_jobs,
    create_changefeed,
    enable_rangefeeds,
    is_active_job_status,
    kafka_sink_uri,
)
from workload.envelope import HLC
from workload.settings import Settings

CRDB = Dialect(COCKROACHDB, "CockroachDB CCL v25.2.0")
PG = Dialect(POSTGRESQL, "PostgreSQL 18.6")


def render(statement) -> str:
    return statement.as_string(None)


def spec(**kw) -> ChangefeedSpec:
    return ChangefeedSpec(**{"sink_bootstrap": "kafka-1:9092", "topic": "trade-executions", **kw})


def test_rangefeeds_are_enabled_by_cluster_setting():
    assert render(enable_rangefeeds(CRDB)) == "SET CLUSTER SETTING kv.rangefeed.enabled = true"


def test_the_changefeed_is_json_with_updated_keyed_by_block_order_and_unordered():
    sql = render(create_changefeed(CRDB, spec()))
    head, _, options = sql.partition(" WITH ")
    assert head == (
        'CREATE CHANGEFEED FOR TABLE "trades"."executions" INTO '
        "'kafka://kafka-1:9092?topic_name=trade-executions'"
    )
    listed = [option.strip() for option in options.split(", ", 4)]
    assert listed[:4] == [
        "format = 'json'",
        "envelope = 'wrapped'",
        "updated",
        "initial_scan = 'no'",
    ]
    assert "key_column = 'block_order_id', unordered" in options
    assert "kafka_sink_config = " in options
    # CRDB rejects resolved together with unordered (which key_column requires)
    assert "resolved" not in options
    assert "key_in_value" not in options  # the decoder takes the block order from the Kafka key


def test_kafka_sink_config_carries_the_flush_settings_as_json():
    config = KafkaSinkConfig(flush_messages=500, flush_frequency="50ms", required_acks="ONE")
    sql = render(create_changefeed(CRDB, spec(sink=config)))
    literal = sql.split("kafka_sink_config = ", 1)[1].split(", key_column", 1)[0]
    assert literal.startswith("'") and literal.endswith("'")
    assert json.loads(literal[1:-1]) == {
        "Flush": {"Messages": 500, "Frequency": "50ms"},
        "RequiredAcks": "ONE",
    }
    with_max = KafkaSinkConfig(max_messages=2000).as_json()
    assert json.loads(with_max)["Flush"]["MaxMessages"] == 2000


def test_optional_changefeed_options():
    sql = render(create_changefeed(CRDB, spec(min_checkpoint_frequency="1s", initial_scan="yes")))
    assert "min_checkpoint_frequency = '1s'" in sql
    assert "initial_scan = 'yes'" in sql
    ordered = render(create_changefeed(CRDB, spec(key_column=None, resolved="1s")))
    assert "resolved = '1s'" in ordered
    assert "unordered" not in ordered and "key_column" not in ordered


def test_invalid_combinations_are_refused_before_cockroachdb_sees_them():
    with pytest.raises(ValueError, match="resolved with key_column"):
        spec(resolved="1s")
    with pytest.raises(ValueError, match="initial_scan"):
        spec(initial_scan="maybe")
    with pytest.raises(ValueError, match="RequiredAcks"):
        KafkaSinkConfig(required_acks="SOME")
    with pytest.raises(ValueError, match="needs a flush frequency"):
        KafkaSinkConfig(flush_messages=10, flush_frequency="")


def test_the_sink_uri_lists_every_broker_and_encodes_the_topic():
    uri = kafka_sink_uri("k1:9092, k2:19092 ,k3:9092", "trade-executions")
    assert uri == "kafka://k1:9092,k2:19092,k3:9092?topic_name=trade-executions"
    assert kafka_sink_uri("[::1]:9092", "t") == "kafka://[::1]:9092?topic_name=t"


@pytest.mark.parametrize(
    "topic",
    ["a&b=c", "with space", "hash#frag", "pct%41", "quote'single", 'dq"', "ünï/✓?x", "plus+sign"],
)
def test_odd_characters_cannot_change_the_uri_or_break_the_sql_literal(topic):
    uri = kafka_sink_uri("k1:9092", topic, {"client_id": "a&b c"})
    parts = urlsplit(uri)
    assert parts.scheme == "kafka" and parts.netloc == "k1:9092" and parts.fragment == ""
    assert parse_qs(parts.query) == {"topic_name": [topic], "client_id": ["a&b c"]}
    assert all(c not in parts.query for c in " #'\"") and unquote(parts.query).count("&") >= 1
    sql = render(create_changefeed(CRDB, spec(topic=topic)))
    # the URI is one SQL string literal: no quote of the topic escapes it
    into = sql.split(" INTO ", 1)[1].split(" WITH ", 1)[0]
    assert into == f"'{kafka_sink_uri('kafka-1:9092', topic)}'"


def test_quotes_in_literals_are_doubled():
    sql = render(create_changefeed(CRDB, spec(min_checkpoint_frequency="1s' OR '1")))
    assert "min_checkpoint_frequency = '1s'' OR ''1'" in sql


@pytest.mark.parametrize("bootstrap", ["", "k1", "k1:port", "user@k1:9092", "k1:9092/x", " , "])
def test_bad_broker_addresses_are_refused(bootstrap):
    with pytest.raises(ValueError):
        kafka_sink_uri(bootstrap, "t")


def test_the_sink_bootstrap_comes_from_the_flag_then_the_stack_then_the_kit(tmp_path):
    outputs = tmp_path / "outputs.json"
    internal = ["k1:29092", "k2:29092"]
    outputs.write_text(
        json.dumps({"kafkaBootstrap": "localhost:9092", SINK_BOOTSTRAP_OUTPUT: internal})
    )
    with_stack = Settings(stack_outputs=outputs)
    plain = Settings()
    assert CdcOptions().sink_bootstrap_for(plain, "localhost:9092") == "localhost:9092"
    assert CdcOptions().sink_bootstrap_for(with_stack, "localhost:9092") == "k1:29092,k2:29092"
    flagged = CdcOptions(sink_bootstrap="kafka:19092")
    assert flagged.sink_bootstrap_for(with_stack, "localhost:9092") == "kafka:19092"
    built = changefeed_spec(CdcOptions(), with_stack, "localhost:9092")
    assert "kafka://k1:29092,k2:29092?topic_name=trade-executions" in render(
        create_changefeed(CRDB, built)
    )


def test_jobs_are_found_by_table_and_cancelled_by_id():
    query = render(changefeed_jobs(CRDB))
    assert "FROM [SHOW CHANGEFEED JOBS]" in query
    assert "'trades.public.executions' = ANY(full_table_names)" in query
    for column in ("job_id", "status", "high_water_timestamp", "sink_uri", "topics"):
        assert column in query
    assert render(cancel_job(CRDB, 1017)) == "CANCEL JOB 1017"
    assert is_active_job_status("running") and is_active_job_status("paused")
    assert not is_active_job_status("canceled") and not is_active_job_status("failed")


def test_high_water_marks_read_as_hlc():
    assert changefeed._hlc_from_decimal(Decimal("1701102296662969433.0000000002")) == HLC(
        1701102296662969433, 2
    )
    assert changefeed._hlc_from_decimal("1701102296662969433") == HLC(1701102296662969433, 0)
    assert changefeed._hlc_from_decimal(None) is None


def test_postgresql_has_no_changefeeds():
    for render_for_postgres in (
        lambda: enable_rangefeeds(PG),
        lambda: create_changefeed(PG, spec()),
        lambda: changefeed_jobs(PG),
        lambda: cancel_job(PG, 1),
    ):
        with pytest.raises(ValueError, match="relay"):
            render_for_postgres()


class RecordingConnection:
    """Stands in for a CockroachDB connection (none runs here): records the statements the
    changefeed management sends and answers the jobs query with canned rows."""

    def __init__(self, jobs: list[tuple]):
        self.jobs = jobs
        self.statements: list[str] = []

    def execute(self, statement):
        text = render(statement) if not isinstance(statement, str) else statement
        self.statements.append(text)
        rows = self.jobs if "SHOW CHANGEFEED JOBS" in text else [(1017,)]
        return type("Result", (), {"fetchall": lambda _: rows, "fetchone": lambda _: rows[0]})()


def job_row(job_id: int, status: str, high_water=None) -> tuple:
    return (job_id, status, None, high_water, None, "kafka://k:9092?topic_name=t", "t", "CREATE")


def test_starting_creates_one_changefeed_and_starting_again_creates_none():
    conn = RecordingConnection(jobs=[job_row(7, "canceled")])
    started = changefeed.start(conn, CRDB, spec())
    assert started["job_id"] == 1017 and started["created"]
    assert conn.statements[0] == "SET CLUSTER SETTING kv.rangefeed.enabled = true"
    assert conn.statements[-1].startswith("CREATE CHANGEFEED FOR TABLE")

    running = RecordingConnection(jobs=[job_row(9, "running", Decimal("1701102296662969433.0"))])
    again = changefeed.start(running, CRDB, spec())
    assert again["job_id"] == 9 and not again["created"]
    assert not any(s.startswith("CREATE CHANGEFEED") for s in running.statements)
    assert again["job"]["high_water"] == "1701102296662969433.0000000000"
    assert again["job"]["high_water_time"].startswith("2023-11-27T16:24:56.662969")


def test_stopping_cancels_every_active_changefeed_of_the_table():
    conn = RecordingConnection(
        jobs=[job_row(3, "running"), job_row(4, "paused"), job_row(5, "canceled")]
    )
    assert changefeed.stop(conn, CRDB) == [3, 4]
    assert [s for s in conn.statements if s.startswith("CANCEL")] == [
        "CANCEL JOB 3",
        "CANCEL JOB 4",
    ]

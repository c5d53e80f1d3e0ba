"""The relay's row encoder writes exactly what CockroachDB's changefeed writes.

``workload.envelope.encode_change`` is the definition; for any valid execution, the relay's
encoder fed with PostgreSQL's text forms of that row must produce the same bytes. The text
forms used here are PostgreSQL's output formats with TimeZone=UTC (the relay's session);
``test_cdc_relay.py`` checks them against the real server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workload.cdc import pgoutput
from workload.cdc.encoding import (
    NUMERIC,
    TEXT,
    TIMESTAMPTZ,
    UUID,
    Partitioner,
    RowEncoder,
    UnrepresentableChange,
    changefeed_partition,
    fnv1a_32,
    json_string,
)
from workload.envelope import (
    HLC,
    Activity,
    Execution,
    InvalidMessage,
    decode,
    encode_change,
)

INT8 = 20
EXECUTIONS = pgoutput.Relation(
    relation_id=16566,
    namespace="trades",
    name="executions",
    replica_identity="d",
    columns=tuple(
        pgoutput.Column(name == "execution_id", name, oid, -1)
        for name, oid in (
            ("execution_id", UUID),
            ("block_order_id", UUID),
            ("seq", INT8),
            ("activity", TEXT),
            ("quantity", INT8),
            ("price", NUMERIC),
            ("ref_execution_id", UUID),
            ("order_type", TEXT),
            ("destination", TEXT),
            ("executed_at", TIMESTAMPTZ),
        )
    ),
)
ENCODER = RowEncoder(EXECUTIONS, ("block_order_id",))


def pg_timestamptz(moment: datetime) -> bytes:
    """PostgreSQL's timestamptz output in UTC: ISO, space, fraction without trailing zeros."""
    t = moment.astimezone(UTC)
    text = f"{t.year:04d}-{t:%m-%d %H:%M:%S}"
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return (text + "+00").encode()


def pg_text(execution: Execution) -> tuple:
    def text(value) -> bytes | None:
        return None if value is None else str(value).encode()

    price = None if execution.price is None else format(execution.price, "f").encode()
    return (
        text(execution.execution_id), text(execution.block_order_id), text(execution.seq),
        str(execution.activity).encode(), text(execution.quantity), price,
        text(execution.ref_execution_id), text(execution.order_type),
        text(execution.destination), pg_timestamptz(execution.executed_at),
    )  # fmt: skip


# PostgreSQL TEXT cannot hold NUL; everything else it can.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
moments = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(tzinfo=UTC))
prices = st.decimals(
    min_value=Decimal("0.0001"), max_value=Decimal("99999999999999.9999"), places=4
)


@st.composite
def executions(draw) -> Execution:
    activity = draw(st.sampled_from(list(Activity)))
    return Execution(
        execution_id=draw(st.uuids()),
        block_order_id=draw(st.uuids()),
        seq=draw(st.integers(0, 2**63 - 1)),
        activity=activity,
        quantity=draw(st.integers(1 if activity is Activity.EXECUTE else 0, 2**63 - 1)),
        price=draw(prices) if activity is Activity.EXECUTE else None,
        ref_execution_id=draw(st.uuids()) if activity is Activity.BUST else None,
        order_type=draw(st.none() | texts) if activity is Activity.REPLACE else None,
        destination=draw(st.none() | texts) if activity is Activity.REPLACE else None,
        executed_at=draw(moments),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions(), st.integers(0, 2**63 - 1))
def test_the_encoder_writes_the_envelope_bytes_for_every_valid_execution(execution, wall):
    updated = HLC(wall)
    key, value = ENCODER.encode(pg_text(execution), str(updated).encode())
    assert (key, value) == encode_change(execution, updated)
    assert decode(key, value) == execution


def test_a_row_crdb_would_publish_but_the_consumer_rejects_is_published_the_same_way():
    """An execute with no price fits the table; CRDB publishes it and the consumer
    dead-letters it. The relay must not drop or alter it."""
    row = (
        b"7c9e6679-7425-40de-944b-e07fc1f90ae7", b"16fd2706-8baf-433b-82eb-8c7fada847da", b"3",
        b"execute", b"300", None, None, None, None, b"2024-03-01 14:30:05.1234+00",
    )  # fmt: skip
    key, value = ENCODER.encode(row, b"1709303405123456000.0000000000")
    assert b'"price": null' in value
    with pytest.raises(InvalidMessage) as raised:
        decode(key, value)
    assert raised.value.reason == "bad_price"


@pytest.mark.parametrize(
    ("text", "written"),
    [
        (b"2024-03-01 14:30:05+00", b'"2024-03-01T14:30:05Z"'),
        (b"2024-03-01 14:30:05.1+00", b'"2024-03-01T14:30:05.1Z"'),
        (b"2024-03-01 14:30:05.123456+00", b'"2024-03-01T14:30:05.123456Z"'),
        # no CRDB form: published as text, which the consumer rejects as a bad timestamp
        (b"infinity", b'"infinity"'),
        (b"-infinity", b'"-infinity"'),
        (b"10000-01-01 00:00:00+00", b'"10000-01-01 00:00:00+00"'),
        (b"0044-03-15 12:00:00+00 BC", b'"0044-03-15 12:00:00+00 BC"'),
    ],
)
def test_timestamps(text, written):
    assert ENCODER._fields[3][2](text) == written  # executed_at, fourth in name order


@pytest.mark.parametrize(
    ("text", "written"),
    [(b"101.2500", b"101.2500"), (b"-0.0001", b"-0.0001"), (b"NaN", b'"NaN"')],
)
def test_numerics_keep_their_scale_and_quote_non_finite_values(text, written):
    assert ENCODER._fields[6][2](text) == written  # price


def test_json_strings_escape_like_crdb():
    everything = bytes(range(1, 128)) + "ü✓\u2028東".encode()
    written = json_string(everything)
    expected = encode_change(_replace_with_destination(everything.decode()), HLC(1))[1]
    assert b'"destination": ' + written in expected
    assert json_string(b'a"b\\c\nd\re\tf\x08g\x0ch\x1f') == (
        b'"a\\"b\\\\c\\nd\\re\\tf\\u0008g\\u000ch\\u001f"'
    )


def _replace_with_destination(destination: str) -> Execution:
    return Execution(
        execution_id=uuid.uuid4(), block_order_id=uuid.uuid4(), seq=1, activity="replace",
        quantity=0, price=None, ref_execution_id=None, order_type=None,
        destination=destination, executed_at=datetime(2024, 3, 1, tzinfo=UTC),
    )  # fmt: skip


def test_changes_that_cannot_be_published_as_crdb_would_are_refused():
    row = list(pg_text(_replace_with_destination("x")))
    toast = row.copy()
    toast[8] = pgoutput.UNCHANGED_TOAST
    with pytest.raises(UnrepresentableChange, match="unchanged TOASTed"):
        ENCODER.encode(toast, b"1.0000000000")
    no_key = row.copy()
    no_key[1] = None
    with pytest.raises(UnrepresentableChange, match="key column block_order_id"):
        ENCODER.encode(no_key, b"1.0000000000")
    with pytest.raises(UnrepresentableChange, match="10 columns"):
        ENCODER.encode(row[:9], b"1.0000000000")
    with pytest.raises(UnrepresentableChange, match="no column account_id"):
        RowEncoder(EXECUTIONS, ("account_id",))


def test_fnv1a_reference_values():
    # from the FNV reference test vectors
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"fo") == 0x6222E842
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_partitions_follow_saramas_signed_remainder():
    # 0xE40C292C is negative as an int32 (-468965076): Go's remainder is -6, negated 6;
    # the unsigned hash (librdkafka's fnv1a partitioner) would give 3826002220 % 10 = 0.
    assert changefeed_partition(b"a", 10) == 6
    # a hash with the high bit clear: plain remainder
    assert changefeed_partition(b"fo", 10) == 0x6222E842 % 10 == 0
    partition = Partitioner(4)
    keys = [f'["{uuid.UUID(int=i)}"]'.encode() for i in range(500)]
    assert [partition(k) for k in keys] == [changefeed_partition(k, 4) for k in keys]
    assert set(partition(k) for k in keys) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        Partitioner(0)


def test_hlc_text_of_commit_times():
    commit = pgoutput.pg_time_to_unix_micros(0)
    assert commit == int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    assert pgoutput.pg_time_to_datetime(1_000_001) == datetime(2000, 1, 1, tzinfo=UTC) + timedelta(
        seconds=1, microseconds=1
    )

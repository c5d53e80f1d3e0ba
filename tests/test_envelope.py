"""Tests of the CDC message codec: golden messages, round trips, every rejection, fuzzing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workload.envelope import (
    COLUMNS,
    DEFAULT_MAX_SIZE,
    HLC,
    INT8_MAX,
    REASONS,
    Activity,
    Execution,
    InvalidExecution,
    InvalidMessage,
    Resolved,
    decode,
    encode_change,
    encode_resolved,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BLOCK = "16fd2706-8baf-433b-82eb-8c7fada847da"
EXEC = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
REF = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f"
UPDATED = "1709303405123456000.0000000000"

# --- golden messages, written out the way CRDB's docs show changefeed output -----------------

GOLDEN_KEY = b'["16fd2706-8baf-433b-82eb-8c7fada847da"]'
GOLDEN_EXECUTE = (
    b'{"after": {"activity": "execute", "block_order_id": "16fd2706-8baf-433b-82eb-8c7fada847da",'
    b' "destination": null, "executed_at": "2024-03-01T14:30:05.1234Z",'
    b' "execution_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "order_type": null,'
    b' "price": 101.2500, "quantity": 300, "ref_execution_id": null, "seq": 3},'
    b' "updated": "1709303405123456000.0000000000"}'
)
GOLDEN_REPLACE = (
    b'{"after": {"activity": "replace", "block_order_id": "16fd2706-8baf-433b-82eb-8c7fada847da",'
    b' "destination": "B\xc3\xb8rs \\"Nord\\"\\n\\u0001\\\\\\u0008\\u000c\x7f\xe2\x80\xa8",'
    b' "executed_at": "2024-03-01T14:30:06Z",'
    b' "execution_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "order_type": "limit",'
    b' "price": null, "quantity": 0, "ref_execution_id": null, "seq": 4},'
    b' "updated": "1709303406000000000.0000000002"}'
)
GOLDEN_RESOLVED = b'{"resolved":"1701102296662969433.0000000000"}'


def golden_execute() -> Execution:
    return Execution(
        execution_id=uuid.UUID(EXEC),
        block_order_id=uuid.UUID(BLOCK),
        seq=3,
        activity=Activity.EXECUTE,
        quantity=300,
        price=Decimal("101.25"),
        ref_execution_id=None,
        order_type=None,
        destination=None,
        executed_at=datetime(2024, 3, 1, 14, 30, 5, 123400, tzinfo=UTC),
    )


def golden_replace() -> Execution:
    return Execution(
        uuid.UUID(EXEC), uuid.UUID(BLOCK), 4, "replace", 0, None, None, "limit",
        'Børs "Nord"\n\x01\\\b\f\x7f\u2028', datetime(2024, 3, 1, 14, 30, 6, tzinfo=UTC),
    )  # fmt: skip


def test_golden_execute_encodes_byte_for_byte() -> None:
    updated = HLC(1709303405123456000)
    assert encode_change(golden_execute(), updated) == (GOLDEN_KEY, GOLDEN_EXECUTE)


def test_golden_execute_decodes() -> None:
    decoded = decode(GOLDEN_KEY, GOLDEN_EXECUTE)
    assert decoded == golden_execute()
    assert decoded.updated == HLC(1709303405123456000, 0)
    assert decoded.price == Decimal("101.2500")
    assert str(decoded.price) == "101.2500"


def test_golden_replace_escapes_strings_as_crdb_does() -> None:
    assert encode_change(golden_replace(), HLC(1709303406000000000, 2)) == (
        GOLDEN_KEY,
        GOLDEN_REPLACE,
    )
    assert decode(GOLDEN_KEY, GOLDEN_REPLACE) == golden_replace()


def test_golden_resolved_uses_the_docs_timestamp() -> None:
    ts = HLC(1701102296662969433, 0)
    assert encode_resolved(ts) == GOLDEN_RESOLVED
    assert decode(None, GOLDEN_RESOLVED) == Resolved(ts)
    assert decode(None, b'{"resolved": "1.0000000002"}') == Resolved(HLC(1, 2))


def test_a_change_value_is_the_wrapped_envelope_without_key() -> None:
    _, value = encode_change(golden_execute(), HLC(5))
    message = json.loads(value, parse_float=Decimal)
    assert message.keys() == {"after", "updated"}
    assert message["after"].keys() == COLUMNS
    assert list(message["after"]) == sorted(COLUMNS)


def test_a_key_in_the_value_is_tolerated() -> None:
    value = GOLDEN_EXECUTE.replace(
        b', "updated"', b', "key": ["' + EXEC.encode() + b'"], "updated"'
    )
    assert decode(GOLDEN_KEY, value) == golden_execute()


@pytest.mark.parametrize(
    "written", ["101.25", "101.2500", "1.0125E+2", "10125E-2", "101.250000000000000000000000000"]
)
def test_a_price_in_any_number_notation_is_read_exactly(written: str) -> None:
    value = GOLDEN_EXECUTE.replace(b"101.2500", written.encode())
    assert decode(GOLDEN_KEY, value).price == Decimal("101.2500")


def test_an_integer_price_and_a_price_beyond_float_precision() -> None:
    for written, expected in (("101", "101.0000"), ("12345678901234.5678", "12345678901234.5678")):
        value = GOLDEN_EXECUTE.replace(b"101.2500", written.encode())
        assert str(decode(GOLDEN_KEY, value).price) == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2024-03-01T14:30:05Z", datetime(2024, 3, 1, 14, 30, 5, tzinfo=UTC)),
        ("2024-03-01T14:30:05.5Z", datetime(2024, 3, 1, 14, 30, 5, 500000, tzinfo=UTC)),
        ("2024-03-01T14:30:05.123456000Z", datetime(2024, 3, 1, 14, 30, 5, 123456, tzinfo=UTC)),
        ("2024-03-01T15:30:05+01:00", datetime(2024, 3, 1, 14, 30, 5, tzinfo=UTC)),
        ("2024-03-01T09:00:05-05:30", datetime(2024, 3, 1, 14, 30, 5, tzinfo=UTC)),
    ],
)
def test_timestamps_with_any_offset_are_read_in_utc(written: str, expected: datetime) -> None:
    value = GOLDEN_EXECUTE.replace(b"2024-03-01T14:30:05.1234Z", written.encode())
    decoded = decode(GOLDEN_KEY, value)
    assert decoded.executed_at == expected
    assert decoded.executed_at.tzinfo is UTC


# --- HLC ------------------------------------------------------------------------------------


def test_hlc_text_and_order() -> None:
    ts = HLC.parse("1701102296662969433.0000000000")
    assert ts == HLC(1701102296662969433, 0)
    assert str(HLC(1, 2)) == "1.0000000002"
    assert HLC(1, 9) < HLC(2, 0) < HLC(2, 1)
    assert max(HLC(5, 1), HLC(4, 999), HLC(5, 0)) == HLC(5, 1)


def test_hlc_and_datetimes() -> None:
    moment = datetime(2024, 3, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    ts = HLC.from_datetime(moment)
    assert ts == HLC.from_nanos(1709296205123456000)
    assert ts.to_datetime() == moment
    assert HLC(1709296205123456789).to_datetime() == moment  # truncated to microseconds
    with pytest.raises(ValueError):
        HLC.from_datetime(datetime(2024, 3, 1))  # naive: which instant?


@pytest.mark.parametrize(
    "text",
    ["1.5", "1", "1.00000000000", "-1.0000000000", " 1.0000000000", "1.0000000000\n",
     "９.0000000000", "9223372036854775808.0000000000", "1.2147483648", ""],
)  # fmt: skip
def test_hlc_parse_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        HLC.parse(text)


@FAST
@given(st.integers(0, INT8_MAX), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_hlc_text_round_trips_and_orders_like_tuples(wall: int, logical: int, other: int) -> None:
    ts, same_wall = HLC(wall, logical), HLC(wall, other)
    assert HLC.parse(str(ts)) == ts
    assert (ts < same_wall) == (logical < other)
    assert ts < HLC(wall + 1, 0) if wall < INT8_MAX else ts > HLC(wall - 1, 2**31 - 1)


# --- round trips ----------------------------------------------------------------------------

printable = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
tricky = st.sampled_from(['"', "\\", '\\"', "\n\r\t\x00\x1f\x7f", "Zürich 東京 🚀", "\u2028", ""])
strings = st.one_of(printable, tricky, st.lists(tricky).map("".join))
prices = st.decimals(
    min_value=Decimal("0.0001"), max_value=Decimal("99999999999999.9999"), places=4
)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.builds(timezone, st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
        lambda m: timedelta(minutes=m)
    )),
)  # fmt: skip


def rows(activity: Activity, **columns: st.SearchStrategy) -> st.SearchStrategy[Execution]:
    defaults = {"price": st.none(), "ref_execution_id": st.none()}
    defaults |= {"order_type": st.none(), "destination": st.none()}
    return st.builds(
        Execution,
        execution_id=st.uuids(),
        block_order_id=st.uuids(),
        seq=st.integers(0, INT8_MAX),
        activity=st.just(activity),
        executed_at=moments,
        **defaults | columns,
    )


executions = st.one_of(
    rows(Activity.EXECUTE, quantity=st.integers(1, INT8_MAX), price=prices),
    rows(Activity.BUST, quantity=st.integers(0, INT8_MAX), ref_execution_id=st.uuids()),
    rows(
        Activity.REPLACE,
        quantity=st.integers(0, INT8_MAX),
        order_type=st.none() | strings,
        destination=st.none() | strings,
    ),
)


hlcs = st.builds(HLC, st.integers(0, INT8_MAX), st.integers(0, 2**31 - 1))


@FAST
@given(executions, hlcs)
def test_encode_then_decode_gives_the_execution_back(execution: Execution, updated: HLC) -> None:
    key, value = encode_change(execution, updated)
    decoded = decode(key, value)
    assert decoded == execution
    assert decoded.updated == updated
    assert decoded.executed_at == execution.executed_at
    assert encode_change(decoded, updated) == (key, value)  # one canonical form


@FAST
@given(executions, hlcs)
def test_encoded_values_are_plain_json_with_exact_numbers(execution: Execution, updated) -> None:
    key, value = encode_change(execution, updated)
    message = json.loads(value, parse_float=Decimal)
    assert json.loads(key) == [str(execution.block_order_id)]
    assert message["after"]["price"] == execution.price
    assert message["after"]["destination"] == execution.destination
    assert message["updated"] == str(updated)


@FAST
@given(hlcs)
def test_resolved_round_trips(ts: HLC) -> None:
    assert decode(None, encode_resolved(ts)) == Resolved(ts)
    assert decode(b"", encode_resolved(ts)) == Resolved(ts)


# --- every rejection has its reason -------------------------------------------------------------


def valid_after(**changes: Any) -> dict[str, Any]:
    after = {
        "activity": "execute",
        "block_order_id": BLOCK,
        "destination": None,
        "executed_at": "2024-03-01T14:30:05Z",
        "execution_id": EXEC,
        "order_type": None,
        "price": 101,
        "quantity": 300,
        "ref_execution_id": None,
        "seq": 3,
    }
    after.update(changes)
    return after


def value_of(after: Any = None, **top: Any) -> bytes:
    message = {"after": valid_after() if after is None else after, "updated": UPDATED}
    message.update(top)
    return json.dumps({k: v for k, v in message.items() if v is not DROP}).encode()


DROP = object()
BUST = {"activity": "bust", "price": None, "quantity": 0, "ref_execution_id": REF}
REPLACE = {"activity": "replace", "price": None, "quantity": 10, "order_type": "limit"}
KEY = GOLDEN_KEY

CASES: list[tuple[str, bytes | None, bytes | None]] = [
    ("empty", KEY, None),
    ("empty", KEY, b""),
    ("too_large", KEY, value_of() + b" " * DEFAULT_MAX_SIZE),
    ("too_large", b'["' + b"a" * DEFAULT_MAX_SIZE + b'"]', value_of()),
    ("bad_json", KEY, b"{"),
    ("bad_json", KEY, b"\xff\xfe{}"),
    ("bad_json", KEY, b'{"after": {}, "after": {}}'),
    ("bad_json", KEY, b'{"after": NaN}'),
    ("bad_json", KEY, b"-Infinity"),
    ("bad_json", KEY, b"1" * 5000),
    ("bad_json", KEY, b"[" * 100_000),
    ("bad_json", KEY, b'{"resolved": 1e999999999999999999999}'),
    ("bad_json", KEY, b'{"a": 1} {"b": 2}'),
    ("not_object", KEY, b"[]"),
    ("not_object", KEY, b"1"),
    ("not_object", KEY, b'"after"'),
    ("not_object", KEY, b"null"),
    ("bad_envelope", KEY, value_of(updated=DROP)),
    ("bad_envelope", KEY, value_of(after=DROP)),
    ("bad_envelope", KEY, value_of(before=None)),
    ("bad_envelope", KEY, value_of(mvcc_timestamp=UPDATED)),
    ("bad_envelope", KEY, value_of(after=[1])),
    ("bad_envelope", KEY, value_of(key="[1]")),
    ("bad_envelope", None, b'{"resolved": "1.0000000000", "updated": "1.0000000000"}'),
    ("deleted_row", KEY, b'{"after": null, "updated": "1.0000000000"}'),
    ("missing_field", KEY, value_of({k: v for k, v in valid_after().items() if k != "seq"})),
    ("extra_field", KEY, value_of(valid_after(note="x"))),
    ("wrong_type", KEY, value_of(valid_after(seq="3"))),
    ("wrong_type", KEY, value_of(valid_after(seq=None))),
    ("wrong_type", KEY, b'{"after": {"activity": "execute", "block_order_id": "' + BLOCK.encode()
     + b'", "destination": null, "executed_at": "2024-03-01T14:30:05Z", "execution_id": "'
     + EXEC.encode() + b'", "order_type": null, "price": 1, "quantity": 3.0,'
     b' "ref_execution_id": null, "seq": 3}, "updated": "1.0000000000"}'),
    ("wrong_type", KEY, value_of(valid_after(quantity=True))),
    ("wrong_type", KEY, value_of(valid_after(price="101.25"))),
    ("wrong_type", KEY, value_of(valid_after(price=False))),
    ("wrong_type", KEY, value_of(valid_after(execution_id=5))),
    ("wrong_type", KEY, value_of(valid_after(activity=1))),
    ("wrong_type", KEY, value_of(valid_after(executed_at=0))),
    ("wrong_type", KEY, value_of(valid_after(**REPLACE, destination=["XNYS"]))),
    ("out_of_range", KEY, value_of(valid_after(seq=2**63))),
    ("out_of_range", KEY, value_of(valid_after(quantity=-(2**63) - 1))),
    ("bad_uuid", KEY, value_of(valid_after(execution_id="not-a-uuid"))),
    ("bad_uuid", KEY, value_of(valid_after(execution_id=EXEC.upper()))),
    ("bad_uuid", KEY, value_of(valid_after(execution_id="{" + EXEC + "}"))),
    ("bad_uuid", KEY, value_of(valid_after(**BUST | {"ref_execution_id": REF.replace("-", "")}))),
    ("bad_string", KEY, value_of(valid_after(**REPLACE, destination="\ud800"))),
    ("unknown_activity", KEY, value_of(valid_after(activity="cancel"))),
    ("unknown_activity", KEY, value_of(valid_after(activity="EXECUTE"))),
    ("bad_seq", KEY, value_of(valid_after(seq=-1))),
    ("bad_quantity", KEY, value_of(valid_after(quantity=0))),
    ("bad_quantity", KEY, value_of(valid_after(quantity=-5))),
    ("bad_quantity", KEY, value_of(valid_after(**BUST | {"quantity": -1}))),
    ("bad_quantity", KEY, value_of(valid_after(**REPLACE | {"quantity": -1}))),
    ("bad_price", KEY, value_of(valid_after(price=None))),
    ("bad_price", KEY, value_of(valid_after(price=0))),
    ("bad_price", KEY, value_of(valid_after(price=-1))),
    ("bad_price", KEY, value_of(valid_after(price="NaN"))),
    ("bad_price", KEY, value_of(valid_after(price=10**14))),
    ("bad_price", KEY, GOLDEN_EXECUTE.replace(b"101.2500", b"101.00001")),
    ("bad_price", KEY, GOLDEN_EXECUTE.replace(b"101.2500", b"-0.0")),
    ("bad_price", KEY, GOLDEN_EXECUTE.replace(b"101.2500", b"1E-999999999999")),
    ("unexpected_price", KEY, value_of(valid_after(**BUST | {"price": 1}))),
    ("unexpected_price", KEY, value_of(valid_after(**REPLACE | {"price": 1}))),
    ("missing_ref", KEY, value_of(valid_after(**BUST | {"ref_execution_id": None}))),
    ("unexpected_ref", KEY, value_of(valid_after(ref_execution_id=REF))),
    ("unexpected_ref", KEY, value_of(valid_after(**REPLACE, ref_execution_id=REF))),
    ("replace_only_field", KEY, value_of(valid_after(destination="XNYS"))),
    ("replace_only_field", KEY, value_of(valid_after(**BUST, order_type="limit"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-03-01 14:30:05Z"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-03-01T14:30:05"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-13-01T14:30:05Z"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-02-30T14:30:05Z"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-03-01T14:30:05.1234567Z"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-03-01T14:30:05+24:00"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="0001-01-01T00:00:00+01:00"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="２０２４-03-01T14:30:05Z"))),
    ("bad_timestamp", KEY, value_of(valid_after(executed_at="2024-03-01t14:30:05z"))),
    ("bad_hlc", KEY, value_of(updated="1.5")),
    ("bad_hlc", KEY, value_of(updated=1709303405123456000)),
    ("bad_hlc", KEY, value_of(updated="1.2147483648")),
    ("bad_hlc", None, b'{"resolved": null}'),
    ("bad_hlc", None, b'{"resolved": "9223372036854775808.0000000000"}'),
    ("bad_key", None, value_of()),
    ("bad_key", b"", value_of()),
    ("bad_key", b'"' + BLOCK.encode() + b'"', value_of()),
    ("bad_key", b'["' + BLOCK.encode() + b'", "' + EXEC.encode() + b'"]', value_of()),
    ("bad_key", b"[1]", value_of()),
    ("bad_key", b'["' + BLOCK.upper().encode() + b'"]', value_of()),
    ("bad_key", b"[", value_of()),
    ("bad_key", KEY, GOLDEN_RESOLVED),
    ("key_mismatch", b'["' + EXEC.encode() + b'"]', value_of()),
]  # fmt: skip


def test_every_reason_is_exercised() -> None:
    assert {reason for reason, _, _ in CASES} == REASONS


@pytest.mark.parametrize(("reason", "key", "value"), CASES)
def test_each_invalid_message_gives_its_reason(reason: str, key: bytes, value: bytes) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode(key, value)
    assert caught.value.reason == reason, caught.value.detail
    assert str(caught.value).startswith(reason + ": ")


def test_the_cases_differ_from_a_valid_message_only_in_their_fault() -> None:
    # Guards the table above: its base message decodes, so each case fails for its own fault.
    assert decode(KEY, value_of()).price == Decimal("101.0000")
    assert decode(KEY, value_of(valid_after(**BUST))).ref_execution_id == uuid.UUID(REF)
    assert decode(KEY, value_of(valid_after(**REPLACE))).order_type == "limit"


def test_max_size_is_configurable() -> None:
    assert decode(GOLDEN_KEY, GOLDEN_EXECUTE, max_size=len(GOLDEN_EXECUTE)) == golden_execute()
    with pytest.raises(InvalidMessage, match="too_large"):
        decode(GOLDEN_KEY, GOLDEN_EXECUTE, max_size=len(GOLDEN_EXECUTE) - 1)


def test_reasons_are_a_closed_set() -> None:
    with pytest.raises(ValueError):
        InvalidMessage("something_else", "detail")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"price": None}, "bad_price"),
        ({"price": Decimal("1.00001")}, "bad_price"),
        ({"executed_at": datetime(2024, 3, 1)}, "bad_timestamp"),
        ({"activity": "cancel"}, "unknown_activity"),
        ({"seq": -1}, "bad_seq"),
        ({"quantity": 1.5}, "wrong_type"),
        ({"execution_id": EXEC}, "wrong_type"),
        ({"destination": "XNYS"}, "replace_only_field"),
    ],
)
def test_an_execution_the_table_cannot_hold_cannot_be_built(change: dict, reason: str) -> None:
    fields = {**golden_execute().__dict__, **change}
    with pytest.raises(InvalidExecution) as caught:
        Execution(**fields)
    assert caught.value.reason == reason


# --- fuzzing: decode returns a valid object or raises InvalidMessage, nothing else --------------


def check_decode(key: bytes | None, value: bytes | None) -> None:
    try:
        result = decode(key, value)
    except InvalidMessage as exc:
        assert exc.reason in REASONS
        return
    assert isinstance(result, Execution | Resolved)
    if isinstance(result, Execution):
        # Whatever was accepted has one canonical encoding that reads back the same.
        assert decode(*encode_change(result, result.updated)) == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
column_values = st.one_of(
    json_values,
    st.sampled_from(
        [BLOCK, EXEC, REF, "execute", "bust", "replace", "2024-03-01T14:30:05Z", 0, -1]
    ),
    st.integers(-(2**64), 2**64),
)
keys = st.one_of(st.none(), st.binary(max_size=60), st.just(GOLDEN_KEY))


@FUZZ
@given(keys, st.one_of(st.none(), st.binary(max_size=300)))
def test_arbitrary_bytes_never_escape_as_another_error(key, value) -> None:
    check_decode(key, value)


@FUZZ
@given(keys, json_values)
def test_arbitrary_json_never_escapes_as_another_error(key, document) -> None:
    check_decode(key, json.dumps(document).encode())


@FUZZ
@given(
    keys,
    st.dictionaries(st.sampled_from(sorted(COLUMNS)), column_values, min_size=8),
    st.one_of(st.just(UPDATED), hlcs.map(str), column_values),
)
def test_row_shaped_json_never_escapes_as_another_error(key, after, updated) -> None:
    check_decode(key, json.dumps({"after": after, "updated": updated}).encode())


@FUZZ
@given(st.data(), executions, hlcs)
def test_damaged_valid_messages_never_escape_as_another_error(data, execution, updated) -> None:
    key, value = encode_change(execution, updated)
    raw = bytearray(value)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            raw[position] = data.draw(st.integers(0, 255))
        elif action == "drop":
            del raw[position]
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        if not raw:
            break
    check_decode(key, bytes(raw))

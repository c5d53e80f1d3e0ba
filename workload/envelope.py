"""The CDC message codec: trades.executions rows as CockroachDB's JSON changefeed emits them.

Executions reach Kafka from a CRDB changefeed::

    CREATE CHANGEFEED FOR TABLE trades.executions INTO 'kafka://...'
      WITH format = json, updated, key_column = 'block_order_id', unordered

or from our PostgreSQL logical-decoding relay, which must write the same bytes, so that the
consumer cannot tell the sources apart. (``key_column`` needs ``unordered``, and CockroachDB
refuses ``resolved`` with ``unordered``, so only the relay sends resolved messages; consumers
use them as watermarks when they come and never depend on them.)

This module is the one definition of those bytes: :func:`encode_change` /
:func:`encode_resolved` write them, :func:`decode` reads and validates them.

What CRDB emits, and where that is written down
-----------------------------------------------
From the CockroachDB docs, "Changefeed Messages" (docs/stable/changefeed-messages; v24.3 read)
and "Changefeed Message Envelope" (docs/stable/changefeed-message-envelopes):

* The Kafka message key is a JSON array of the key columns: the primary key by default, or
  with ``key_column`` the named column (which "Define a key column" says needs ``unordered``).
  Ours is therefore ``["<block_order_id>"]``, and it picks the partition.
* The default ``wrapped`` envelope value is ``{"after": {<column>: <value>, ...}}``, plus
  ``"updated": "<HLC>"`` with the ``updated`` option. A Kafka value carries ``"key": [...]``
  only with ``key_in_value`` (that array is the *primary key*, never the key_column).
* A deleted row is ``{"after": null}``. trades.executions is append-only, so a delete is a
  reason of its own (``deleted_row``), not an execution.
* With ``resolved`` the coordinator sends ``{"resolved": "<HLC>"}`` to every Kafka partition;
  the docs' examples show HLCs as ``"1701102296662969433.0000000000"``.

From CockroachDB's source (cockroachdb/cockroach), which fixes the bytes the docs only show:

* ``pkg/ccl/changefeedccl/encoder_json.go``: row values are built as CRDB JSON objects (keys
  sorted, formatted with ``", "`` and ``": "``); ``updated`` is
  ``hlc.Timestamp.AsOfSystemTime()``, i.e. ``"<wall time ns>.<logical, 10 digits>"``; the
  resolved payload goes through Go's ``encoding/json``, hence ``{"resolved":"..."}`` with no
  spaces. The Kafka sink (``sink_kafka.go``) sends resolved messages with a nil key.
* ``pkg/sql/sem/tree/datum.go`` ``AsJSON`` (called with UTC): INT8 is a JSON number; DECIMAL
  is a JSON number written from its exact decimal text, scale kept (``25.00``; non-finite
  values would be quoted strings); STRING is a JSON string; UUID is its canonical lowercase
  hyphenated string; TIMESTAMPTZ is Go's RFC 3339 with nanoseconds in UTC
  (``2024-03-01T14:30:05.1234Z``: trailing zeros of the fraction dropped, no fraction at
  all for whole seconds, ``Z`` for UTC).
* ``pkg/util/json/json.go``: strings escape ``"``, ``\\``, ``\\n``, ``\\r``, ``\\t`` and
  other control characters as ``\\u00xx`` (lowercase hex); everything else, non-ASCII
  included, is written as raw UTF-8.

Decoding is strict and never goes through float: numbers are parsed as int or Decimal, a
price is accepted in any JSON number notation CRDB's decimal text can take (``101.25``,
``101.2500``, ``1.0125E+2``) but must fit DECIMAL(18,4). Every rejection is an
:class:`InvalidMessage` whose ``reason`` is one of :data:`REASONS`.

Note for the design page: DESIGN.md shows ``"key"`` inside the value; with the changefeed
above (no ``key_in_value``) it is not there. The decoder accepts it when present (any JSON
array) and takes the block order from the Kafka key.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_DOWN, Context, Decimal
from enum import StrEnum
from typing import Any

DEFAULT_MAX_SIZE = 1 << 20
"""Largest key or value :func:`decode` reads, in bytes (1 MiB); larger is ``too_large``."""

INT8_MIN = -(2**63)
INT8_MAX = 2**63 - 1
INT4_MAX = 2**31 - 1

PRICE_QUANTUM = Decimal("0.0001")
PRICE_LIMIT = Decimal("1E+14")
"""DECIMAL(18,4) holds 14 integer digits: a price must be below this."""

# Exact decimal work in a context of our own, so a caller's thread context cannot change it.
_DECIMAL = Context(prec=40, rounding=ROUND_DOWN)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

REASONS = frozenset(
    {
        "empty",  # no value (or no bytes at all)
        "too_large",  # key or value above max_size
        "bad_json",  # not UTF-8, not JSON, duplicate object keys, NaN/Infinity literals
        "not_object",  # the value is JSON but not an object
        "bad_envelope",  # top-level fields missing, extra, or of the wrong shape
        "deleted_row",  # {"after": null}: a delete, which an append-only table never has
        "missing_field",  # a column missing from "after"
        "extra_field",  # a column "after" should not have
        "wrong_type",  # a column of the wrong JSON type (or null where NOT NULL)
        "out_of_range",  # an INT8 column outside 64-bit range
        "bad_uuid",  # not a canonical lowercase hyphenated UUID
        "bad_string",  # a string that is not valid Unicode (lone surrogate escapes)
        "unknown_activity",  # activity not execute, bust or replace
        "bad_seq",  # negative seq
        "bad_quantity",  # execute quantity <= 0; bust or replace quantity < 0
        "bad_price",  # execute price missing, <= 0, non-finite, > 4 places, or >= 1e14
        "unexpected_price",  # a price on a bust or replace
        "missing_ref",  # a bust without ref_execution_id
        "unexpected_ref",  # ref_execution_id on an execute or replace
        "replace_only_field",  # order_type or destination on an execute or bust
        "bad_timestamp",  # executed_at not an RFC 3339 time with offset
        "bad_hlc",  # updated or resolved not "<wall ns>.<10-digit logical>"
        "bad_key",  # a change without the key [block_order_id], or a resolved with a key
        "key_mismatch",  # the Kafka key is not after.block_order_id
    }
)


class InvalidMessage(Exception):
    """A message the consumer cannot use; the caller dead-letters it with ``reason``.

    ``reason`` is a short machine-friendly code from :data:`REASONS`; ``detail`` says what
    was wrong for a human reading the dead-letter record.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidMessage reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidExecution(ValueError):
    """An Execution built with values the trades.executions table cannot hold."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Activity(StrEnum):
    """What an execution row does to its block order."""

    EXECUTE = "execute"
    BUST = "bust"
    REPLACE = "replace"


_ACTIVITIES = frozenset(activity.value for activity in Activity)


# --------------------------------------------------------------------------------------------
# HLC timestamps
# --------------------------------------------------------------------------------------------

_HLC_TEXT = re.compile(r"(\d{1,19})\.(\d{10})", re.ASCII)


@dataclass(frozen=True, order=True)
class HLC:
    """A CockroachDB hybrid-logical-clock timestamp: wall time in ns since the epoch, logical.

    Ordered as CRDB orders them (wall time, then logical). ``str()`` is the changefeed form
    ``"<wall_time>.<logical as 10 digits>"``.
    """

    wall_time: int
    logical: int = 0

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("wall_time", self.wall_time, INT8_MAX),
            ("logical", self.logical, INT4_MAX),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"HLC {name} must be an int: {value!r}")
            if not 0 <= value <= limit:
                raise ValueError(f"HLC {name} out of range: {value}")

    @classmethod
    def from_nanos(cls, nanos: int, logical: int = 0) -> HLC:
        """The HLC at ``nanos`` nanoseconds since the Unix epoch."""
        return cls(nanos, logical)

    @classmethod
    def from_datetime(cls, moment: datetime, logical: int = 0) -> HLC:
        """The HLC at an aware datetime, exactly (microseconds become nanoseconds)."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"HLC.from_datetime needs an aware datetime: {moment!r}")
        micros = (moment - _EPOCH) // timedelta(microseconds=1)
        return cls(micros * 1000, logical)

    @classmethod
    def parse(cls, text: str) -> HLC:
        """Read the changefeed form; ValueError if ``text`` is not exactly that."""
        match = _HLC_TEXT.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"not an HLC timestamp: {text!r}")
        return cls(int(match[1]), int(match[2]))

    def to_datetime(self) -> datetime:
        """The wall time as an aware UTC datetime, truncated to microseconds."""
        return _EPOCH + timedelta(microseconds=self.wall_time // 1000)

    def __str__(self) -> str:
        return f"{self.wall_time}.{self.logical:010d}"


@dataclass(frozen=True)
class Resolved:
    """A resolved-timestamp checkpoint: no unseen row older than ``ts`` comes on this partition."""

    ts: HLC


# --------------------------------------------------------------------------------------------
# The execution row
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One trades.executions row, validated against the table's rules on construction.

    ``updated`` is the changefeed's commit timestamp of the row when it was decoded from a
    message; it is metadata, not row content, so it takes no part in equality. ``price`` is
    kept at exactly four decimal places and ``executed_at`` in UTC.
    """

    execution_id: uuid.UUID
    block_order_id: uuid.UUID
    seq: int
    activity: Activity
    quantity: int
    price: Decimal | None
    ref_execution_id: uuid.UUID | None
    order_type: str | None
    destination: str | None
    executed_at: datetime
    updated: HLC | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "activity", Activity(self.activity))
        _check_rules(self)
        if self.price is not None:
            object.__setattr__(self, "price", self.price.quantize(PRICE_QUANTUM, context=_DECIMAL))
        object.__setattr__(self, "executed_at", self.executed_at.astimezone(UTC))


def _check_types(e: Execution) -> None:
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            value = getattr(e, name)
            raise InvalidExecution("wrong_type", f"{name} must be {what}: {value!r}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    need(isinstance(e.execution_id, uuid.UUID), "execution_id", "a UUID")
    need(isinstance(e.block_order_id, uuid.UUID), "block_order_id", "a UUID")
    need(
        e.ref_execution_id is None or isinstance(e.ref_execution_id, uuid.UUID),
        "ref_execution_id",
        "a UUID or None",
    )
    need(is_int(e.seq), "seq", "an int")
    need(is_int(e.quantity), "quantity", "an int")
    need(e.price is None or isinstance(e.price, Decimal), "price", "a Decimal or None")
    need(isinstance(e.activity, str), "activity", "a string")
    for name in ("order_type", "destination"):
        need(getattr(e, name) is None or isinstance(getattr(e, name), str), name, "str or None")
    need(isinstance(e.executed_at, datetime), "executed_at", "a datetime")
    need(e.updated is None or isinstance(e.updated, HLC), "updated", "an HLC or None")
    if e.activity not in _ACTIVITIES:
        raise InvalidExecution("unknown_activity", f"activity {e.activity!r}")
    for name in ("order_type", "destination"):
        text = getattr(e, name)
        if text is not None and not _is_unicode(text):
            raise InvalidExecution("bad_string", f"{name} is not valid Unicode: {text!r}")
    if e.executed_at.tzinfo is None or e.executed_at.utcoffset() is None:
        raise InvalidExecution("bad_timestamp", f"executed_at has no time zone: {e.executed_at}")


def _check_rules(e: Execution) -> None:
    """The table's rules per activity; the comments in REASONS name each code."""
    for name in ("seq", "quantity"):
        if not INT8_MIN <= getattr(e, name) <= INT8_MAX:
            raise InvalidExecution("out_of_range", f"{name} {getattr(e, name)} is not an INT8")
    if e.seq < 0:
        raise InvalidExecution("bad_seq", f"seq {e.seq} is negative")
    if e.activity is Activity.EXECUTE:
        if e.quantity <= 0:
            raise InvalidExecution("bad_quantity", f"execute quantity {e.quantity} is not > 0")
        _check_price(e.price)
        if e.ref_execution_id is not None:
            raise InvalidExecution("unexpected_ref", "an execute names no other execution")
    else:
        if e.quantity < 0:
            raise InvalidExecution("bad_quantity", f"{e.activity} quantity {e.quantity} is < 0")
        if e.price is not None:
            raise InvalidExecution("unexpected_price", f"a {e.activity} has no price")
    if e.activity is Activity.BUST and e.ref_execution_id is None:
        raise InvalidExecution("missing_ref", "a bust must name the execution it breaks")
    if e.activity is Activity.REPLACE and e.ref_execution_id is not None:
        raise InvalidExecution("unexpected_ref", "a replace names no other execution")
    if e.activity is not Activity.REPLACE and (e.order_type, e.destination) != (None, None):
        raise InvalidExecution(
            "replace_only_field", f"a {e.activity} has no order_type or destination"
        )


def _check_price(price: Decimal | None) -> None:
    if price is None:
        raise InvalidExecution("bad_price", "an execute needs a price")
    if not price.is_finite() or price <= 0:
        raise InvalidExecution("bad_price", f"price {price} is not > 0")
    if price >= PRICE_LIMIT:
        raise InvalidExecution("bad_price", f"price {price} does not fit DECIMAL(18,4)")
    # Below 1e14 the quantized value has at most 18 digits, so this compare is exact.
    if price.quantize(PRICE_QUANTUM, context=_DECIMAL) != price:
        raise InvalidExecution("bad_price", f"price {price} has more than 4 decimal places")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Encoding: the bytes CRDB writes
# --------------------------------------------------------------------------------------------

_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r"})
_ESCAPES[ord("\t")] = "\\t"


def _json_string(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def _json(value: Any) -> str:
    """CRDB's JSON text for the values an execution row holds."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_json(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_json_string(k)}: {_json(value[k])}" for k in sorted(value))
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no CRDB JSON for {type(value).__name__}")


def _format_timestamptz(moment: datetime) -> str:
    """Go's RFC3339Nano in UTC, as CRDB writes TIMESTAMPTZ into JSON."""
    t = moment.astimezone(UTC)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def _row(execution: Execution) -> dict[str, Any]:
    def text(value: uuid.UUID | None) -> str | None:
        return None if value is None else str(value)

    return {
        "activity": str(execution.activity),
        "block_order_id": str(execution.block_order_id),
        "destination": execution.destination,
        "executed_at": _format_timestamptz(execution.executed_at),
        "execution_id": str(execution.execution_id),
        "order_type": execution.order_type,
        "price": execution.price,
        "quantity": execution.quantity,
        "ref_execution_id": text(execution.ref_execution_id),
        "seq": execution.seq,
    }


COLUMNS = frozenset(
    {
        "activity",
        "block_order_id",
        "destination",
        "executed_at",
        "execution_id",
        "order_type",
        "price",
        "quantity",
        "ref_execution_id",
        "seq",
    }
)
"""The columns of trades.executions, exactly the keys of a change's ``after``."""


def encode_change(execution: Execution, updated: HLC) -> tuple[bytes, bytes]:
    """The Kafka (key, value) CRDB's changefeed emits for this row committed at ``updated``."""
    key = _json([str(execution.block_order_id)])
    value = _json({"after": _row(execution), "updated": str(updated)})
    return key.encode("utf-8"), value.encode("utf-8")


def encode_resolved(ts: HLC) -> bytes:
    """The resolved message value (sent with no key to every partition)."""
    return b'{"resolved":"' + str(ts).encode("ascii") + b'"}'


# --------------------------------------------------------------------------------------------
# Decoding: strict
# --------------------------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate object key")
    return result


def _load(raw: bytes, what: str) -> Any:
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=Decimal,
            parse_int=int,
            parse_constant=_no_constants,
            object_pairs_hook=_unique_keys,
        )
    # ValueError covers bad UTF-8, bad JSON, over-long ints; ArithmeticError a Decimal whose
    # exponent libmpdec cannot hold; RecursionError absurd nesting.
    except (ValueError, ArithmeticError, RecursionError) as exc:
        raise InvalidMessage("bad_json", f"{what}: {exc}") from None


_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_TIMESTAMP_TEXT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity", "+Infinity", "Inf", "-Inf"})


def _uuid(name: str, value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise InvalidMessage("wrong_type", f"{name} must be a UUID string: {value!r}")
    if _UUID_TEXT.fullmatch(value) is None:
        raise InvalidMessage("bad_uuid", f"{name} is not a canonical UUID: {value!r}")
    return uuid.UUID(value)


def _int8(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage("wrong_type", f"{name} must be an integer: {value!r}")
    if not INT8_MIN <= value <= INT8_MAX:
        raise InvalidMessage("out_of_range", f"{name} is not an INT8: {value}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidMessage("wrong_type", f"{name} must be a string: {value!r}")
    if not _is_unicode(value):
        raise InvalidMessage("bad_string", f"{name} is not valid Unicode: {value!r}")
    return value


def _price(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise InvalidMessage("wrong_type", f"price must be a number: {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str) and value in _NON_FINITE:
        raise InvalidMessage("bad_price", f"price is not finite: {value!r}")
    raise InvalidMessage("wrong_type", f"price must be a number: {value!r}")


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidMessage("wrong_type", f"executed_at must be a string: {value!r}")
    match = _TIMESTAMP_TEXT.fullmatch(value)
    if match is None:
        raise InvalidMessage("bad_timestamp", f"executed_at is not RFC 3339: {value!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    fraction = (fraction or "").ljust(9, "0")
    if fraction[6:] != "000":
        raise InvalidMessage("bad_timestamp", f"executed_at finer than microseconds: {value!r}")
    try:
        if zulu:
            zone = UTC
        else:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int(fraction[:6]), tzinfo=zone,
        )  # fmt: skip
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidMessage("bad_timestamp", f"executed_at {value!r}: {exc}") from None


def _hlc(name: str, value: Any) -> HLC:
    try:
        return HLC.parse(value)
    except ValueError as exc:
        raise InvalidMessage("bad_hlc", f"{name}: {exc}") from None


def _nullable(after: dict[str, Any], name: str, parse: Any) -> Any:
    value = after[name]
    return None if value is None else parse(value)


def _required(after: dict[str, Any], name: str) -> Any:
    value = after[name]
    if value is None:
        raise InvalidMessage("wrong_type", f"{name} is NOT NULL but null")
    return value


def _execution(after: dict[str, Any], updated: HLC) -> Execution:
    missing = COLUMNS - after.keys()
    if missing:
        raise InvalidMessage("missing_field", f"after lacks {sorted(missing)}")
    extra = after.keys() - COLUMNS
    if extra:
        raise InvalidMessage("extra_field", f"after has unknown {sorted(extra)}")
    activity = _text("activity", _required(after, "activity"))
    if activity not in _ACTIVITIES:
        raise InvalidMessage("unknown_activity", f"activity {activity!r}")
    fields = {
        "execution_id": _uuid("execution_id", _required(after, "execution_id")),
        "block_order_id": _uuid("block_order_id", _required(after, "block_order_id")),
        "seq": _int8("seq", _required(after, "seq")),
        "activity": Activity(activity),
        "quantity": _int8("quantity", _required(after, "quantity")),
        "price": _nullable(after, "price", _price),
        "ref_execution_id": _nullable(
            after, "ref_execution_id", lambda v: _uuid("ref_execution_id", v)
        ),
        "order_type": _nullable(after, "order_type", lambda v: _text("order_type", v)),
        "destination": _nullable(after, "destination", lambda v: _text("destination", v)),
        "executed_at": _timestamp(_required(after, "executed_at")),
    }
    try:
        return Execution(**fields, updated=updated)
    except InvalidExecution as exc:
        raise InvalidMessage(exc.reason, exc.detail) from None


def _key_block_order(key: bytes | None, max_size: int) -> uuid.UUID:
    if not key:
        raise InvalidMessage("bad_key", "a change needs the Kafka key [block_order_id]")
    if len(key) > max_size:
        raise InvalidMessage("too_large", f"key of {len(key)} bytes exceeds {max_size}")
    try:
        parsed = _load(bytes(key), "key")
    except InvalidMessage as exc:
        raise InvalidMessage("bad_key", exc.detail) from None
    if not (isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], str)):
        raise InvalidMessage("bad_key", f"key must be a one-UUID JSON array: {parsed!r}")
    if _UUID_TEXT.fullmatch(parsed[0]) is None:
        raise InvalidMessage("bad_key", f"key is not a canonical UUID: {parsed[0]!r}")
    return uuid.UUID(parsed[0])


def decode(
    key: bytes | None, value: bytes | None, *, max_size: int = DEFAULT_MAX_SIZE
) -> Execution | Resolved:
    """Read one Kafka message of the executions topic; raise InvalidMessage if it is not one.

    Returns the row (with ``updated`` set) or a resolved checkpoint. Never raises anything
    but InvalidMessage for any bytes at all.
    """
    if not value:
        raise InvalidMessage("empty", "the message has no value")
    if len(value) > max_size:
        raise InvalidMessage("too_large", f"value of {len(value)} bytes exceeds {max_size}")
    message = _load(bytes(value), "value")
    if not isinstance(message, dict):
        raise InvalidMessage("not_object", f"value is a JSON {type(message).__name__}")

    if "resolved" in message:
        if message.keys() != {"resolved"}:
            raise InvalidMessage("bad_envelope", f"resolved with {sorted(message)}")
        if key:
            raise InvalidMessage("bad_key", "a resolved message has no key")
        return Resolved(_hlc("resolved", message["resolved"]))

    missing = {"after", "updated"} - message.keys()
    if missing:
        raise InvalidMessage("bad_envelope", f"value lacks {sorted(missing)}")
    extra = message.keys() - {"after", "updated", "key"}
    if extra:
        raise InvalidMessage("bad_envelope", f"value has unknown {sorted(extra)}")
    if "key" in message and not isinstance(message["key"], list):
        raise InvalidMessage("bad_envelope", f"key in value must be an array: {message['key']!r}")
    after = message["after"]
    if after is None:
        raise InvalidMessage("deleted_row", "after is null: a delete on an append-only table")
    if not isinstance(after, dict):
        raise InvalidMessage("bad_envelope", f"after must be an object: {after!r}")
    updated = _hlc("updated", message["updated"])
    execution = _execution(after, updated)
    block_order_id = _key_block_order(key, max_size)
    if block_order_id != execution.block_order_id:
        raise InvalidMessage(
            "key_mismatch", f"key {block_order_id} != block_order_id {execution.block_order_id}"
        )
    return execution


__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_SIZE",
    "HLC",
    "REASONS",
    "Activity",
    "Execution",
    "InvalidExecution",
    "InvalidMessage",
    "Resolved",
    "decode",
    "encode_change",
    "encode_resolved",
]

"""Turn pgoutput's text row values into the bytes a CockroachDB changefeed would publish.

:mod:`workload.envelope` defines the message (``encode_change``); the relay cannot use it as
is, for two reasons. It validates, and CRDB does not: a row the table accepts but the envelope
rejects (an execute with a NULL price, say) must still reach the topic exactly as CRDB would
write it, for the consumer to dead-letter. And it needs typed values, while pgoutput hands over
text: going text -> Python objects -> text costs more than the rest of the relay together.

So :class:`RowEncoder` writes CRDB's JSON straight from the text, column type by column type,
and ``tests/test_cdc_encoding.py`` proves that for every valid execution it writes exactly
the bytes ``envelope.encode_change`` writes. The text formats it relies on are PostgreSQL's
output functions with ``TimeZone=UTC`` (the relay's session sets it):

* ``uuid``: canonical lowercase hyphenated, as CRDB writes UUIDs;
* integers and ``numeric``: plain decimal text, ``numeric`` with its column's scale
  (``101.2500``), as CRDB writes DECIMAL (non-finite values are quoted, as CRDB quotes them);
* ``text``: any UTF-8, escaped the way CRDB's JSON escapes (``"``, ``\\``, ``\\n``, ``\\r``,
  ``\\t`` by name, other control characters as ``\\u00xx``, everything else raw);
* ``timestamptz``: ``2024-03-01 14:30:05.1234+00`` becomes ``2024-03-01T14:30:05.1234Z``: both
  servers drop trailing zeros of the fraction and the fraction itself at whole seconds. Years
  outside 0001..9999 and ``infinity`` have no such form; their text is published as a string
  that the consumer rejects as a bad timestamp, which is what it should do with them.

Types the executions table does not use are written as JSON strings of their text (JSON and
JSONB as their JSON text), a documented approximation rather than CRDB's exact form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from workload.cdc.pgoutput import UNCHANGED_TOAST, Relation, Value

# PostgreSQL type OIDs (pg_type.oid), stable across versions.
BOOL, INT8, INT2, INT4, TEXT, OID = 16, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, BPCHAR, VARCHAR = 114, 700, 701, 1042, 1043
TIMESTAMPTZ, NUMERIC, UUID, JSONB = 1184, 1700, 2950, 3802


class UnrepresentableChange(ValueError):
    """A change the relay cannot publish as CRDB would (an unchanged TOASTed value, a key
    column that is NULL)."""


_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')
_ESCAPES = {code: b"\\u%04x" % code for code in range(0x20)}
_ESCAPES.update({ord('"'): b'\\"', ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r"})
_ESCAPES[ord("\t")] = b"\\t"


def _escape(match: re.Match[bytes]) -> bytes:
    return _ESCAPES[match.group()[0]]


def json_string(raw: bytes) -> bytes:
    """UTF-8 text as a JSON string the way CRDB writes one."""
    if _NEEDS_ESCAPE.search(raw) is None:
        return b'"' + raw + b'"'
    return b'"' + _NEEDS_ESCAPE.sub(_escape, raw) + b'"'


def _number(raw: bytes) -> bytes:
    return raw


def _decimal(raw: bytes) -> bytes:
    # NaN and the infinities are the only non-digit forms; CRDB quotes them.
    return raw if raw[-1:].isdigit() else b'"' + raw + b'"'


def _bool(raw: bytes) -> bytes:
    return b"true" if raw == b"t" else b"false"


def _quoted_plain(raw: bytes) -> bytes:
    return b'"' + raw + b'"'  # uuid text has nothing to escape


def _raw_json(raw: bytes) -> bytes:
    return raw


def _timestamptz(raw: bytes) -> bytes:
    # "YYYY-MM-DD HH:MM:SS[.ffffff]+00": 22 to 29 bytes, the only form with a date at [:10]
    # and "+00" at the end (a 5-digit year shifts the "-", BC and infinity end otherwise).
    if 22 <= len(raw) <= 29 and raw[4] == 0x2D and raw[10] == 0x20 and raw[-3:] == b"+00":
        return b'"' + raw[:10] + b"T" + raw[11:-3] + b'Z"'
    return json_string(raw)


_BY_TYPE: dict[int, Callable[[bytes], bytes]] = {
    INT2: _number,
    INT4: _number,
    INT8: _number,
    OID: _number,
    NUMERIC: _decimal,
    FLOAT4: _decimal,
    FLOAT8: _decimal,
    BOOL: _bool,
    UUID: _quoted_plain,
    TIMESTAMPTZ: _timestamptz,
    JSON: _raw_json,
    JSONB: _raw_json,
}


def converter_for(type_oid: int) -> Callable[[bytes], bytes]:
    """How a column of this type becomes CRDB JSON; text-like and unknown types are strings."""
    return _BY_TYPE.get(type_oid, json_string)


class RowEncoder:
    """Kafka key and value for a row of one relation, compiled once per Relation message."""

    def __init__(self, relation: Relation, key_columns: Sequence[str]):
        names = [column.name for column in relation.columns]
        missing = [name for name in key_columns if name not in names]
        if missing:
            raise UnrepresentableChange(
                f"{relation.qualified} has no column {', '.join(missing)} to key messages by"
            )
        self.relation = relation
        # CRDB writes the columns of "after" sorted by name, ", " and ": " as separators.
        self._fields = [
            (names.index(name), b'"' + name.encode() + b'": ', converter_for(column.type_oid))
            for name, column in sorted(
                zip(names, relation.columns, strict=True), key=lambda pair: pair[0]
            )
        ]
        self._key = [
            (names.index(name), converter_for(relation.columns[names.index(name)].type_oid))
            for name in key_columns
        ]

    def key(self, values: Sequence[Value]) -> bytes:
        parts = []
        for index, convert in self._key:
            value = values[index]
            if value is None or value is UNCHANGED_TOAST:
                raise UnrepresentableChange(
                    f"key column {self.relation.columns[index].name} has no value"
                )
            parts.append(convert(value))
        return b"[" + b", ".join(parts) + b"]"

    def encode(self, values: Sequence[Value], updated: bytes) -> tuple[bytes, bytes]:
        """(key, value) of the change; ``updated`` is the HLC text (``b"<ns>.0000000000"``)."""
        if len(values) != len(self.relation.columns):
            raise UnrepresentableChange(
                f"a row of {len(values)} values for {self.relation.qualified}, which has "
                f"{len(self.relation.columns)} columns"
            )
        parts = []
        append = parts.append
        for index, prefix, convert in self._fields:
            value = values[index]
            if value is None:
                append(prefix + b"null")
            elif value is UNCHANGED_TOAST:
                raise UnrepresentableChange(
                    f"column {self.relation.columns[index].name} is an unchanged TOASTed value "
                    "that the update did not log"
                )
            else:
                append(prefix + convert(value))
        value = b'{"after": {' + b", ".join(parts) + b'}, "updated": "' + updated + b'"}'
        return self.key(values), value


# --------------------------------------------------------------------------------------------
# Partitioning


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data``."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def changefeed_partition(key: bytes, partitions: int) -> int:
    """The partition a CRDB changefeed's Kafka sink picks for ``key``.

    CRDB's docs: "CockroachDB uses the 32-bit FNV-1a hashing algorithm to determine which
    partition to send to". Its sink uses Sarama's hash partitioner, which takes the hash as a
    signed 32-bit integer, its remainder (Go's, truncating toward zero) and then the absolute
    value; librdkafka's ``fnv1a`` partitioner uses the unsigned hash and disagrees for half of
    all keys, so the relay picks partitions itself.
    """
    signed = fnv1a_32(key)
    if signed & 0x80000000:
        signed -= 1 << 32
    return abs(signed) % partitions


class Partitioner:
    """``changefeed_partition`` with a cache: the executions of a block order share a key."""

    MAX_CACHED = 200_000

    def __init__(self, partitions: int):
        if partitions < 1:
            raise ValueError(f"a topic needs at least one partition, not {partitions}")
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            partition = self._cache[key] = changefeed_partition(key, self.partitions)
        return partition

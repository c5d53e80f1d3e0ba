"""Parse the binary messages of PostgreSQL's built-in ``pgoutput`` logical decoding plugin.

The relay reads them through ``pg_logical_slot_get_binary_changes(slot, ..., 'proto_version',
'1', 'publication_names', ...)`` (on a copy of its slot; the ``peek`` variant returns the same
rows): one ``bytea`` row per message. The layout is PostgreSQL's
"Logical Replication Message Formats" (protocol chapter), version 1: big-endian integers,
NUL-terminated strings, LSNs as Int64, timestamps as Int64 microseconds since 2000-01-01 UTC.

Protocol 1 without the ``binary`` option sends every column value as text (the type's output
function, in the server encoding and the decoding session's TimeZone/DateStyle). Values are
returned here as the raw ``bytes`` of that text, ``None`` for SQL NULL, or
:data:`UNCHANGED_TOAST` for a TOASTed value an UPDATE did not change (and so did not log).

Every message type protocol 1 can produce is parsed; the types only later protocol versions
or options produce (streaming, two-phase commit, binary tuples) are rejected with
:class:`PgOutputError`, because the relay never asks for them and meeting one means the slot
is not what the relay thinks it is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PG_EPOCH_UNIX_MICROS = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_BEGIN = struct.Struct(">qqI")  # final LSN, commit time, xid
_COMMIT = struct.Struct(">bqqq")  # flags, commit LSN, end LSN, commit time
_ORIGIN = struct.Struct(">q")
_COLUMN_TAIL = struct.Struct(">Ii")  # type OID, type modifier
_LENGTH = struct.Struct(">I")


class PgOutputError(ValueError):
    """Bytes that are not a pgoutput protocol 1 message the relay can handle."""


class _UnchangedToast:
    """The marker pgoutput sends instead of a TOASTed value an UPDATE left untouched."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _UnchangedToast()

Value = bytes | None | _UnchangedToast


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes one (``pg_lsn`` text): ``"16/B374D848"``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def pg_time_to_unix_micros(pg_micros: int) -> int:
    return pg_micros + PG_EPOCH_UNIX_MICROS


def pg_time_to_datetime(pg_micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=pg_micros)


# --------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the LSN of the transaction's commit record
    commit_time: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # just past the commit record: where the slot may advance to
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True, slots=True)
class Type:
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    old_kind: str | None  # "K": key columns only, "O": the whole old row, None: not sent
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old_kind: str  # "K" or "O"
    old: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # bit 1: CASCADE, bit 2: RESTART IDENTITY
    relation_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
)


# --------------------------------------------------------------------------------------------
# Parsing


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("utf-8"), end + 1


def _tuple(data: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    (count,) = _INT16.unpack_from(data, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == 0x74:  # 't': text
            (length,) = _LENGTH.unpack_from(data, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > len(data):
                raise PgOutputError("a column value runs past the end of the message")
            append(data[start:pos])
        elif kind == 0x6E:  # 'n': NULL
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u': unchanged TOAST
            append(UNCHANGED_TOAST)
            pos += 1
        elif kind == 0x62:  # 'b': binary, only with the binary option the relay never sets
            raise PgOutputError("a binary column value: the relay asks for text values only")
        else:
            raise PgOutputError(f"unknown column value kind {bytes([kind])!r}")
    return tuple(values), pos


def _begin(data: bytes) -> Begin:
    final_lsn, commit_time, xid = _BEGIN.unpack_from(data, 1)
    return Begin(final_lsn, commit_time, xid)


def _commit(data: bytes) -> Commit:
    return Commit(*_COMMIT.unpack_from(data, 1))


def _origin(data: bytes) -> Origin:
    (commit_lsn,) = _ORIGIN.unpack_from(data, 1)
    name, _ = _string(data, 9)
    return Origin(commit_lsn, name)


def _relation(data: bytes) -> Relation:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    namespace, pos = _string(data, 5)
    name, pos = _string(data, pos)
    replica_identity = chr(data[pos])
    (count,) = _INT16.unpack_from(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column_name, pos = _string(data, pos + 1)
        type_oid, type_modifier = _COLUMN_TAIL.unpack_from(data, pos)
        pos += 8
        columns.append(Column(bool(flags & 1), column_name, type_oid, type_modifier))
    return Relation(relation_id, namespace, name, replica_identity, tuple(columns))


def _type(data: bytes) -> Type:
    (type_oid,) = _UINT32.unpack_from(data, 1)
    namespace, pos = _string(data, 5)
    name, _ = _string(data, pos)
    return Type(type_oid, namespace, name)


def _insert(data: bytes) -> Insert:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    if data[5] != 0x4E:  # 'N'
        raise PgOutputError(f"an insert without its new tuple (got {data[5:6]!r})")
    new, _ = _tuple(data, 6)
    return Insert(relation_id, new)


def _update(data: bytes) -> Update:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    pos = 5
    old_kind = None
    old = None
    if data[pos] in (0x4B, 0x4F):  # 'K' or 'O'
        old_kind = chr(data[pos])
        old, pos = _tuple(data, pos + 1)
    if data[pos] != 0x4E:
        raise PgOutputError(f"an update without its new tuple (got {data[pos : pos + 1]!r})")
    new, _ = _tuple(data, pos + 1)
    return Update(relation_id, old_kind, old, new)


def _delete(data: bytes) -> Delete:
    (relation_id,) = _UINT32.unpack_from(data, 1)
    if data[5] not in (0x4B, 0x4F):
        raise PgOutputError(f"a delete without its old key or tuple (got {data[5:6]!r})")
    old, _ = _tuple(data, 6)
    return Delete(relation_id, chr(data[5]), old)


def _truncate(data: bytes) -> Truncate:
    (count,) = _INT32.unpack_from(data, 1)
    options = data[5]
    ids = struct.unpack_from(f">{count}I", data, 6)
    return Truncate(options, tuple(ids))


def _logical_message(data: bytes) -> LogicalMessage:
    flags = data[1]
    (lsn,) = _ORIGIN.unpack_from(data, 2)
    prefix, pos = _string(data, 10)
    (length,) = _LENGTH.unpack_from(data, pos)
    return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(data[pos + 4 : pos + 4 + length]))


_PARSERS = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _logical_message,
}

# What later protocol versions add; named so that the error says what was met.
_NOT_REQUESTED = {
    ord("S"): "Stream Start (protocol 2, streaming)",
    ord("E"): "Stream Stop (protocol 2, streaming)",
    ord("c"): "Stream Commit (protocol 2, streaming)",
    ord("A"): "Stream Abort (protocol 2, streaming)",
    ord("b"): "Begin Prepare (protocol 3, two-phase)",
    ord("P"): "Prepare (protocol 3, two-phase)",
    ord("K"): "Commit Prepared (protocol 3, two-phase)",
    ord("r"): "Rollback Prepared (protocol 3, two-phase)",
    ord("p"): "Stream Prepare (protocol 3, two-phase)",
}


def parse(data: bytes) -> Message:
    """One pgoutput message; PgOutputError if it is malformed or not a protocol 1 message."""
    if not data:
        raise PgOutputError("an empty message")
    kind = data[0]
    parser = _PARSERS.get(kind)
    if parser is None:
        what = _NOT_REQUESTED.get(kind)
        if what:
            raise PgOutputError(f"a {what} message: the relay asks for protocol 1 only")
        raise PgOutputError(f"unknown message type {bytes([kind])!r}")
    try:
        return parser(data)
    except (struct.error, IndexError, ValueError) as exc:
        if isinstance(exc, PgOutputError):
            raise
        name = chr(kind)
        raise PgOutputError(f"a malformed {name!r} message ({exc}): {bytes(data[:40])!r}") from None

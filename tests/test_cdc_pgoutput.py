"""The pgoutput parser, on bytes the embedded PostgreSQL wrote.

Two sources of real bytes: messages captured once from PostgreSQL 18 (kept below, so the
parser is tested without a server), and messages a test makes the running server write now
by peeking a slot on a scratch table that exercises every message type and awkward values.
"""

from __future__ import annotations

import secrets
import struct
from datetime import UTC, datetime

import psycopg
import pytest

from tests.cdc_fixtures import drop_slot, unique
from workload.cdc import pgoutput
from workload.cdc.encoding import NUMERIC, TEXT, TIMESTAMPTZ, UUID
from workload.cdc.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    PgOutputError,
    Relation,
    Truncate,
    Type,
    Update,
    lsn_text,
    parse,
    parse_lsn,
)

# Captured from PostgreSQL 18.6 (pgoutput, proto_version 1): trades.executions' Relation
# message and an insert of one execution, as pg_logical_slot_peek_binary_changes returned them.
RELATION = (
    b"R\x00\x00@\xb6trades\x00executions\x00d\x00\n"
    b"\x01execution_id\x00\x00\x00\x0b\x86\xff\xff\xff\xff"
    b"\x00block_order_id\x00\x00\x00\x0b\x86\xff\xff\xff\xff"
    b"\x00seq\x00\x00\x00\x00\x14\xff\xff\xff\xff"
    b"\x00activity\x00\x00\x00\x00\x19\xff\xff\xff\xff"
    b"\x00quantity\x00\x00\x00\x00\x14\xff\xff\xff\xff"
    b"\x00price\x00\x00\x00\x06\xa4\x00\x12\x00\x08"
    b"\x00ref_execution_id\x00\x00\x00\x0b\x86\xff\xff\xff\xff"
    b"\x00order_type\x00\x00\x00\x00\x19\xff\xff\xff\xff"
    b"\x00destination\x00\x00\x00\x00\x19\xff\xff\xff\xff"
    b"\x00executed_at\x00\x00\x00\x04\xa0\xff\xff\xff\xff"
)
INSERT = (
    b"I\x00\x00@\xb6N\x00\n"
    b"t\x00\x00\x00$056ce403-a9ac-4b53-be54-c32fe86a0c80"
    b"t\x00\x00\x00$0a998e80-5cc4-4a0a-81e8-5f6ed4da505c"
    b"t\x00\x00\x00\x011t\x00\x00\x00\x07execute"
    b"t\x00\x00\x00\x03100t\x00\x00\x00\x0712.5000nnn"
    b"t\x00\x00\x00\x1c2026-11-25 02:22:06.83131+00"
)
BEGIN = b"B\x00\x00\x00\x00\x01\xb6\xe1x\x00\x03\x04\x0fC\x18\x82r\x00\x00\x02\xf3"
COMMIT = (
    b"C\x00\x00\x00\x00\x00\x01\xb6\xe1x\x00\x00\x00\x00\x01\xb6\xe1\xa8\x00\x03\x04\x0fC\x18\x82r"
)


def test_captured_relation():
    relation = parse(RELATION)
    assert isinstance(relation, Relation)
    assert (relation.relation_id, relation.qualified, relation.replica_identity) == (
        16566,
        "trades.executions",
        "d",
    )
    assert [c.name for c in relation.columns] == [
        "execution_id", "block_order_id", "seq", "activity", "quantity", "price",
        "ref_execution_id", "order_type", "destination", "executed_at",
    ]  # fmt: skip
    assert [c.is_key for c in relation.columns] == [True] + [False] * 9
    assert relation.columns[0] == Column(True, "execution_id", UUID, -1)
    # NUMERIC(18,4): typmod ((18 << 16) | 4) + 4
    assert relation.columns[5] == Column(False, "price", NUMERIC, (18 << 16 | 4) + 4)
    assert relation.columns[3].type_oid == TEXT and relation.columns[9].type_oid == TIMESTAMPTZ


def test_captured_insert_begin_and_commit():
    insert = parse(INSERT)
    assert insert == Insert(
        16566,
        (
            b"056ce403-a9ac-4b53-be54-c32fe86a0c80", b"0a998e80-5cc4-4a0a-81e8-5f6ed4da505c",
            b"1", b"execute", b"100", b"12.5000", None, None, None,
            b"2026-11-25 02:22:06.83131+00",
        ),
    )  # fmt: skip
    begin, commit = parse(BEGIN), parse(COMMIT)
    assert begin == Begin(final_lsn=0x1B6E178, commit_time=begin.commit_time, xid=755)
    assert commit.commit_lsn == begin.final_lsn and commit.end_lsn == 0x1B6E1A8
    assert commit.commit_time == begin.commit_time and commit.flags == 0
    # a little after the row's now() (06.83131): now() is when the transaction began
    committed = datetime(2026, 11, 25, 2, 22, 6, 832242, tzinfo=UTC)
    assert pgoutput.pg_time_to_datetime(begin.commit_time) == committed


def test_lsns():
    assert lsn_text(0x1B6E1A8) == "0/1B6E1A8"
    assert lsn_text((0x16 << 32) | 0xB374D848) == "16/B374D848"
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    with pytest.raises(ValueError):
        parse_lsn("1B6E1A8")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "an empty message"),
        (b"Z\x00", "unknown message type"),
        (b"S\x00\x00\x00\x01\x01", "Stream Start"),
        (b"c\x00", "Stream Commit"),
        (b"P\x00", "two-phase"),
        (INSERT[:-5], "runs past the end"),
        (INSERT[:7], "malformed"),
        (INSERT.replace(b"\nt", b"\nb", 1), "binary column value"),
        (INSERT.replace(b"\nt", b"\nx", 1), "unknown column value kind"),
        (b"I\x00\x00@\xb6K\x00\x00", "without its new tuple"),
        (RELATION[:30], "malformed"),
        (BEGIN[:10], "malformed"),
    ],
)
def test_malformed_and_unrequested_messages_are_refused(data, error):
    with pytest.raises(PgOutputError, match=error):
        parse(data)


# --------------------------------------------------------------------------------------------
# Live: every message type, from the server running now


SCRATCH = """
CREATE TYPE scratch_mood AS ENUM ('calm', 'busy');
CREATE TABLE scratch (
    id int8 PRIMARY KEY,
    note text,
    amount numeric(18,4),
    at timestamptz,
    ref uuid,
    flag bool,
    mood scratch_mood,
    blob text
);
ALTER TABLE scratch ALTER COLUMN blob SET STORAGE EXTERNAL;
"""


@pytest.fixture
def captured(fresh_dsn):
    """Messages the server wrote for a scripted series of transactions on a scratch table."""
    slot, publication = unique("t_pgo_"), unique("t_pgo_pub_")
    big = secrets.token_hex(8000)  # incompressible, stored out of line (TOAST)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(SCRATCH)
        conn.execute(f"CREATE PUBLICATION {publication} FOR TABLE scratch")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO scratch VALUES (1, %s, 12.5, '2024-03-01 14:30:05.1234+00', "
                    "'7c9e6679-7425-40de-944b-e07fc1f90ae7', true, 'calm', %s)",
                    ('quote " backslash \\ unicode ünï ✓ 東京\nnewline', big),
                )
                conn.execute(
                    "INSERT INTO scratch VALUES (2, NULL, -0.0001, '2024-03-01 14:30:06+02', "
                    "NULL, false, NULL, NULL)"
                )
                conn.execute("INSERT INTO scratch (id, amount) VALUES (3, 99999999999999.9999)")
            conn.execute("UPDATE scratch SET note = 'changed' WHERE id = 1")  # blob untouched
            conn.execute("UPDATE scratch SET id = 20 WHERE id = 2")  # key change: old key sent
            conn.execute("DELETE FROM scratch WHERE id = 3")
            conn.execute("SELECT pg_logical_emit_message(true, 'crdblab', 'hello')")
            conn.execute("TRUNCATE scratch")
            conn.execute("SET TimeZone = 'UTC'")
            rows = conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                "'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
                (slot, publication),
            ).fetchall()
            relid = conn.execute("SELECT 'scratch'::regclass::oid").fetchone()[0]
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    yield [parse(bytes(row[0])) for row in rows], relid, big
    drop_slot(fresh_dsn, slot)


def test_live_messages_in_order(captured):
    messages, relid, _ = captured
    kinds = [type(m).__name__ for m in messages]
    # a relation (and its types) is described before its first use in a decoding session,
    # and again after anything that invalidates the server's relation cache (TRUNCATE does)
    assert kinds == [
        "Begin", "Type", "Relation", "Insert", "Insert", "Insert", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Delete", "Commit",
        "Begin", "LogicalMessage", "Commit",
        "Begin", "Type", "Relation", "Truncate", "Commit",
    ]  # fmt: skip
    # every transaction: Begin's final LSN is its Commit's LSN, commit times agree
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time == commit.commit_time
    assert [c.end_lsn for c in commits] == sorted(c.end_lsn for c in commits)
    commit_time = pgoutput.pg_time_to_datetime(begins[0].commit_time)
    assert abs((datetime.now(UTC) - commit_time).total_seconds()) < 600
    assert all(m.relation_id == relid for m in messages if isinstance(m, Relation))


def test_live_types_and_values(captured):
    messages, _, big = captured
    mood = next(m for m in messages if isinstance(m, Type))
    assert (mood.namespace, mood.name) == ("public", "scratch_mood")
    relation = next(m for m in messages if isinstance(m, Relation))
    assert [(c.name, c.is_key) for c in relation.columns][:2] == [("id", True), ("note", False)]
    assert relation.columns[6].type_oid == mood.type_oid
    first, second, third = (m for m in messages if isinstance(m, Insert))
    assert first.new == (
        b"1",
        'quote " backslash \\ unicode ünï ✓ 東京\nnewline'.encode(),
        b"12.5000",  # numeric keeps its column's scale
        b"2024-03-01 14:30:05.1234+00",  # in the peeking session's TimeZone (UTC)
        b"7c9e6679-7425-40de-944b-e07fc1f90ae7",
        b"t",
        b"calm",
        big.encode(),
    )
    assert second.new == (b"2", None, b"-0.0001", b"2024-03-01 12:30:06+00", None, b"f", None, None)
    assert third.new[2] == b"99999999999999.9999" and third.new[1] is None


def test_live_updates_deletes_truncates_and_messages(captured):
    messages, relid, _ = captured
    toast_update, key_update = (m for m in messages if isinstance(m, Update))
    assert toast_update.old is None and toast_update.old_kind is None
    assert toast_update.new[:2] == (b"1", b"changed")
    assert toast_update.new[7] is UNCHANGED_TOAST  # not logged: the relay cannot publish it
    assert key_update.old_kind == "K"
    assert key_update.old == (b"2", None, None, None, None, None, None, None)
    assert key_update.new[0] == b"20"
    delete = next(m for m in messages if isinstance(m, Delete))
    assert delete == Delete(relid, "K", (b"3", None, None, None, None, None, None, None))
    truncate = next(m for m in messages if isinstance(m, Truncate))
    assert truncate == Truncate(0, (relid,))
    message = next(m for m in messages if isinstance(m, LogicalMessage))
    assert (message.transactional, message.prefix, message.content) == (True, "crdblab", b"hello")


def test_an_origin_message():
    data = b"O" + struct.pack(">q", 0x1B6E178) + b"node_a\x00"
    assert parse(data) == pgoutput.Origin(0x1B6E178, "node_a")

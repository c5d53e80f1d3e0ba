"""The PostgreSQL side of CDC: a publication of trades.executions and a logical slot on it.

The slot keeps every change from the moment it is created until the relay advances past it,
across restarts of the relay and of the server: that is what makes the relay lose nothing.
It also keeps the WAL those changes live in, so a slot nobody reads makes the server's disk
grow; ``cdc stop --drop-slot`` removes it.

The publication publishes inserts and updates only. trades.executions is append-only; a
delete would carry just the primary key (not the block order the messages are keyed by) and
CRDB would emit it as a delete the consumer dead-letters anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from workload.errors import LabError

DEFAULT_SLOT = "crdblab_executions"
DEFAULT_PUBLICATION = "crdblab_executions"
EXECUTIONS_TABLE = ("trades", "executions")
PLUGIN = "pgoutput"

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


@dataclass(frozen=True)
class SlotSpec:
    slot: str = DEFAULT_SLOT
    publication: str = DEFAULT_PUBLICATION
    table: tuple[str, str] = EXECUTIONS_TABLE

    def __post_init__(self) -> None:
        # PostgreSQL's own rule for slot names; checked here so the error names the option.
        if not _SLOT_NAME.fullmatch(self.slot):
            raise LabError(
                f"replication slot name {self.slot!r}: use 1 to 63 lowercase letters, digits "
                "or underscores"
            )
        if not self.publication or len(self.publication) > 63:
            raise LabError(f"publication name {self.publication!r} must have 1 to 63 characters")

    @property
    def qualified_table(self) -> str:
        return ".".join(self.table)


def check_server(conn: psycopg.Connection) -> None:
    """Logical decoding needs wal_level=logical; the relay reads text in UTF-8."""
    wal_level = conn.execute("SHOW wal_level").fetchone()[0]
    if wal_level != "logical":
        raise LabError(
            f"PostgreSQL runs with wal_level={wal_level}; logical decoding needs "
            "wal_level=logical (set it in postgresql.conf and restart the server; the embedded "
            "stack sets it)"
        )
    encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    if encoding.upper() not in ("UTF8", "UTF-8"):
        raise LabError(f"the database uses encoding {encoding}; the CDC relay needs UTF8")


def _table_exists(conn: psycopg.Connection, spec: SlotSpec) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (spec.qualified_table,)).fetchone()
    return row is not None and row[0] is not None


def ensure_publication(conn: psycopg.Connection, spec: SlotSpec) -> bool:
    """Create the publication (or add the table to it); True if anything was created."""
    if not _table_exists(conn, spec):
        raise LabError(
            f"table {spec.qualified_table} does not exist; run `python -m workload schema create`"
        )
    table = sql.Identifier(*spec.table)
    name = sql.Identifier(spec.publication)
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.publication,)
    ).fetchone()
    if not exists:
        try:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update')")
                .format(name, table)
            )  # fmt: skip
            return True
        except errors.DuplicateObject:
            pass  # created concurrently by another `cdc start`
    published = conn.execute(
        "SELECT 1 FROM pg_publication_tables "
        "WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        (spec.publication, *spec.table),
    ).fetchone()
    if not published:
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(name, table))
        return True
    return False


def ensure_slot(conn: psycopg.Connection, spec: SlotSpec) -> bool:
    """Create the logical slot unless it exists; True if it was created.

    Creating a slot waits until every transaction running at that moment has ended.
    """
    row = conn.execute(
        "SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (spec.slot,)
    ).fetchone()
    if row is not None:
        plugin, database = row
        current = conn.execute("SELECT current_database()").fetchone()[0]
        if plugin != PLUGIN or database != current:
            raise LabError(
                f"replication slot {spec.slot!r} exists for plugin {plugin} in database "
                f"{database}, not {PLUGIN} in {current}; choose another --slot or drop it"
            )
        return False
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (spec.slot, PLUGIN))
    except errors.DuplicateObject:
        return False
    return True


def setup(conn: psycopg.Connection, spec: SlotSpec) -> dict[str, bool]:
    """Everything the relay needs on the server; what was created (False: it existed)."""
    check_server(conn)
    return {"publication": ensure_publication(conn, spec), "slot": ensure_slot(conn, spec)}


def drop(conn: psycopg.Connection, spec: SlotSpec) -> list[str]:
    """Drop the slot and the publication; the names of what existed and was dropped."""
    dropped = []
    # A relay holds the slot only while it reads (the SQL functions acquire it per call).
    exists = conn.execute(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (spec.slot,)
    ).fetchone()
    if exists:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (spec.slot,))
        except errors.ObjectInUse:
            raise LabError(
                f"replication slot {spec.slot!r} is being read; stop the relay first "
                "(`python -m workload cdc stop`)"
            ) from None
        dropped.append(f"slot {spec.slot}")
    published = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.publication,)
    ).fetchone()
    if published:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(spec.publication)))
        dropped.append(f"publication {spec.publication}")
    return dropped


def slot_state(conn: psycopg.Connection, slot: str) -> dict | None:
    """The slot as the server sees it, or None if there is none: where it stands and how much
    WAL it holds back that the relay has not yet confirmed."""
    row = conn.execute(
        "SELECT active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, wal_status, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    active, pid, restart, confirmed, wal_status, pending = row
    return {
        "slot": slot,
        "active": active,
        "active_pid": pid,
        "restart_lsn": restart,
        "confirmed_flush_lsn": confirmed,
        "wal_status": wal_status,
        "pending_wal_bytes": pending,
    }


def has_rows(conn: psycopg.Connection, spec: SlotSpec) -> bool:
    """Whether the table already holds rows (which a new slot will never publish)."""
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(*spec.table))
    return bool(conn.execute(query).fetchone()[0])

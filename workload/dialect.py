"""Every difference between CockroachDB and PostgreSQL, in one place.

Both speak the PostgreSQL wire protocol and psycopg 3 talks to both; the kit detects which one
it talks to at connect time (``SELECT version()``) and asks a :class:`Dialect` for anything
that differs. Nothing outside this module tests ``is_crdb``-like flags to build SQL.

Layout: each domain (reference, market, ...) is a *database* on CockroachDB and a *schema* on
PostgreSQL. Two-part names such as ``reference.securities`` resolve in both: CockroachDB reads
``db.table`` as ``db.public.table`` when the current database has no schema of that name.

References (CockroachDB docs): "CREATE INDEX" (hash-sharded indexes, ``USING HASH``),
"UPSERT", "Follower Reads" (``AS OF SYSTEM TIME follower_read_timestamp()``), "Transaction
Retry Error Reference" (SQLSTATE 40001), "Licensing FAQs" (``enterprise.license``,
``cluster.organization``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

POSTGRESQL = "postgresql"
COCKROACHDB = "cockroachdb"

# The comment that marks a schema/database as the kit's own, so `schema drop` never removes
# something it did not create.
OWNER_MARK = "crdblab domain"


@dataclass(frozen=True)
class Index:
    """A secondary index. ``time_ordered`` indexes are hash-sharded on CockroachDB, where a
    monotonically increasing key would send every insert to one range (a hot spot)."""

    name: str
    columns: tuple[str, ...]
    time_ordered: bool = False
    unique: bool = False


@dataclass(frozen=True)
class Table:
    """A table in dialect-neutral SQL: column definitions use types both servers accept."""

    domain: str
    name: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    indexes: tuple[Index, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.domain}.{self.name}"


@dataclass(frozen=True)
class Dialect:
    kind: str
    version: str = ""

    @property
    def is_cockroachdb(self) -> bool:
        return self.kind == COCKROACHDB

    @property
    def server_name(self) -> str:
        return "CockroachDB" if self.is_cockroachdb else "PostgreSQL"

    @property
    def transactional_ddl(self) -> bool:
        """PostgreSQL runs DDL atomically in a transaction; CockroachDB runs schema changes as
        background jobs and advises against batching them in explicit transactions."""
        return not self.is_cockroachdb

    # -- layout -----------------------------------------------------------------------------

    def create_domain(self, domain: str) -> list[sql.Composed]:
        ident = sql.Identifier(domain)
        kind = sql.SQL("DATABASE" if self.is_cockroachdb else "SCHEMA")
        return [
            sql.SQL("CREATE {} IF NOT EXISTS {}").format(kind, ident),
            sql.SQL("COMMENT ON {} {} IS {}").format(kind, ident, sql.Literal(OWNER_MARK)),
        ]

    def drop_domain(self, domain: str) -> sql.Composed:
        kind = sql.SQL("DATABASE" if self.is_cockroachdb else "SCHEMA")
        return sql.SQL("DROP {} IF EXISTS {} CASCADE").format(kind, sql.Identifier(domain))

    def domain_owner_query(self) -> sql.SQL:
        """Rows of (domain name, comment) for every existing domain container."""
        if self.is_cockroachdb:
            return sql.SQL(
                "SELECT database_name, comment FROM [SHOW DATABASES WITH COMMENT] "
                "WHERE database_name = ANY(%s)"
            )
        return sql.SQL(
            "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace "
            "WHERE nspname = ANY(%s)"
        )

    def create_table(self, table: Table) -> list[sql.Composed]:
        parts = [sql.SQL(c) for c in table.columns]
        parts.append(
            sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
            )
        )
        parts.extend(sql.SQL(c) for c in table.constraints)
        statements = [
            sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} (\n    {}\n)").format(
                sql.Identifier(table.domain),
                sql.Identifier(table.name),
                sql.SQL(",\n    ").join(parts),
            )
        ]
        statements.extend(self.create_index(table, index) for index in table.indexes)
        return statements

    def create_index(self, table: Table, index: Index) -> sql.Composed:
        sharded = index.time_ordered and self.is_cockroachdb
        hashed = sql.SQL(" USING HASH" if sharded else "")
        return sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {}.{} ({}){}").format(
            sql.SQL("UNIQUE " if index.unique else ""),
            sql.Identifier(index.name),
            sql.Identifier(table.domain),
            sql.Identifier(table.name),
            sql.SQL(", ").join(map(sql.Identifier, index.columns)),
            hashed,
        )

    # -- statements that differ ---------------------------------------------------------------

    def upsert(self, qualified: str, columns: Sequence[str], key: Sequence[str]) -> sql.Composed:
        """Insert or overwrite by ``key``: ``UPSERT`` on CockroachDB (a blind write, no read of
        the existing row), ``INSERT ... ON CONFLICT DO UPDATE`` on PostgreSQL."""
        table = sql.SQL(".").join(map(sql.Identifier, qualified.split(".")))
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        values = sql.SQL(", ").join(sql.Placeholder() * len(columns))
        if self.is_cockroachdb:
            return sql.SQL("UPSERT INTO {} ({}) VALUES ({})").format(table, cols, values)
        updates = [c for c in columns if c not in key]
        if updates:
            action = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                    for c in updates
                )
            )
        else:
            action = sql.SQL("DO NOTHING")
        return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            table, cols, values, sql.SQL(", ").join(map(sql.Identifier, key)), action
        )

    def stale_read(self) -> sql.SQL:
        """A clause after FROM that lets a read be served by the nearest replica on CockroachDB
        (bounded staleness, no contention with writers); nothing on PostgreSQL."""
        if self.is_cockroachdb:
            return sql.SQL(" AS OF SYSTEM TIME follower_read_timestamp()")
        return sql.SQL("")


def detect(conn: psycopg.Connection) -> Dialect:
    """Ask the server what it is; ``SELECT version()`` names CockroachDB when it is one."""
    row = conn.execute("SELECT version()").fetchone()
    version = row[0] if row else ""
    kind = COCKROACHDB if "CockroachDB" in version else POSTGRESQL
    return Dialect(kind=kind, version=version)

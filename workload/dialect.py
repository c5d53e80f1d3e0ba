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

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

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

    def node_count_query(self) -> sql.SQL:
        """How many database nodes serve the cluster (one for PostgreSQL)."""
        if self.is_cockroachdb:
            return sql.SQL("SELECT count(*) FROM crdb_internal.gossip_nodes WHERE is_live")
        return sql.SQL("SELECT 1")

    def upsert_arrays(
        self,
        qualified: str,
        columns: Sequence[str],
        types: Sequence[str],
        key: Sequence[str],
    ) -> sql.Composed:
        """Insert-or-overwrite many rows in one statement, one array parameter per column
        (``unnest``): one round trip and one plan for any number of rows."""
        table = sql.SQL(".").join(map(sql.Identifier, qualified.split(".")))
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        arrays = sql.SQL(", ").join(
            sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types
        )  # the types are the kit's constants, never user input
        if self.is_cockroachdb:
            return sql.SQL("UPSERT INTO {} ({}) SELECT * FROM unnest({})").format(
                table, cols, arrays
            )
        updates = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in columns
            if c not in key
        )
        return sql.SQL(
            "INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) DO UPDATE SET {}"
        ).format(table, cols, arrays, sql.SQL(", ").join(map(sql.Identifier, key)), updates)

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


# ============================================================================================
# Changefeeds (CockroachDB only): the CDC source on CRDB
# ============================================================================================
# What CRDB's docs say, and what its source enforces (cockroachdb/cockroach,
# pkg/ccl/changefeedccl/changefeedbase/options.go):
# * "CREATE CHANGEFEED": ``key_column`` overrides the message key (and so the partition: the
#   Kafka sink hashes the key with 32-bit FNV-1a) and "you must also include the unordered
#   option"; ``unordered`` and ``resolved`` are incompatible ("resolved timestamps cannot be
#   guaranteed to be correct in unordered mode"). Keying by block order is what the consumer
#   depends on, so the changefeed here sends no resolved messages; its progress is the job's
#   high-water mark (``SHOW CHANGEFEED JOBS``). The PostgreSQL relay does send them.
# * "Changefeed Sinks": ``kafka://host:port[,host:port]?topic_name=...``, query values
#   percent-encoded; ``kafka_sink_config`` is JSON: ``{"Flush": {"Messages": n, "Frequency":
#   "100ms", "MaxMessages": n}, "RequiredAcks": "ALL"}``, where Messages > 1 needs a Frequency.
# * ``initial_scan = 'no'``: only changes from now on, like the relay's new slot; executions
#   written before ``cdc start`` are not published on either server.
# * ``SET CLUSTER SETTING kv.rangefeed.enabled = true`` must precede CREATE CHANGEFEED.

CHANGEFEED_TABLE = ("trades", "executions")
CHANGEFEED_KEY_COLUMN = "block_order_id"
_REQUIRED_ACKS = ("NONE", "ONE", "ALL")
_ACTIVE_JOB_STATES = ("running", "pending", "paused", "pause-requested", "retry-running")


@dataclass(frozen=True)
class KafkaSinkConfig:
    """The ``kafka_sink_config`` option: how the changefeed batches and what counts as sent."""

    flush_messages: int = 1000  # batch up to this many messages ...
    flush_frequency: str = "100ms"  # ... or for this long, whichever comes first
    max_messages: int | None = None  # per broker request (CRDB's default: 1000)
    required_acks: str = "ALL"  # the relay's producer is idempotent, which implies ALL

    def __post_init__(self) -> None:
        if self.required_acks not in _REQUIRED_ACKS:
            raise ValueError(f"RequiredAcks must be one of {', '.join(_REQUIRED_ACKS)}")
        if self.flush_messages < 0 or (self.max_messages is not None and self.max_messages < 1):
            raise ValueError("flush message counts must be positive")
        if self.flush_messages > 1 and not self.flush_frequency:
            raise ValueError("a flush message count above 1 needs a flush frequency")

    def as_json(self) -> str:
        flush: dict = {"Messages": self.flush_messages}
        if self.flush_frequency:
            flush["Frequency"] = self.flush_frequency
        if self.max_messages is not None:
            flush["MaxMessages"] = self.max_messages
        return json.dumps({"Flush": flush, "RequiredAcks": self.required_acks})


@dataclass(frozen=True)
class ChangefeedSpec:
    """Everything CREATE CHANGEFEED needs; ``sink_bootstrap`` is the brokers as CRDB's nodes
    reach them (on Docker, the in-network addresses, not the host's)."""

    sink_bootstrap: str
    topic: str
    table: tuple[str, str] = CHANGEFEED_TABLE
    key_column: str | None = CHANGEFEED_KEY_COLUMN  # None: the primary key, ordered
    resolved: str | None = None  # only without key_column (see above)
    initial_scan: str = "no"
    min_checkpoint_frequency: str | None = None
    sink: KafkaSinkConfig = KafkaSinkConfig()

    def __post_init__(self) -> None:
        if self.key_column is not None and self.resolved is not None:
            raise ValueError(
                "CockroachDB rejects resolved with key_column: key_column requires unordered, "
                "and resolved timestamps are not supported in unordered mode"
            )
        if self.initial_scan not in ("yes", "no", "only"):
            raise ValueError(f"initial_scan must be yes, no or only, not {self.initial_scan!r}")


def kafka_sink_uri(bootstrap: str, topic: str, params: dict[str, str] | None = None) -> str:
    """The ``kafka://`` sink URI for a comma-separated bootstrap list, with the topic (and any
    other query parameter) percent-encoded so that no character can change the URI's shape."""
    servers = [server.strip() for server in bootstrap.split(",") if server.strip()]
    if not servers:
        raise ValueError("a Kafka sink needs at least one broker")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or re.search(r"[\s/?#@]", host):
            raise ValueError(f"{server!r} is not a broker address (host:port)")
    query = urlencode({"topic_name": topic, **(params or {})}, quote_via=quote, safe="")
    return f"kafka://{','.join(servers)}?{query}"


def _require_crdb(dialect: Dialect, what: str) -> None:
    if not dialect.is_cockroachdb:
        raise ValueError(f"{what} is CockroachDB's; PostgreSQL publishes through the CDC relay")


def enable_rangefeeds(dialect: Dialect) -> sql.SQL:
    _require_crdb(dialect, "a changefeed")
    return sql.SQL("SET CLUSTER SETTING kv.rangefeed.enabled = true")


def create_changefeed(dialect: Dialect, spec: ChangefeedSpec) -> sql.Composed:
    """CREATE CHANGEFEED for ``spec.table`` into the Kafka topic, in the JSON envelope the
    consumer reads (``workload.envelope``); returns one row, the job id."""
    _require_crdb(dialect, "a changefeed")
    options = [
        sql.SQL("format = 'json'"),
        sql.SQL("envelope = 'wrapped'"),
        sql.SQL("updated"),
        sql.SQL("initial_scan = {}").format(sql.Literal(spec.initial_scan)),
        sql.SQL("kafka_sink_config = {}").format(sql.Literal(spec.sink.as_json())),
    ]
    if spec.key_column is not None:
        options += [
            sql.SQL("key_column = {}").format(sql.Literal(spec.key_column)),
            sql.SQL("unordered"),
        ]
    if spec.resolved is not None:
        options.append(sql.SQL("resolved = {}").format(sql.Literal(spec.resolved)))
    if spec.min_checkpoint_frequency is not None:
        options.append(
            sql.SQL("min_checkpoint_frequency = {}").format(
                sql.Literal(spec.min_checkpoint_frequency)
            )
        )
    return sql.SQL("CREATE CHANGEFEED FOR TABLE {} INTO {} WITH {}").format(
        sql.Identifier(*spec.table),
        sql.Literal(kafka_sink_uri(spec.sink_bootstrap, spec.topic)),
        sql.SQL(", ").join(options),
    )


def changefeed_jobs(dialect: Dialect, table: tuple[str, str] = CHANGEFEED_TABLE) -> sql.Composed:
    """The changefeed jobs on ``table``, newest first: job_id, status, running_status,
    high_water_timestamp (an HLC decimal), error, sink_uri, topics, description."""
    _require_crdb(dialect, "SHOW CHANGEFEED JOBS")
    database, name = table
    return sql.SQL(
        "SELECT job_id, status, running_status, high_water_timestamp, error, sink_uri, topics, "
        "description FROM [SHOW CHANGEFEED JOBS] WHERE {} = ANY(full_table_names) "
        "ORDER BY created DESC"
    ).format(sql.Literal(f"{database}.public.{name}"))


def is_active_job_status(status: str) -> bool:
    """Whether a changefeed job in this status still publishes (or may again, once resumed)."""
    return status in _ACTIVE_JOB_STATES


def cancel_job(dialect: Dialect, job_id: int) -> sql.Composed:
    _require_crdb(dialect, "CANCEL JOB")
    return sql.SQL("CANCEL JOB {}").format(sql.Literal(int(job_id)))


# ============================================================================================
# Roles and grants: one login role per service (workload.roles says who gets what)
# ============================================================================================
# PostgreSQL: roles are cluster-wide, grants per database; a domain is a schema, so a grant is
# USAGE on the schema plus privileges ON ALL TABLES IN SCHEMA (the tables exist: `schema
# create` grants after creating them). Logical decoding needs the REPLICATION attribute;
# ANALYZE by a non-owner needs MAINTAIN (PostgreSQL 17+).
# CockroachDB: a domain is a database: CONNECT on it plus privileges ON TABLE db.* ("GRANT",
# "CREATE ROLE ... WITH LOGIN"); CREATE CHANGEFEED needs the CHANGEFEED privilege on the
# table. An insecure cluster takes no passwords ("ALTER ROLE": setting a password is not
# supported in insecure mode), so a role gets one only when one is given.
# Passwords only ever travel as sql.Literal, never as text in the statement.

ACCESS_PRIVILEGES = {
    "read": ("SELECT",),
    "write": ("SELECT", "INSERT", "UPDATE", "DELETE"),
}


def role_exists_query(dialect: Dialect) -> sql.SQL:
    if dialect.is_cockroachdb:
        return sql.SQL("SELECT 1 FROM [SHOW ROLES] WHERE username = %s")
    return sql.SQL("SELECT 1 FROM pg_roles WHERE rolname = %s")


def _pg_major(dialect: Dialect) -> int:
    found = re.search(r"PostgreSQL (\d+)", dialect.version)
    return int(found.group(1)) if found else 0


def create_role(
    dialect: Dialect, role: str, *, exists: bool, replication: bool, password: str | None
) -> list[sql.Composed]:
    """Create the login role, or bring an existing one's attributes (and password, if given)
    up to date."""
    ident = sql.Identifier(role)
    options = [sql.SQL("LOGIN")]
    if not dialect.is_cockroachdb:
        options.append(sql.SQL("REPLICATION" if replication else "NOREPLICATION"))
    if password is not None:
        options.append(sql.SQL("PASSWORD {}").format(sql.Literal(password)))
    verb = sql.SQL("ALTER ROLE {} WITH {}" if exists else "CREATE ROLE {} WITH {}")
    return [verb.format(ident, sql.SQL(" ").join(options))]


def grant_domain(
    dialect: Dialect, domain: str, role: str, access: str | None, *, maintain: bool = False
) -> list[sql.Composed]:
    """Revoke whatever ``role`` held on ``domain``'s tables, then grant ``access`` ("read",
    "write", or None for nothing): running it again converges on exactly the wanted grants."""
    ident, who = sql.Identifier(domain), sql.Identifier(role)
    privileges = list(ACCESS_PRIVILEGES[access]) if access else []
    if dialect.is_cockroachdb:
        tables = sql.SQL("{}.*").format(ident)
        statements = [sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(tables, who)]
        if not privileges:
            return [
                *statements,
                sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(ident, who),
            ]
        return [
            *statements,
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident, who),
            sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, privileges)), tables, who
            ),
        ]
    if maintain and privileges and _pg_major(dialect) >= 17:
        privileges.append("MAINTAIN")
    statements = [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(ident, who),
        sql.SQL("{} USAGE ON SCHEMA {} {} {}").format(
            sql.SQL("GRANT" if privileges else "REVOKE"),
            ident,
            sql.SQL("TO" if privileges else "FROM"),
            who,
        ),
    ]
    if privileges:
        statements.append(
            sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, privileges)), ident, who
            )
        )
    return statements


def grant_table(
    dialect: Dialect, qualified: str, role: str, privileges: Sequence[str]
) -> list[sql.Composed]:
    """One table's privileges on top of a domain's (say, UPDATE to lock rows FOR UPDATE)."""
    return [
        sql.SQL("GRANT {} ON TABLE {} TO {}").format(
            sql.SQL(", ").join(map(sql.SQL, privileges)),
            sql.Identifier(*qualified.split(".")),
            sql.Identifier(role),
        )
    ]


def grant_changefeed(
    dialect: Dialect, role: str, table: tuple[str, str] = CHANGEFEED_TABLE
) -> list[sql.Composed]:
    """CockroachDB's CHANGEFEED privilege on the CDC source; PostgreSQL's relay needs the
    REPLICATION attribute instead (see :func:`create_role`)."""
    if not dialect.is_cockroachdb:
        return []
    return [
        sql.SQL("GRANT CHANGEFEED ON TABLE {} TO {}").format(
            sql.Identifier(*table), sql.Identifier(role)
        )
    ]


def roles_lock(dialect: Dialect) -> sql.SQL | None:
    """Serialises concurrent `schema create` runs: PostgreSQL's catalog refuses two sessions
    creating the same role at once. CockroachDB's transactions serialise on their own."""
    if dialect.is_cockroachdb:
        return None
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext('crdblab roles'))")

"""The six domains' tables, declared once in dialect-neutral SQL and rendered by the dialect.

Keys are UUIDs (random, so inserts spread over CockroachDB's ranges; no sequences). Indexes
on time-ordered columns are marked ``time_ordered`` and become hash-sharded on CockroachDB.
Foreign keys stay inside a domain: on CockroachDB each domain is a database, and
cross-database foreign keys are off by default there.

Quantities are whole shares (INT8); prices NUMERIC(18,4) as the market quotes them; average
fill prices NUMERIC(18,6) (see ``workload.fairprice`` for the rounding rule); cash
NUMERIC(20,4).
"""

from __future__ import annotations

import contextlib

import psycopg
from psycopg import sql

from workload import roles
from workload.dialect import OWNER_MARK, Dialect, Index, Table
from workload.errors import LabError

DOMAINS = ("reference", "market", "holdings", "orders", "trades", "allocations")

TABLES: tuple[Table, ...] = (
    # -- reference: what can be traded ------------------------------------------------------
    Table(
        "reference",
        "securities",
        (
            "security_id UUID NOT NULL",
            "ticker TEXT NOT NULL",
            "name TEXT NOT NULL",
            "sector TEXT NOT NULL",
            "asset_class TEXT NOT NULL",
            "currency TEXT NOT NULL DEFAULT 'USD'",
        ),
        ("security_id",),
        indexes=(Index("securities_ticker_key", ("ticker",), unique=True),),
    ),
    # -- market: daily bars, a time series ----------------------------------------------------
    Table(
        "market",
        "daily_prices",
        (
            "security_id UUID NOT NULL",
            "trade_date DATE NOT NULL",
            "open NUMERIC(18,4) NOT NULL",
            "high NUMERIC(18,4) NOT NULL",
            "low NUMERIC(18,4) NOT NULL",
            "close NUMERIC(18,4) NOT NULL",
            "volume INT8 NOT NULL",
        ),
        ("security_id", "trade_date"),
        constraints=(
            "CONSTRAINT daily_prices_range CHECK (low > 0 AND low <= open AND low <= close "
            "AND high >= open AND high >= close)",
            "CONSTRAINT daily_prices_volume CHECK (volume > 0)",
        ),
        indexes=(Index("daily_prices_trade_date_idx", ("trade_date",), time_ordered=True),),
    ),
    # -- holdings: managers, models, accounts, positions ----------------------------------------
    Table(
        "holdings",
        "managers",
        ("manager_id UUID NOT NULL", "name TEXT NOT NULL"),
        ("manager_id",),
    ),
    Table(
        "holdings",
        "models",
        ("model_id UUID NOT NULL", "manager_id UUID NOT NULL", "name TEXT NOT NULL"),
        ("model_id",),
        constraints=(
            "CONSTRAINT models_manager_fk FOREIGN KEY (manager_id) "
            "REFERENCES holdings.managers (manager_id)",
        ),
    ),
    Table(
        "holdings",
        "model_weights",
        (
            "model_id UUID NOT NULL",
            "security_id UUID NOT NULL",
            "weight NUMERIC(9,8) NOT NULL",
        ),
        ("model_id", "security_id"),
        constraints=(
            "CONSTRAINT model_weights_range CHECK (weight > 0 AND weight <= 1)",
            "CONSTRAINT model_weights_model_fk FOREIGN KEY (model_id) "
            "REFERENCES holdings.models (model_id)",
        ),
    ),
    Table(
        "holdings",
        "accounts",
        (
            "account_id UUID NOT NULL",
            "manager_id UUID NOT NULL",
            "model_id UUID NOT NULL",
            "name TEXT NOT NULL",
            "cash NUMERIC(20,4) NOT NULL",
        ),
        ("account_id",),
        constraints=(
            "CONSTRAINT accounts_cash CHECK (cash >= 0)",
            "CONSTRAINT accounts_model_fk FOREIGN KEY (model_id) "
            "REFERENCES holdings.models (model_id)",
        ),
        indexes=(Index("accounts_group_idx", ("manager_id", "model_id")),),
    ),
    Table(
        "holdings",
        "positions",
        ("account_id UUID NOT NULL", "security_id UUID NOT NULL", "quantity INT8 NOT NULL"),
        ("account_id", "security_id"),
        constraints=(
            "CONSTRAINT positions_quantity CHECK (quantity >= 0)",
            "CONSTRAINT positions_account_fk FOREIGN KEY (account_id) "
            "REFERENCES holdings.accounts (account_id)",
        ),
    ),
    # -- orders: rebalance requests, customer orders, block orders ------------------------------
    Table(
        "orders",
        "rebalance_requests",
        (
            "request_id UUID NOT NULL",
            "manager_id UUID NOT NULL",
            "model_id UUID NOT NULL",
            "trade_date DATE NOT NULL",
            # pending until its group's orders are written, in the same transaction
            "status TEXT NOT NULL DEFAULT 'pending'",
            "accounts INT8",
            "customer_orders INT8",
            "block_orders INT8",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("request_id",),
        constraints=("CONSTRAINT rebalance_requests_status CHECK (status IN ('pending', 'done'))",),
        # One request per group and day: re-running a day's rebalance creates nothing twice.
        indexes=(
            Index(
                "rebalance_requests_group_day_key",
                ("manager_id", "model_id", "trade_date"),
                unique=True,
            ),
        ),
    ),
    Table(
        "orders",
        "block_orders",
        (
            "block_order_id UUID NOT NULL",
            "request_id UUID NOT NULL",
            "security_id UUID NOT NULL",
            "side TEXT NOT NULL",
            "quantity INT8 NOT NULL",
            "account_count INT8 NOT NULL",
            "order_type TEXT NOT NULL DEFAULT 'market'",
            "destination TEXT NOT NULL DEFAULT 'XNYS'",
            "status TEXT NOT NULL DEFAULT 'open'",
            "trade_date DATE NOT NULL",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id",),
        constraints=(
            "CONSTRAINT block_orders_side CHECK (side IN ('buy', 'sell'))",
            "CONSTRAINT block_orders_quantity CHECK (quantity > 0 AND account_count > 0)",
            "CONSTRAINT block_orders_status CHECK (status IN ('open', 'filled', 'closed'))",
            "CONSTRAINT block_orders_request_fk FOREIGN KEY (request_id) "
            "REFERENCES orders.rebalance_requests (request_id)",
        ),
        # block_order_id is derived from (request, security, side) (see workload.rebalance), so
        # that triple needs no unique index of its own.
        indexes=(
            Index("block_orders_day_status_idx", ("trade_date", "status"), time_ordered=True),
        ),
    ),
    Table(
        "orders",
        "customer_orders",
        (
            "block_order_id UUID NOT NULL",
            "account_id UUID NOT NULL",
            "request_id UUID NOT NULL",
            "security_id UUID NOT NULL",
            "side TEXT NOT NULL",
            "quantity INT8 NOT NULL",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        # A block order is one (request, security, side), so (block order, account) is the
        # natural key of a customer order. Keyed so, the orders of a block are one range scan
        # for the allocation engine, and no secondary index is needed: every index costs a
        # write per order, and rebalancing writes hundreds of thousands of them. For the same
        # reason there is no foreign key to block_orders (its per-row check took a third of
        # the rebalance time at the large scale): both are written by one statement from the
        # same derivation, and `verify` checks that every customer order has its block order.
        ("block_order_id", "account_id"),
        constraints=(
            "CONSTRAINT customer_orders_side CHECK (side IN ('buy', 'sell'))",
            "CONSTRAINT customer_orders_quantity CHECK (quantity > 0)",
        ),
    ),
    # -- trades: executions against block orders, the CDC source ---------------------------
    Table(
        "trades",
        "executions",
        (
            "execution_id UUID NOT NULL",
            "block_order_id UUID NOT NULL",
            "seq INT8 NOT NULL",
            "activity TEXT NOT NULL",
            # execute: the lot; bust: the busted execution's lot; replace: the new order quantity
            "quantity INT8 NOT NULL",
            "price NUMERIC(18,4)",
            "ref_execution_id UUID",
            "order_type TEXT",
            "destination TEXT",
            "executed_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("execution_id",),
        constraints=(
            "CONSTRAINT executions_activity CHECK (activity IN ('execute', 'bust', 'replace'))",
            "CONSTRAINT executions_quantity CHECK (quantity >= 0)",
            "CONSTRAINT executions_price CHECK (price IS NULL OR price > 0)",
        ),
        indexes=(
            Index("executions_block_seq_key", ("block_order_id", "seq"), unique=True),
            Index("executions_executed_at_idx", ("executed_at",), time_ordered=True),
        ),
    ),
    # -- allocations: fills, fair-price snapshots, account allocations, the OMS outbox ----------
    Table(
        "allocations",
        "fills",
        (
            "execution_id UUID NOT NULL",
            "block_order_id UUID NOT NULL",
            "seq INT8 NOT NULL",
            "activity TEXT NOT NULL",
            "quantity INT8 NOT NULL",
            "price NUMERIC(18,4)",
            "ref_execution_id UUID",
            "order_type TEXT",
            "destination TEXT",
            "executed_at TIMESTAMPTZ NOT NULL",
            # pending: stored, waiting for the executions before it (seq order) to arrive;
            # applied: part of the block's fill state; rejected: dead-lettered with a reason.
            "status TEXT NOT NULL DEFAULT 'pending'",
            "reason TEXT",
            "busted_by UUID",
            "received_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("execution_id",),
        constraints=(
            "CONSTRAINT fills_status CHECK (status IN ('pending', 'applied', 'rejected'))",
        ),
        indexes=(Index("fills_block_seq_idx", ("block_order_id", "seq")),),
    ),
    Table(
        "allocations",
        "block_fills",
        (
            "block_order_id UUID NOT NULL",
            "order_quantity INT8 NOT NULL",
            "order_type TEXT",
            "destination TEXT",
            "filled_quantity INT8 NOT NULL",
            "notional NUMERIC(24,4) NOT NULL",
            "avg_price NUMERIC(18,6)",
            # every fill with seq <= applied_seq is applied or rejected: the state is the
            # contiguous prefix of the block's executions, whatever order they arrived in
            "applied_seq INT8 NOT NULL",
            "executions_applied INT8 NOT NULL",
            "since_snapshot INT8 NOT NULL",
            "snapshot_seq INT8 NOT NULL",
            "status TEXT NOT NULL",
            "updated_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id",),
        constraints=(
            "CONSTRAINT block_fills_bounds CHECK "
            "(filled_quantity >= 0 AND filled_quantity <= order_quantity)",
            "CONSTRAINT block_fills_status CHECK (status IN ('open', 'complete'))",
        ),
    ),
    Table(
        "allocations",
        "snapshots",
        (
            "block_order_id UUID NOT NULL",
            "snapshot_seq INT8 NOT NULL",
            "filled_quantity INT8 NOT NULL",
            "avg_price NUMERIC(18,6)",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id", "snapshot_seq"),
    ),
    Table(
        "allocations",
        "account_allocations",
        (
            "block_order_id UUID NOT NULL",
            "account_id UUID NOT NULL",
            "quantity INT8 NOT NULL",
            "price NUMERIC(18,6)",
            "snapshot_seq INT8 NOT NULL",
        ),
        ("block_order_id", "account_id"),
        constraints=("CONSTRAINT account_allocations_quantity CHECK (quantity >= 0)",),
    ),
    Table(
        "allocations",
        "oms_outbox",
        (
            "block_order_id UUID NOT NULL",
            "snapshot_seq INT8 NOT NULL",
            "filled_quantity INT8 NOT NULL",
            "avg_price NUMERIC(18,6)",
            "status TEXT NOT NULL",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id",),
        indexes=(Index("oms_outbox_created_idx", ("created_at",), time_ordered=True),),
    ),
    # -- booking (phase iii): the OMS books the outbox into holdings, settles to the back office
    # In the allocations domain rather than holdings: every row here is keyed by a block order
    # and an account exactly as account_allocations is, verify compares them row for row, and
    # a domain is a database on CockroachDB, so they stay together. No foreign key points at
    # the allocation tables, so those can still be truncated on their own. See workload.booking.
    Table(
        "allocations",
        "block_bookings",
        (
            "block_order_id UUID NOT NULL",
            "request_id UUID",  # NULL only if the block order itself is gone
            "snapshot_seq INT8 NOT NULL",
            # booked: every final allocation is booked or dead-lettered; waiting: some buys
            # wait for their request's sells to bring the cash, retried at retry_at
            "status TEXT NOT NULL",
            "attempts INT8 NOT NULL",
            "booked INT8 NOT NULL",
            "dead_letters INT8 NOT NULL",
            "waiting INT8 NOT NULL",
            "retry_at TIMESTAMPTZ",
            "updated_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id",),
        constraints=("CONSTRAINT block_bookings_status CHECK (status IN ('booked', 'waiting'))",),
        indexes=(
            Index("block_bookings_due_idx", ("status", "retry_at")),
            Index("block_bookings_request_idx", ("request_id", "status")),
        ),
    ),
    Table(
        "allocations",
        "bookings",
        (
            "block_order_id UUID NOT NULL",
            "account_id UUID NOT NULL",
            # the account's n-th booking: orders the before/after chain verify walks
            "account_seq INT8 NOT NULL",
            "snapshot_seq INT8 NOT NULL",
            "security_id UUID NOT NULL",
            "side TEXT NOT NULL",
            "quantity INT8 NOT NULL",
            "price NUMERIC(18,6) NOT NULL",
            "amount NUMERIC(24,6) NOT NULL",  # quantity x price, exact
            "cash_amount NUMERIC(22,4) NOT NULL",  # amount rounded half-even to 4 places
            "fee NUMERIC(20,4) NOT NULL",
            "cash_before NUMERIC(20,4) NOT NULL",
            "cash_after NUMERIC(20,4) NOT NULL",
            "position_before INT8 NOT NULL",
            "position_after INT8 NOT NULL",
            "booked_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id", "account_id"),
        constraints=(
            "CONSTRAINT bookings_side CHECK (side IN ('buy', 'sell'))",
            "CONSTRAINT bookings_quantity CHECK (quantity > 0 AND fee >= 0)",
        ),
        # Unique: two bookings of one account that read the same balance would both claim
        # the same place in its chain, and the second would fail instead of losing an update.
        indexes=(Index("bookings_account_seq_key", ("account_id", "account_seq"), unique=True),),
    ),
    Table(
        "allocations",
        "settlements",
        (
            "settlement_id UUID NOT NULL",
            "block_order_id UUID NOT NULL",
            "account_id UUID NOT NULL",
            "security_id UUID NOT NULL",
            "side TEXT NOT NULL",
            "quantity INT8 NOT NULL",
            "price NUMERIC(18,6) NOT NULL",
            "gross_amount NUMERIC(24,6) NOT NULL",
            "cash_amount NUMERIC(22,4) NOT NULL",
            "fee NUMERIC(20,4) NOT NULL",
            "net_amount NUMERIC(22,4) NOT NULL",  # the account's cash change, signed
            "trade_date DATE NOT NULL",
            "settle_date DATE NOT NULL",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
            # NULL until the broker acknowledged the instruction: the relay's to-do list
            "published_at TIMESTAMPTZ",
        ),
        ("settlement_id",),
        constraints=(
            "CONSTRAINT settlements_booking_fk FOREIGN KEY (block_order_id, account_id) "
            "REFERENCES allocations.bookings (block_order_id, account_id)",
        ),
        # One settlement per booking needs no index of its own: the id is derived from the
        # booking's key (workload.booking.settlement.settlement_id).
        indexes=(
            Index("settlements_unpublished_idx", ("published_at", "created_at"), time_ordered=True),
        ),
    ),
    Table(
        "allocations",
        "booking_dead_letters",
        (
            "block_order_id UUID NOT NULL",
            "account_id UUID NOT NULL",
            "snapshot_seq INT8 NOT NULL",
            "security_id UUID",
            "side TEXT",
            "quantity INT8 NOT NULL",
            "price NUMERIC(18,6)",
            "reason TEXT NOT NULL",
            "detail TEXT NOT NULL",
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
        ),
        ("block_order_id", "account_id"),
    ),
    # -- end of booking ---------------------------------------------------------------------------
)


def table(qualified: str) -> Table:
    for t in TABLES:
        if t.qualified == qualified:
            return t
    raise KeyError(qualified)


def render_create(dialect: Dialect) -> list:
    """Every statement of ``schema create``, in order (domains first, then tables)."""
    statements: list = []
    for domain in DOMAINS:
        statements.extend(dialect.create_domain(domain))
    for t in TABLES:
        statements.extend(dialect.create_table(t))
    return statements


def foreign_domains(conn: psycopg.Connection, dialect: Dialect) -> list[str]:
    """Domains that exist but were not created by the kit (no owner mark): never touched."""
    rows = conn.execute(dialect.domain_owner_query(), (list(DOMAINS),)).fetchall()
    return sorted(name for name, comment in rows if comment != OWNER_MARK)


def existing_domains(conn: psycopg.Connection, dialect: Dialect) -> list[str]:
    rows = conn.execute(dialect.domain_owner_query(), (list(DOMAINS),)).fetchall()
    return sorted(name for name, comment in rows if comment == OWNER_MARK)


def _refuse_foreign(conn: psycopg.Connection, dialect: Dialect) -> None:
    foreign = foreign_domains(conn, dialect)
    if foreign:
        kind = "database" if dialect.is_cockroachdb else "schema"
        raise LabError(
            f"{kind}(s) {', '.join(foreign)} already exist but were not created by this kit; "
            f"point the kit at another database (--dsn) or remove them yourself"
        )


def create(conn: psycopg.Connection, dialect: Dialect, *, service_roles: bool = True) -> int:
    """Create every domain and table that is missing, then (unless ``service_roles`` is off)
    the services' roles and their grants (``workload.roles``); returns how many table
    statements ran."""
    _refuse_foreign(conn, dialect)
    statements = render_create(dialect)
    with conn.transaction() if dialect.transactional_ddl else contextlib.nullcontext():
        for statement in statements:
            conn.execute(statement)
    if service_roles:
        roles.ensure(conn, dialect)
    return len(statements)


def drop(conn: psycopg.Connection, dialect: Dialect) -> list[str]:
    """Drop the kit's domains (and nothing else); returns the dropped domain names."""
    dropped = existing_domains(conn, dialect)
    for domain in dropped:
        conn.execute(dialect.drop_domain(domain))
    return dropped


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows per table of the kit (exact counts: this is for summaries and tests)."""
    counts = {}
    for t in TABLES:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(t.domain), sql.Identifier(t.name)
        )
        counts[t.qualified] = conn.execute(query).fetchone()[0]
    return counts

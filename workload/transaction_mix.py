"""The domain transactions a load test runs straight against the database, one at a time.

Three small transactions, each what one request of an order-management system would do:

- :func:`allocate_one_execution`: pick an execution that has no fill yet and allocate it with
  :class:`workload.allocate.store.AllocationStore`, the engine the consumers use;
- :func:`rebalance_one_account`: phase i for a single account (see below);
- :func:`read_positions`: an account's positions, a follower read on CockroachDB (bounded
  staleness, served by the nearest replica) and a plain read on PostgreSQL.

Rebalancing one account
-----------------------
The order lines come from the very CTEs of :data:`workload.rebalance.REBALANCE_GROUP` (value at
the open, drift band, target quantities, buys scaled to the cash), with the group's account
filter narrowed to one account, so both paths follow the same rules by construction. Only the
writing differs, because a group writes its block orders once while accounts arrive one by one:

- the account's customer orders join its group's request of the day (the same derived ids as
  the group path); a customer order that exists is left alone, so an account is never ordered
  twice;
- each new customer order adds its quantity (and one account) to its block order, created if
  missing, so a block order always equals the sum of its customer orders;
- a line whose block order the market already trades (no longer open, or with executions) is
  left out: a block order's quantity never changes under the market;
- the request is marked done: its orders are written account by account from then on, and
  ``python -m workload rebalance`` leaves it alone instead of writing them a second time.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg import sql

from workload.allocate.store import AllocationStore, BatchOutcome
from workload.db import RetryStats, run_transaction
from workload.dialect import Dialect
from workload.envelope import Execution
from workload.rebalance import REBALANCE_GROUP, RebalanceOptions


def _order_lines_for_one_account() -> str:
    """REBALANCE_GROUP's CTEs up to ``final`` (the priced order lines), for one account."""
    group_filter = "WHERE manager_id = %(manager)s AND model_id = %(model)s"
    writes_begin = "), blocks AS ("
    for marker in (group_filter, writes_begin):
        if REBALANCE_GROUP.count(marker) != 1:
            # Loud at import: a silent mismatch would rebalance the whole group per account.
            raise RuntimeError(f"workload.rebalance.REBALANCE_GROUP no longer has {marker!r}")
    lines = REBALANCE_GROUP[: REBALANCE_GROUP.index(writes_begin)]
    return lines.replace(group_filter, "WHERE account_id = %(account)s")


# What follows the order lines: writing them one account at a time (module doc).
ACCOUNT_WRITES = """), trading AS (
    SELECT b.block_order_id FROM orders.block_orders AS b
     WHERE b.block_order_id IN (SELECT block_order_id FROM final)
       AND (b.status <> 'open' OR EXISTS (
            SELECT 1 FROM trades.executions AS e WHERE e.block_order_id = b.block_order_id))
), customers AS (
    INSERT INTO orders.customer_orders
        (block_order_id, account_id, request_id, security_id, side, quantity)
    SELECT block_order_id, account_id, %(request)s, security_id, side, quantity
      FROM final
     WHERE block_order_id NOT IN (SELECT block_order_id FROM trading)
    ON CONFLICT (block_order_id, account_id) DO NOTHING
    RETURNING block_order_id, security_id, side, quantity
), blocks AS (
    INSERT INTO orders.block_orders AS b
        (block_order_id, request_id, security_id, side, quantity, account_count, trade_date)
    SELECT block_order_id, %(request)s, security_id, side, sum(quantity), count(*), %(day)s
      FROM customers GROUP BY block_order_id, security_id, side
    ON CONFLICT (block_order_id) DO UPDATE
       SET quantity = b.quantity + excluded.quantity,
           account_count = b.account_count + excluded.account_count
    RETURNING b.block_order_id, b.account_count
)
SELECT (SELECT count(*) FROM customers),
       (SELECT count(*) FROM blocks AS w
         WHERE w.account_count = (SELECT count(*) FROM customers AS c
                                   WHERE c.block_order_id = w.block_order_id))
"""
REBALANCE_ACCOUNT = _order_lines_for_one_account() + ACCOUNT_WRITES

# The group path's request id (md5 of manager, model and day), created done if missing.
OPEN_REQUEST = """
INSERT INTO orders.rebalance_requests
    (request_id, manager_id, model_id, trade_date, status, accounts, customer_orders,
     block_orders)
VALUES (md5(%(manager)s::text || ':' || %(model)s::text || ':' || %(day)s::text)::uuid,
        %(manager)s, %(model)s, %(day)s, 'done', 0, 0, 0)
ON CONFLICT DO NOTHING
"""

REQUEST_ID = "SELECT md5(%(manager)s::text || ':' || %(model)s::text || ':' || %(day)s::text)::uuid"

COUNT_REQUEST = """
UPDATE orders.rebalance_requests
   SET status = 'done',
       accounts = coalesce(accounts, 0) + %(accounts)s,
       customer_orders = coalesce(customer_orders, 0) + %(customers)s,
       block_orders = coalesce(block_orders, 0) + %(blocks)s
 WHERE request_id = %(request)s
"""

ACCOUNTS = "SELECT account_id, manager_id, model_id FROM holdings.accounts ORDER BY account_id"

EXECUTION_COLUMNS = ", ".join(
    f"e.{column}"
    for column in (
        "execution_id", "block_order_id", "seq", "activity", "quantity", "price",
        "ref_execution_id", "order_type", "destination", "executed_at",
    )
)  # fmt: skip
# The next execution to allocate: the one after the last applied of the first block order
# (from a random point in id order) that has one. It has no fill yet (fills are applied in seq
# order, and a rejected one still advances the block's applied seq), and allocating in seq
# order applies it at once instead of parking it behind a gap. Block orders are scanned, not
# executions: a block order has tens of executions, so late in a run the scan stays short.
NEXT_TO_ALLOCATE = f"""
SELECT {EXECUTION_COLUMNS} FROM trades.executions AS e
  JOIN (SELECT b.block_order_id, coalesce(s.applied_seq, 0) AS applied_seq
          FROM orders.block_orders AS b
          LEFT JOIN allocations.block_fills AS s USING (block_order_id)
         WHERE b.block_order_id >= %(start)s
           AND EXISTS (SELECT 1 FROM trades.executions AS x
                        WHERE x.block_order_id = b.block_order_id
                          AND x.seq > coalesce(s.applied_seq, 0))
         ORDER BY b.block_order_id LIMIT 1) AS next USING (block_order_id)
 WHERE e.seq = next.applied_seq + 1
"""  # noqa: S608 (the columns are a constant)


GROUP_DEFAULTS = RebalanceOptions()


@dataclass(frozen=True)
class Account:
    account_id: uuid.UUID
    manager_id: uuid.UUID
    model_id: uuid.UUID


@dataclass(frozen=True)
class AccountRebalance:
    customer_orders: int  # written by this transaction
    new_block_orders: int


def load_accounts(conn: psycopg.Connection) -> list[Account]:
    """Every account with its group: what the transactions pick from at random."""
    return [Account(*row) for row in conn.execute(ACCOUNTS).fetchall()]


def _random_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128))


def allocate_one_execution(
    conn: psycopg.Connection,
    store: AllocationStore,
    rng: random.Random,
    stats: RetryStats | None = None,
) -> BatchOutcome | None:
    """Allocate one execution that has no fill yet; None when every execution has one."""

    def work(c: psycopg.Connection) -> BatchOutcome | None:
        row = None
        for start in (_random_uuid(rng), uuid.UUID(int=0)):  # from a random point, then wrap
            row = c.execute(NEXT_TO_ALLOCATE, {"start": start}).fetchone()
            if row is not None:
                break
        if row is None:
            return None
        return store.apply(c, [Execution(*row)])

    return run_transaction(conn, work, stats=stats)


def rebalance_one_account(
    conn: psycopg.Connection,
    account: Account,
    day: date,
    options: RebalanceOptions = GROUP_DEFAULTS,
    stats: RetryStats | None = None,
) -> AccountRebalance:
    """The account's orders for ``day`` (module doc), in one transaction; ``options`` are
    the group path's (tolerance, cash buffer; its date and workers do not apply)."""
    params = {
        "account": account.account_id,
        "manager": account.manager_id,
        "model": account.model_id,
        "day": day,
        "tolerance": options.tolerance,
        "buffer": options.cash_buffer,
    }

    def work(c: psycopg.Connection) -> AccountRebalance:
        c.execute(OPEN_REQUEST, params)
        (request,) = c.execute(REQUEST_ID, params).fetchone()
        customers, blocks = c.execute(REBALANCE_ACCOUNT, {**params, "request": request}).fetchone()
        if customers:
            c.execute(
                COUNT_REQUEST,
                {"request": request, "accounts": 1, "customers": customers, "blocks": blocks},
            )
        return AccountRebalance(customers, blocks)

    return run_transaction(conn, work, stats=stats)


def positions_query(dialect: Dialect) -> sql.Composed:
    return sql.SQL(
        "SELECT security_id, quantity FROM holdings.positions{} WHERE account_id = %s"
    ).format(dialect.stale_read())


def read_positions(conn: psycopg.Connection, dialect: Dialect, account: Account) -> int:
    """The account's positions; returns how many. A single statement on an autocommit
    connection: CockroachDB takes ``AS OF SYSTEM TIME`` only on a statement of its own (or on
    a transaction begun with it), and a read in the past never conflicts, so there is nothing
    for the retry helper to retry."""
    return len(conn.execute(positions_query(dialect), (account.account_id,)).fetchall())

"""The transactions user's domain transactions, against the real embedded PostgreSQL."""

import random
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.allocation_fixtures import reset_allocations, traded_dsn
from workload import schema, seed
from workload.allocate.store import AllocationStore
from workload.dialect import COCKROACHDB, Dialect, detect
from workload.rebalance import rebalance, trading_day
from workload.trade import TradeOptions, run_bulk
from workload.transaction_mix import (
    REBALANCE_ACCOUNT,
    allocate_one_execution,
    load_accounts,
    positions_query,
    read_positions,
    rebalance_one_account,
)
from workload.verify import run_checks

pytestmark = pytest.mark.integration
__all__ = ["traded_dsn"]

CUSTOMER_ORDERS = (
    "SELECT block_order_id, account_id, request_id, security_id, side, quantity "
    "FROM orders.customer_orders ORDER BY block_order_id, account_id"
)
BLOCK_ORDERS = (
    "SELECT block_order_id, request_id, security_id, side, quantity, account_count, trade_date, "
    "status FROM orders.block_orders ORDER BY block_order_id"
)
REQUESTS = (
    "SELECT request_id, status, customer_orders, block_orders FROM orders.rebalance_requests "
    "ORDER BY request_id"
)


ORDER_CHECKS = ("customer_orders_sum_to_block", "customer_orders_have_block")


def failed_checks(dsn, only=None):
    with psycopg.connect(dsn) as conn:
        results = run_checks(conn)
    return [
        (r.check.name, r.examples[:3])
        for r in results
        if not r.passed and (only is None or r.check.name in only)
    ]


def seeded(new_database) -> str:
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn))
        seed.seed(conn, seed.scale_for("small"), 7)
    return dsn


def rows(dsn, query):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_one_account_at_a_time_writes_what_the_group_statement_writes(new_database):
    by_group, by_account = seeded(new_database), seeded(new_database)
    rebalance(by_group)
    with psycopg.connect(by_account, autocommit=True) as conn:
        day = trading_day(conn, None)
        accounts = load_accounts(conn)
        random.Random(3).shuffle(accounts)  # the order accounts arrive in must not matter
        written = [rebalance_one_account(conn, a, day) for a in accounts]
    assert sum(w.customer_orders for w in written) > 0
    for query in (CUSTOMER_ORDERS, BLOCK_ORDERS, REQUESTS):
        assert rows(by_account, query) == rows(by_group, query)
    assert failed_checks(by_account) == []


def test_an_account_is_never_ordered_twice(new_database):
    dsn = seeded(new_database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        day = trading_day(conn, None)
        accounts = load_accounts(conn)[:30]
        first = [rebalance_one_account(conn, a, day) for a in accounts]
        before = rows(dsn, CUSTOMER_ORDERS), rows(dsn, BLOCK_ORDERS)
        again = [rebalance_one_account(conn, a, day) for a in accounts]
    assert sum(w.customer_orders for w in first) > 0
    assert sum(w.customer_orders + w.new_block_orders for w in again) == 0
    assert (rows(dsn, CUSTOMER_ORDERS), rows(dsn, BLOCK_ORDERS)) == before


def test_a_group_done_by_the_group_statement_gets_nothing_more(new_database):
    dsn = seeded(new_database)
    rebalance(dsn)
    before = rows(dsn, CUSTOMER_ORDERS), rows(dsn, BLOCK_ORDERS), rows(dsn, REQUESTS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        day = trading_day(conn, None)
        written = [rebalance_one_account(conn, a, day) for a in load_accounts(conn)]
    assert sum(w.customer_orders for w in written) == 0
    assert (rows(dsn, CUSTOMER_ORDERS), rows(dsn, BLOCK_ORDERS), rows(dsn, REQUESTS)) == before


def test_block_orders_the_market_trades_are_left_alone(new_database):
    """A block order with executions keeps its quantity: the market sized its fills by it."""
    dsn = seeded(new_database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        day = trading_day(conn, None)
        accounts = load_accounts(conn)
        half = len(accounts) // 2
        for account in accounts[:half]:
            rebalance_one_account(conn, account, day)
        run_bulk(conn, TradeOptions(seed=5))  # every block order so far is traded
        traded = rows(dsn, BLOCK_ORDERS)
        for account in accounts[half:]:
            rebalance_one_account(conn, account, day)
    after = {row[0]: row for row in rows(dsn, BLOCK_ORDERS)}
    assert all(after[row[0]] == row for row in traded)
    assert failed_checks(dsn, only=ORDER_CHECKS) == []


def test_concurrent_accounts_of_one_group_add_up(new_database):
    dsn = seeded(new_database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        day = trading_day(conn, None)
        accounts = load_accounts(conn)

    def work(chunk):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for account in chunk:
                rebalance_one_account(conn, account, day)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, [accounts[i::4] for i in range(4)]))
    reference = seeded(new_database)
    rebalance(reference)
    assert rows(dsn, CUSTOMER_ORDERS) == rows(reference, CUSTOMER_ORDERS)
    assert rows(dsn, BLOCK_ORDERS) == rows(reference, BLOCK_ORDERS)


def test_the_statement_keeps_the_group_rules_of_rebalance():
    # Built from REBALANCE_GROUP's CTEs: the valuation and drift band are the group's.
    assert "WHERE account_id = %(account)s" in REBALANCE_ACCOUNT
    assert "%(tolerance)s" in REBALANCE_ACCOUNT and "available / b.cost" in REBALANCE_ACCOUNT
    assert "manager_id = %(manager)s AND model_id" not in REBALANCE_ACCOUNT


def test_allocating_one_execution_at_a_time_allocates_everything_once(traded_dsn):
    reset_allocations(traded_dsn)
    with psycopg.connect(traded_dsn, autocommit=True) as conn:
        # A few block orders with busts, with replaces and with neither keep it short.
        conn.execute(
            "WITH kinds AS (SELECT block_order_id, bool_or(activity = 'bust') AS bust, "
            "bool_or(activity = 'replace') AS replace FROM trades.executions GROUP BY 1), "
            "keep AS ((SELECT block_order_id FROM kinds WHERE bust ORDER BY 1 LIMIT 3) UNION "
            "(SELECT block_order_id FROM kinds WHERE replace ORDER BY 1 LIMIT 3) UNION "
            "(SELECT block_order_id FROM kinds WHERE NOT bust AND NOT replace ORDER BY 1 "
            "LIMIT 3)) "
            "DELETE FROM trades.executions WHERE block_order_id NOT IN (SELECT * FROM keep)"
        )
        total, busts, replaces = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE activity = 'bust'), "
            "count(*) FILTER (WHERE activity = 'replace') FROM trades.executions"
        ).fetchone()
        assert busts and replaces
        store, rng = AllocationStore(detect(conn)), random.Random(1)
        applied, transactions = 0, 0
        while (outcome := allocate_one_execution(conn, store, rng)) is not None:
            applied += len(outcome.applied)
            transactions += 1
    assert applied == total == transactions  # each one applied at once: never behind a gap
    assert failed_checks(traded_dsn) == []


def test_positions_read_is_a_follower_read_only_on_cockroachdb(seeded_dsn):
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        dialect = detect(conn)
        account = load_accounts(conn)[0]
        (held,) = conn.execute(
            "SELECT count(*) FROM holdings.positions WHERE account_id = %s", (account.account_id,)
        ).fetchone()
        assert read_positions(conn, dialect, account) == held
        assert "AS OF SYSTEM TIME" not in positions_query(dialect).as_string(conn)
        crdb = positions_query(Dialect(COCKROACHDB)).as_string(conn)
    assert "holdings.positions AS OF SYSTEM TIME follower_read_timestamp() WHERE" in crdb

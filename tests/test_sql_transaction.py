"""The SQL anchor of "allocate one execution" against the Python engine, on the real server."""

import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.allocation_fixtures import EXECUTION_QUERY, reset_allocations, state_digest
from tests.test_locust_runs import request_stats, run_locust
from workload.allocate import sql_transaction
from workload.allocate.store import AllocationStore
from workload.db import run_transaction
from workload.dialect import detect
from workload.envelope import Execution
from workload.fairprice import BlockFill
from workload.rebalance import rebalance
from workload.trade import TradeOptions, run_bulk
from workload.verify import run_checks

pytestmark = pytest.mark.integration


@pytest.fixture
def execute_only_dsn(seeded_dsn) -> str:
    """Small scale, rebalanced and traded with executes only (no busts, no replaces)."""
    rebalance(seeded_dsn)
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        run_bulk(conn, TradeOptions(seed=11, bust_rate=0, replace_rate=0))
        # A quarter of the block orders keep it short; whole ones, so every block completes.
        conn.execute(
            "DELETE FROM trades.executions WHERE block_order_id NOT IN (SELECT block_order_id "
            "FROM orders.block_orders WHERE mod(get_byte(uuid_send(block_order_id), 0), 4) = 0)"
        )
        sql_transaction.create_queue(conn)
    return seeded_dsn


def failed_checks(dsn):
    with psycopg.connect(dsn) as conn:
        return [(r.check.name, r.examples[:3]) for r in run_checks(conn) if not r.passed]


def allocate_with_the_store(dsn) -> tuple:
    """The Python engine's end state (``state_digest`` does not depend on the batching)."""
    reset_allocations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        store = AllocationStore(detect(conn))
        executions = [Execution(*row) for row in conn.execute(EXECUTION_QUERY).fetchall()]
        for first in range(0, len(executions), 50):
            batch = executions[first : first + 50]
            run_transaction(conn, lambda c, batch=batch: store.apply(c, batch))
    assert failed_checks(dsn) == []
    return state_digest(dsn)


def allocate_with_sql(dsn, threads: int) -> int:
    def work(_):
        transactions = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while sql_transaction.allocate_next(conn) is not None:
                transactions += 1
        return transactions

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(work, range(threads)))


def refill(dsn) -> int:
    reset_allocations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sql_transaction.fill_queue(conn)


def test_psycopg_threads_and_pgbench_both_end_where_the_engine_does(execute_only_dsn):
    expected = allocate_with_the_store(execute_only_dsn)

    queued = refill(execute_only_dsn)
    assert queued > 200
    assert allocate_with_sql(execute_only_dsn, threads=4) == queued
    assert failed_checks(execute_only_dsn) == []
    assert state_digest(execute_only_dsn) == expected
    with psycopg.connect(execute_only_dsn) as conn:
        pending, snapshots = conn.execute(
            "SELECT count(*) FILTER (WHERE status <> 'applied'), "
            "(SELECT count(*) FROM allocations.snapshots) FROM allocations.fills"
        ).fetchone()
    assert pending == 0 and snapshots > 0

    # The rendered script under the real pgbench, then the remainder through psycopg: the
    # same queue goes on where pgbench stopped.
    queued = refill(execute_only_dsn)
    script = sql_transaction.pgbench_script()
    assert "\\gset" in script and ":execution_id::uuid" in script and "%(" not in script
    clients = 3
    done = subprocess.run(
        [str(sql_transaction.pgbench_binary()), "-n", "-M", "prepared", "-c", str(clients),
         "-j", "2", "-t", str(queued // clients), "-f", "/dev/stdin", execute_only_dsn],
        input=script, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    processed = queued // clients * clients
    assert f"number of transactions actually processed: {processed}" in done.stdout
    assert allocate_with_sql(execute_only_dsn, threads=1) == queued % clients
    assert failed_checks(execute_only_dsn) == []
    assert state_digest(execute_only_dsn) == expected


def test_a_later_seq_first_waits_and_the_gap_closing_one_applies_both(execute_only_dsn):
    refill(execute_only_dsn)
    with psycopg.connect(execute_only_dsn, autocommit=True) as conn:
        block, first, second = conn.execute(
            "SELECT block_order_id, min(execution_id::text) FILTER (WHERE seq = 1), "
            "min(execution_id::text) FILTER (WHERE seq = 2) FROM trades.executions "
            "GROUP BY block_order_id HAVING count(*) >= 2 ORDER BY 1 LIMIT 1"
        ).fetchone()
        with conn.transaction():
            assert sql_transaction.allocate_claimed(conn, second, block) == 0
        with conn.transaction():
            assert sql_transaction.allocate_claimed(conn, first, block) == 2
        applied_seq, executions = conn.execute(
            "SELECT applied_seq, executions_applied FROM allocations.block_fills "
            "WHERE block_order_id = %s",
            (block,),
        ).fetchone()
    assert (applied_seq, executions) == (2, 2)


def test_locust_sql_users_allocate_the_queue_once_and_stop(execute_only_dsn, tmp_path):
    expected = allocate_with_the_store(execute_only_dsn)
    queued = refill(execute_only_dsn)
    log = tmp_path / "locust.log"
    code = run_locust(
        "sql_allocation.py", "--headless", "-u", "3", "-r", "100", "--run-time", "120s",
        "--pool-size", "3", "--skip-verify", "--dsn", execute_only_dsn,
        "--run-dir", str(tmp_path / ".lab"), "--results-dir", str(tmp_path / "results"),
        "--json-file", str(tmp_path / "stats"), "SqlAllocationUser",
        log=log, timeout=150,
    )  # fmt: skip
    assert code == 0, log.read_text()[-3000:]
    stats = request_stats(tmp_path / "stats")[("transaction", "allocate one execution (SQL)")]
    assert stats["num_failures"] == 0
    assert stats["num_requests"] >= queued  # and one empty claim per user at the end
    assert failed_checks(execute_only_dsn) == []
    assert state_digest(execute_only_dsn) == expected


def test_an_empty_queue_allocates_nothing(execute_only_dsn):
    reset_allocations(execute_only_dsn)
    with psycopg.connect(execute_only_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE bench.queue")
        assert sql_transaction.allocate_next(conn) is None
        sql_transaction.drop_queue(conn)
        assert conn.execute("SELECT to_regclass('bench.queue')").fetchone()[0] is None


TRUNCATE_ALL = (
    "TRUNCATE allocations.fills, allocations.block_fills, allocations.snapshots, "
    "allocations.account_allocations, allocations.oms_outbox, trades.executions, "
    "orders.customer_orders, orders.block_orders, orders.rebalance_requests"
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    accounts=st.lists(
        st.tuples(st.uuids(), st.integers(1, 400)), min_size=1, max_size=7, unique_by=lambda a: a[0]
    ),
    data=st.data(),
)
def test_every_snapshot_is_the_one_fairprice_computes(schema_dsn, accounts, data):
    """Half-even average price and largest remainder (ties to the ascending account id), in
    SQL, against workload.fairprice after every execution of one block order."""
    ordered = dict(accounts)
    if data.draw(st.booleans()):  # equal orders: every remainder ties
        ordered = dict.fromkeys(ordered, ordered[accounts[0][0]])
    total = sum(ordered.values())
    lots, left = [], total
    while left and len(lots) < 6:
        lot = data.draw(st.integers(1, left))
        lots.append((lot, data.draw(st.integers(1, 10**7))))  # price in 10^-4 units
        left -= lot
    block, request, security = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fill = BlockFill.open(block, ordered, "market", "XNYS")
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        conn.execute(TRUNCATE_ALL)
        conn.execute(
            "INSERT INTO orders.rebalance_requests (request_id, manager_id, model_id, "
            "trade_date) VALUES (%s, %s, %s, '2026-01-02')",
            (request, uuid.uuid4(), uuid.uuid4()),
        )
        conn.execute(
            "INSERT INTO orders.block_orders (block_order_id, request_id, security_id, side, "
            "quantity, account_count, trade_date) VALUES (%s, %s, %s, 'buy', %s, %s, "
            "'2026-01-02')",
            (block, request, security, total, len(ordered)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orders.customer_orders (block_order_id, account_id, request_id, "
                "security_id, side, quantity) VALUES (%s, %s, %s, %s, 'buy', %s)",
                [(block, a, request, security, q) for a, q in ordered.items()],
            )
        for seq, (quantity, units) in enumerate(lots, 1):
            execution = Execution(uuid.uuid4(), block, seq, "execute", quantity,
                                  Decimal(units).scaleb(-4), None, None, None,
                                  datetime.now(UTC))  # fmt: skip
            conn.execute(
                "INSERT INTO trades.executions (execution_id, block_order_id, seq, activity, "
                "quantity, price) VALUES (%s, %s, %s, 'execute', %s, %s)",
                (execution.execution_id, block, seq, quantity, execution.price),
            )
            with conn.transaction():
                assert sql_transaction.allocate_claimed(conn, execution.execution_id, block) == 1
            fill = fill.apply(execution).fill
            snapshot = fill.snapshot()
            allocated = dict(
                conn.execute(
                    "SELECT account_id, quantity FROM allocations.account_allocations"
                ).fetchall()
            )
            prices = conn.execute(
                "SELECT DISTINCT a.price, s.avg_price FROM allocations.account_allocations a "
                "JOIN allocations.block_fills s USING (block_order_id)"
            ).fetchall()
            assert allocated == snapshot.allocations
            assert prices == [(snapshot.avg_price, snapshot.avg_price)]
        outbox = conn.execute("SELECT count(*) FROM allocations.oms_outbox").fetchone()[0]
    assert outbox == (1 if fill.complete else 0)

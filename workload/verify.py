"""Invariants across the domains, checked in SQL against whatever the run left behind.

Each check is a query returning one row per violation (at most ``LIMIT`` shown, all
counted). ``verify`` passes when every check returns nothing. The rounding rule being checked:
every account of a block order is allocated at exactly the last snapshot's average price,
``sum(quantity x price) / filled`` over the net executions, rounded half-even to 6 places
(``workload.fairprice``); quantities are whole shares apportioned by largest remainder.

Other phases add their checks by appending :class:`Check` objects to :data:`CHECKS` from
their own module (see ``workload.booking``), imported by :func:`all_checks`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import psycopg

LIMIT = 20


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    query: str  # rows are violations; the first column names the offending object


@dataclass
class CheckResult:
    check: Check
    count: int
    examples: list[tuple] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.count == 0


CHECKS: list[Check] = [
    Check(
        "customer_orders_sum_to_block",
        "every block order's quantity and account count equal its customer orders'",
        """SELECT b.block_order_id, b.quantity, coalesce(sum(c.quantity), 0), b.account_count,
                  count(c.account_id)
             FROM orders.block_orders b
             LEFT JOIN orders.customer_orders c USING (block_order_id)
            GROUP BY b.block_order_id, b.quantity, b.account_count
           HAVING b.quantity <> coalesce(sum(c.quantity), 0)
               OR b.account_count <> count(c.account_id)""",
    ),
    Check(
        "customer_orders_have_block",
        "every customer order belongs to an existing block order",
        """SELECT c.block_order_id, c.account_id FROM orders.customer_orders c
             LEFT JOIN orders.block_orders b USING (block_order_id)
            WHERE b.block_order_id IS NULL""",
    ),
    Check(
        "execution_has_one_fill",
        "every execution was captured as exactly one fill (none lost)",
        """SELECT e.execution_id, e.block_order_id, e.seq FROM trades.executions e
             LEFT JOIN allocations.fills f USING (execution_id)
            WHERE f.execution_id IS NULL""",
    ),
    Check(
        "fill_has_execution",
        "every fill is an execution of the trades domain (nothing invented)",
        """SELECT f.execution_id, f.block_order_id FROM allocations.fills f
             LEFT JOIN trades.executions e USING (execution_id)
            WHERE e.execution_id IS NULL""",
    ),
    Check(
        "no_fill_left_pending",
        "no fill waits for an execution that never came (every seq gap closed)",
        """SELECT execution_id, block_order_id, seq FROM allocations.fills
            WHERE status = 'pending'""",
    ),
    Check(
        "fills_sum_to_filled_quantity",
        "per block order, the applied fills (executes not busted) sum to the filled quantity",
        """SELECT s.block_order_id, s.filled_quantity, coalesce(f.net, 0)
             FROM allocations.block_fills s
             LEFT JOIN (SELECT block_order_id, sum(quantity) AS net FROM allocations.fills
                         WHERE status = 'applied' AND activity = 'execute'
                           AND busted_by IS NULL
                         GROUP BY block_order_id) f USING (block_order_id)
            WHERE s.filled_quantity <> coalesce(f.net, 0)""",
    ),
    Check(
        "allocations_sum_to_last_snapshot",
        "the last snapshot's account allocations sum to its filled quantity, and a complete "
        "block order's last snapshot covers all of it",
        """SELECT s.block_order_id, s.filled_quantity, snap.filled_quantity,
                  coalesce(a.total, 0)
             FROM allocations.block_fills s
             JOIN allocations.snapshots snap
               ON snap.block_order_id = s.block_order_id AND snap.snapshot_seq = s.snapshot_seq
             LEFT JOIN (SELECT block_order_id, sum(quantity) AS total
                          FROM allocations.account_allocations GROUP BY block_order_id) a
               ON a.block_order_id = s.block_order_id
            WHERE coalesce(a.total, 0) <> snap.filled_quantity
               OR (s.status = 'complete' AND snap.filled_quantity <> s.filled_quantity)""",
    ),
    Check(
        "no_account_above_its_order",
        "no account is allocated more than it ordered, nor anything it did not order",
        """SELECT a.block_order_id, a.account_id, a.quantity, c.quantity
             FROM allocations.account_allocations a
             LEFT JOIN orders.customer_orders c USING (block_order_id, account_id)
            WHERE c.account_id IS NULL OR a.quantity > c.quantity""",
    ),
    Check(
        "every_account_at_the_average_price",
        "every account of a block order is at the last snapshot's average price",
        """SELECT a.block_order_id, a.account_id, a.price, snap.avg_price, a.snapshot_seq,
                  s.snapshot_seq
             FROM allocations.account_allocations a
             JOIN allocations.block_fills s USING (block_order_id)
             JOIN allocations.snapshots snap
               ON snap.block_order_id = s.block_order_id AND snap.snapshot_seq = s.snapshot_seq
            WHERE a.snapshot_seq <> s.snapshot_seq
               OR a.price IS DISTINCT FROM snap.avg_price""",
    ),
    Check(
        "pro_rata_within_one_share",
        "each account is within one share of its exact pro-rata part of the filled quantity",
        """SELECT a.block_order_id, a.account_id, a.quantity, c.quantity, snap.filled_quantity
             FROM allocations.account_allocations a
             JOIN orders.customer_orders c USING (block_order_id, account_id)
             JOIN orders.block_orders b USING (block_order_id)
             JOIN allocations.block_fills s USING (block_order_id)
             JOIN allocations.snapshots snap
               ON snap.block_order_id = s.block_order_id AND snap.snapshot_seq = s.snapshot_seq
            WHERE abs(a.quantity * b.quantity - snap.filled_quantity * c.quantity)
                  >= b.quantity""",
    ),
    Check(
        "average_price_is_exact",
        "each block order's average price is its notional over its filled quantity, to "
        "within half a unit of the 6th place (the half-even tie rule itself is property-tested)",
        """SELECT s.block_order_id, s.avg_price, s.notional / s.filled_quantity
             FROM allocations.block_fills s
            WHERE s.filled_quantity > 0
              AND abs(s.avg_price - s.notional / s.filled_quantity) > 0.0000005""",
    ),
    Check(
        "complete_blocks_in_outbox",
        "every complete block order went to the OMS outbox once, with its final figures",
        """SELECT s.block_order_id, s.status, o.block_order_id IS NOT NULL
             FROM allocations.block_fills s
             LEFT JOIN allocations.oms_outbox o USING (block_order_id)
            WHERE (s.status = 'complete') <> (o.block_order_id IS NOT NULL)
               OR (o.block_order_id IS NOT NULL
                   AND (o.filled_quantity <> s.filled_quantity
                        OR o.snapshot_seq <> s.snapshot_seq
                        OR o.avg_price IS DISTINCT FROM s.avg_price))""",
    ),
]

# Modules that add checks of their own phase when imported.
EXTENSIONS: tuple[str, ...] = ("workload.booking.checks",)


def all_checks() -> list[Check]:
    for module in EXTENSIONS:
        importlib.import_module(module)
    return list(CHECKS)


def run_checks(conn: psycopg.Connection, checks: list[Check] | None = None) -> list[CheckResult]:
    results = []
    for check in checks if checks is not None else all_checks():
        rows = conn.execute(check.query).fetchall()  # type: ignore[arg-type]
        results.append(CheckResult(check, len(rows), rows[:LIMIT]))
    return results

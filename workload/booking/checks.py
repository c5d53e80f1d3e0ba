"""The booking phase's invariants, added to ``verify`` (listed in ``workload.verify.EXTENSIONS``).

Every check holds on a database where booking has not run yet (there is nothing to compare),
so ``verify`` after allocation alone still passes; "every outboxed block order is booked"
applies once any booking has run there.

What they prove together: each final allocation is booked once or dead-lettered once; each
booking moved the position by exactly its quantity and the cash by exactly
``quantity x price`` rounded half-even to 4 places (``workload.booking.money``), plus fees;
each account's bookings form an unbroken chain (every one starts from the balances the
previous one left), and the holdings now are where the last booking left them. So positions
now equal positions before booking plus the allocations booked, and nothing else moved them.
Every booking has its one settlement with the same figures, published.
"""

from __future__ import annotations

from psycopg import sql

from workload.booking.money import HALF_EVEN_SQL
from workload.verify import CHECKS, Check

_FINAL_ALLOCATIONS = """
    SELECT a.block_order_id, a.account_id, a.quantity, a.price, a.snapshot_seq
      FROM allocations.oms_outbox o
      JOIN allocations.account_allocations a
        ON a.block_order_id = o.block_order_id AND a.snapshot_seq = o.snapshot_seq
     WHERE a.quantity > 0"""

# Queries that embed the constants above are composed with psycopg.sql, never formatted.
_FINAL = sql.SQL(_FINAL_ALLOCATIONS)
_CASH_AMOUNT_OF_B = sql.SQL(HALF_EVEN_SQL).format(x=sql.SQL("b.amount"))

BOOKING_CHECKS = [
    Check(
        "outbox_booked",
        "once booking has run, every outboxed block order is booked (none left waiting)",
        """SELECT o.block_order_id, k.status, k.waiting
             FROM allocations.oms_outbox o
             LEFT JOIN allocations.block_bookings k USING (block_order_id)
            WHERE (k.status IS NULL OR k.status <> 'booked')
              AND EXISTS (SELECT 1 FROM allocations.block_bookings)""",
    ),
    Check(
        "final_allocation_booked_once",
        "every final allocation of a booked block order is booked once or dead-lettered "
        "once, never both, never neither",
        sql.SQL("""SELECT f.block_order_id, f.account_id, b.account_id IS NOT NULL,
                  d.account_id IS NOT NULL
             FROM ({final}) f
             JOIN allocations.block_bookings k
               ON k.block_order_id = f.block_order_id AND k.status = 'booked'
             LEFT JOIN allocations.bookings b
               ON b.block_order_id = f.block_order_id AND b.account_id = f.account_id
             LEFT JOIN allocations.booking_dead_letters d
               ON d.block_order_id = f.block_order_id AND d.account_id = f.account_id
            WHERE (b.account_id IS NULL) = (d.account_id IS NULL)""").format(final=_FINAL),
    ),
    Check(
        "booking_is_a_final_allocation",
        "every booking and dead letter is a final allocation, at its quantity and price, on "
        "the customer order's security and side (nothing invented, nothing stale)",
        sql.SQL("""SELECT x.block_order_id, x.account_id, x.kind
             FROM (SELECT block_order_id, account_id, quantity, price, snapshot_seq,
                          security_id, side, 'booking' AS kind
                     FROM allocations.bookings
                   UNION ALL
                   SELECT block_order_id, account_id, quantity, price, snapshot_seq,
                          security_id, side, 'dead letter'
                     FROM allocations.booking_dead_letters) x
             LEFT JOIN ({final}) f
               ON f.block_order_id = x.block_order_id AND f.account_id = x.account_id
             LEFT JOIN orders.customer_orders c
               ON c.block_order_id = x.block_order_id AND c.account_id = x.account_id
            WHERE f.account_id IS NULL
               OR x.quantity <> f.quantity OR x.snapshot_seq <> f.snapshot_seq
               OR x.price IS DISTINCT FROM f.price
               OR (x.kind = 'booking'
                   AND (c.account_id IS NULL OR x.security_id <> c.security_id
                        OR x.side <> c.side))""").format(final=_FINAL),
    ),
    Check(
        "booking_cash_is_quantity_times_price",
        "each booking's amount is exactly quantity x price, its cash amount that amount "
        "rounded half-even to 4 places, and the cash moved by exactly that (and the fee)",
        sql.SQL("""SELECT b.block_order_id, b.account_id, b.amount, b.cash_amount, b.fee,
                  b.cash_before, b.cash_after
             FROM allocations.bookings b
            WHERE b.amount <> b.quantity * b.price
               OR b.cash_amount <> {cash_amount}
               OR b.fee < 0
               OR b.cash_after <> b.cash_before
                  + CASE WHEN b.side = 'buy' THEN -(b.cash_amount + b.fee)
                         ELSE b.cash_amount - b.fee END""").format(cash_amount=_CASH_AMOUNT_OF_B),
    ),
    Check(
        "booking_position_moves_by_quantity",
        "each booking moved its position by exactly its quantity (buys up, sells down)",
        """SELECT block_order_id, account_id, side, quantity, position_before, position_after
             FROM allocations.bookings
            WHERE position_after <> position_before
                  + CASE WHEN side = 'buy' THEN quantity ELSE -quantity END
               OR position_after < 0""",
    ),
    Check(
        "booking_chain_unbroken",
        "each account's bookings are numbered 1..n, and each starts from the cash (and, per "
        "security, the position) the one before it left",
        """SELECT account_id, account_seq, cash_before, previous_cash, position_before,
                  previous_position
             FROM (SELECT account_id, account_seq, cash_before, position_before,
                          row_number() OVER (PARTITION BY account_id ORDER BY account_seq)
                              AS n,
                          lag(cash_after) OVER (PARTITION BY account_id ORDER BY account_seq)
                              AS previous_cash,
                          lag(position_after) OVER (PARTITION BY account_id, security_id
                                                    ORDER BY account_seq)
                              AS previous_position
                     FROM allocations.bookings) chain
            WHERE account_seq <> n
               OR cash_before <> previous_cash
               OR position_before <> previous_position""",
    ),
    Check(
        "holdings_where_bookings_left_them",
        "each booked account's cash, and each booked position, is what its last booking "
        "left (so positions = positions before + allocations booked)",
        """SELECT last.account_id, last.security_id, last.cash_after, a.cash,
                  last.position_after, p.quantity
             FROM (SELECT account_id, security_id, cash_after, position_after,
                          row_number() OVER (PARTITION BY account_id
                                             ORDER BY account_seq DESC) AS from_end,
                          row_number() OVER (PARTITION BY account_id, security_id
                                             ORDER BY account_seq DESC) AS from_end_in_security
                     FROM allocations.bookings) last
             JOIN holdings.accounts a ON a.account_id = last.account_id
             LEFT JOIN holdings.positions p
               ON p.account_id = last.account_id AND p.security_id = last.security_id
            WHERE (last.from_end = 1 AND a.cash <> last.cash_after)
               OR (last.from_end_in_security = 1
                   AND (p.quantity IS NULL OR p.quantity <> last.position_after))""",
    ),
    Check(
        "booking_has_one_settlement",
        "every booking has exactly one settlement instruction, with the booking's figures",
        """SELECT b.block_order_id, b.account_id, count(s.settlement_id)
             FROM allocations.bookings b
             LEFT JOIN allocations.settlements s
               ON s.block_order_id = b.block_order_id AND s.account_id = b.account_id
              AND s.security_id = b.security_id AND s.side = b.side
              AND s.quantity = b.quantity AND s.price = b.price
              AND s.gross_amount = b.amount AND s.cash_amount = b.cash_amount
              AND s.fee = b.fee AND s.net_amount = b.cash_after - b.cash_before
              AND s.settle_date > s.trade_date
            GROUP BY b.block_order_id, b.account_id
           HAVING count(s.settlement_id) <> 1""",
    ),
    Check(
        "settlement_published",
        "every settlement instruction was acknowledged by the broker (none left to relay)",
        """SELECT settlement_id, block_order_id, account_id, created_at
             FROM allocations.settlements
            WHERE published_at IS NULL""",
    ),
]

CHECKS.extend(c for c in BOOKING_CHECKS if c not in CHECKS)

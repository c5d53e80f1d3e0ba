"""Phase i: rebalance accounts to their model with a day's open prices.

For each rebalance group (a manager and a model) and each account in it:

- portfolio value V = cash + sum(quantity x open);
- target quantity = floor(V x weight / open) (weights are fractions summing to 1);
- drift = |quantity x open / V - weight|; a line whose drift is inside the tolerance band
  is left alone; securities held outside the model have weight 0 (sold when they drift);
- the difference becomes a sell (never more than held: the target is >= 0) or a buy; buys
  are scaled down so that they never spend more than the account's cash plus its sells'
  proceeds (each buy x available / cost, floored), where the cost of buys carries a cash
  buffer (default 2%): orders are sized at the open but fill during the day, and a buy that
  fills above the open must still find the cash when it is booked.

Customer orders (one per account and security) aggregate into block orders per
(rebalance request, security, side). Everything is set-based: one INSERT ... SELECT per group
writes the group's block and customer orders and marks its request done, in one transaction
through the retry helper. Ids are derived from natural keys (a request is md5 of manager,
model and day; a block order md5 of request, security and side; a customer order is keyed by
block order and account), so the same seed and date always give the same orders, and a request
that is done is never processed again: re-running a date creates nothing twice.

Securities without a price on the date are neither valued nor traded (the seeders price every
security every day; other data may not).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import psycopg

from workload.db import RetryStats, open_pool, run_transaction
from workload.errors import LabError

DEFAULT_TOLERANCE = Decimal("0.005")  # half a percentage point of the portfolio
DEFAULT_CASH_BUFFER = Decimal("0.02")  # buys budgeted 2% above the open

CREATE_REQUESTS = """
INSERT INTO orders.rebalance_requests (request_id, manager_id, model_id, trade_date)
SELECT md5(manager_id::text || ':' || model_id::text || ':' || %(day)s::text)::uuid,
       manager_id, model_id, %(day)s
  FROM holdings.models
ON CONFLICT (request_id) DO NOTHING
"""

PENDING_REQUESTS = """
SELECT request_id, manager_id, model_id FROM orders.rebalance_requests
 WHERE trade_date = %(day)s AND status = 'pending'
 ORDER BY request_id
"""

# One group's orders. The CTEs compute order lines; two data-modifying CTEs write the block
# orders and customer orders (foreign keys are checked at the end of the statement, so the
# customer orders may reference block orders written by the sibling CTE); the final UPDATE
# marks the request done with its counts.
REBALANCE_GROUP = """
WITH acct AS (
    SELECT account_id, cash FROM holdings.accounts
     WHERE manager_id = %(manager)s AND model_id = %(model)s
), px AS (
    SELECT security_id, open FROM market.daily_prices WHERE trade_date = %(day)s
), held AS (
    SELECT p.account_id, p.security_id, p.quantity
      FROM holdings.positions AS p JOIN acct USING (account_id)
     WHERE p.quantity > 0
), target AS (
    SELECT a.account_id, w.security_id, w.weight
      FROM acct AS a CROSS JOIN holdings.model_weights AS w
     WHERE w.model_id = %(model)s
), line AS (
    SELECT coalesce(h.account_id, t.account_id) AS account_id,
           coalesce(h.security_id, t.security_id) AS security_id,
           coalesce(h.quantity, 0) AS held,
           coalesce(t.weight, 0) AS weight
      FROM held AS h FULL JOIN target AS t
        ON t.account_id = h.account_id AND t.security_id = h.security_id
), valued AS (
    SELECT l.account_id, l.security_id, l.held, l.weight, px.open, a.cash,
           a.cash + sum(l.held * px.open) OVER (PARTITION BY l.account_id) AS total
      FROM line AS l JOIN px USING (security_id) JOIN acct AS a USING (account_id)
), drifted AS (
    SELECT account_id, security_id, open, cash,
           floor(total * weight / open)::INT8 - held AS delta
      FROM valued
     WHERE total > 0
       AND abs(held * open / total - weight) >= %(tolerance)s
), budget AS (
    SELECT account_id,
           max(cash) + sum(CASE WHEN delta < 0 THEN -delta * open ELSE 0 END) AS available,
           sum(CASE WHEN delta > 0 THEN delta * open ELSE 0 END) * (1 + %(buffer)s) AS cost
      FROM drifted GROUP BY account_id
), sized AS (
    SELECT d.account_id, d.security_id,
           CASE WHEN d.delta < 0 THEN 'sell' ELSE 'buy' END AS side,
           CASE WHEN d.delta < 0 THEN -d.delta
                WHEN b.cost <= b.available THEN d.delta
                ELSE floor(d.delta * b.available / b.cost)::INT8 END AS quantity
      FROM drifted AS d JOIN budget AS b USING (account_id)
     WHERE d.delta <> 0
), final AS (
    SELECT account_id, security_id, side, quantity,
           md5(%(request)s::text || ':' || security_id::text || ':' || side)::uuid
               AS block_order_id
      FROM sized WHERE quantity > 0
), blocks AS (
    INSERT INTO orders.block_orders
        (block_order_id, request_id, security_id, side, quantity, account_count, trade_date)
    SELECT block_order_id, %(request)s, security_id, side, sum(quantity), count(*), %(day)s
      FROM final GROUP BY block_order_id, security_id, side
    ON CONFLICT (block_order_id) DO NOTHING
    RETURNING 1
), customers AS (
    INSERT INTO orders.customer_orders
        (block_order_id, account_id, request_id, security_id, side, quantity)
    SELECT block_order_id, account_id, %(request)s, security_id, side, quantity
      FROM final
    ON CONFLICT (block_order_id, account_id) DO NOTHING
    RETURNING 1
)
UPDATE orders.rebalance_requests
   SET status = 'done',
       accounts = (SELECT count(*) FROM acct),
       customer_orders = (SELECT count(*) FROM customers),
       block_orders = (SELECT count(*) FROM blocks)
 WHERE request_id = %(request)s
RETURNING accounts, customer_orders, block_orders
"""


@dataclass(frozen=True)
class RebalanceOptions:
    trade_date: date | None = None  # None: the last seeded trading day
    tolerance: Decimal = DEFAULT_TOLERANCE
    cash_buffer: Decimal = DEFAULT_CASH_BUFFER
    workers: int = 2  # groups written concurrently


@dataclass
class RebalanceReport:
    trade_date: date
    groups: int = 0
    groups_already_done: int = 0
    accounts: int = 0
    customer_orders: int = 0
    block_orders: int = 0
    seconds: float = 0.0
    retries: dict = field(default_factory=dict)

    @property
    def accounts_per_second(self) -> float:
        return self.accounts / self.seconds if self.seconds else 0.0


def trading_day(conn: psycopg.Connection, requested: date | None) -> date:
    """The day to rebalance on, or a LabError saying why that day cannot be used."""
    (accounts,) = conn.execute("SELECT count(*) FROM holdings.accounts").fetchone()
    if accounts == 0:
        raise LabError("the holdings domain is empty; seed it first with `python -m workload seed`")
    first, last = conn.execute(
        "SELECT min(trade_date), max(trade_date) FROM market.daily_prices"
    ).fetchone()
    if last is None:
        raise LabError(
            "the market domain has no prices; seed it first with `python -m workload seed`"
        )
    if requested is None:
        return last
    if not first <= requested <= last:
        raise LabError(f"{requested} is outside the seeded trading days ({first} to {last})")
    (priced,) = conn.execute(
        "SELECT count(*) FROM market.daily_prices WHERE trade_date = %s", (requested,)
    ).fetchone()
    if priced == 0:
        before, after = conn.execute(
            "SELECT (SELECT max(trade_date) FROM market.daily_prices WHERE trade_date < %(d)s), "
            "(SELECT min(trade_date) FROM market.daily_prices WHERE trade_date > %(d)s)",
            {"d": requested},
        ).fetchone()
        raise LabError(
            f"there are no prices on {requested} ({requested:%A}); the nearest trading days "
            f"are {before} and {after}"
        )
    return requested


def rebalance(dsn: str, options: RebalanceOptions = RebalanceOptions()) -> RebalanceReport:
    """Write the day's customer and block orders for every group not yet done."""
    started = time.perf_counter()
    if options.tolerance < 0 or options.tolerance >= 1:
        raise LabError(f"--tolerance must be in [0, 1) (got {options.tolerance})")
    if options.cash_buffer < 0 or options.cash_buffer >= 1:
        raise LabError(f"--cash-buffer must be in [0, 1) (got {options.cash_buffer})")
    stats = RetryStats()
    pool = open_pool(dsn, size=max(1, options.workers), name="rebalance")
    try:
        with pool.connection() as conn:
            day = trading_day(conn, options.trade_date)
            run_transaction(conn, lambda c: c.execute(CREATE_REQUESTS, {"day": day}), stats=stats)
            (groups,) = conn.execute(
                "SELECT count(*) FROM orders.rebalance_requests WHERE trade_date = %s", (day,)
            ).fetchone()
            pending = conn.execute(PENDING_REQUESTS, {"day": day}).fetchall()
        report = RebalanceReport(trade_date=day, groups=groups)
        report.groups_already_done = groups - len(pending)

        def one_group(request) -> tuple[int, int, int]:
            request_id, manager_id, model_id = request
            params = {
                "request": request_id,
                "manager": manager_id,
                "model": model_id,
                "day": day,
                "tolerance": options.tolerance,
                "buffer": options.cash_buffer,
            }
            with pool.connection() as conn:
                return run_transaction(
                    conn, lambda c: c.execute(REBALANCE_GROUP, params).fetchone(), stats=stats
                )

        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as executor:
            for accounts, customers, blocks in executor.map(one_group, pending):
                report.accounts += accounts
                report.customer_orders += customers
                report.block_orders += blocks
    finally:
        pool.close()
    report.seconds = time.perf_counter() - started
    report.retries = stats.as_dict()
    return report

"""The market: executions against open block orders, into the trades domain (the CDC source).

Each event is one row of trades.executions with a unique id, its block order, a sequence
number within the block order, an activity and a timestamp:

- ``execute``: a lot of ``lot_size x 1..max_lots`` shares, never more than the order still
  needs, at a price drawn uniformly inside that day's low-high range;
- ``bust`` (about ``bust_rate`` of events): breaks an earlier, not yet busted execution of the
  same block order; the row carries the busted execution's id and quantity, and the order
  needs those shares again;
- ``replace`` (about ``replace_rate``): amends the order: a lower total quantity (never below
  what is filled, never zero), and possibly another order type and destination. Block orders
  keep their original quantity (the sum of their customer orders); the amendment lives in the
  row.

A block order whose net filled quantity reaches its current quantity is complete: its status
becomes ``filled`` in the same transaction that writes its last execution.

:class:`Market` holds the open block orders in memory and is used in two modes: bulk (fill
every open block order as fast as the database takes it) and streaming (``rate`` executions
per second for a duration), which is how a market feeds a live run. Several markets can run at
once on disjoint shards of the block orders (``shard=(i, n)``).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import psycopg
from psycopg import sql

from workload.db import RetryStats, run_transaction
from workload.errors import LabError

ORDER_TYPES = ("market", "limit")
DESTINATIONS = ("XNYS", "XNAS", "ARCX", "BATS", "IEXG")
PRICE_TICKS = 10_000  # prices are NUMERIC(18,4)

EXECUTION_COLUMNS = (
    "execution_id", "block_order_id", "seq", "activity", "quantity", "price",
    "ref_execution_id", "order_type", "destination",
)  # fmt: skip


@dataclass(frozen=True)
class TradeOptions:
    lot_size: int = 50
    max_lots: int = 10
    bust_rate: float = 0.01
    replace_rate: float = 0.01
    batch_size: int = 500  # executions per transaction in bulk mode
    trade_date: date | None = None  # only block orders of that day; None: every open one
    seed: int = 42

    def validate(self) -> TradeOptions:
        if self.lot_size < 1 or self.max_lots < 1:
            raise LabError("--lot-size and --max-lots must be at least 1")
        if not (0 <= self.bust_rate < 0.5 and 0 <= self.replace_rate < 0.5):
            raise LabError("--bust-rate and --replace-rate must be in [0, 0.5)")
        if self.batch_size < 1:
            raise LabError("--batch-size must be at least 1")
        return self


@dataclass
class Execution:
    """One row for trades.executions (executed_at is the database's commit-time clock)."""

    execution_id: uuid.UUID
    block_order_id: uuid.UUID
    seq: int
    activity: str
    quantity: int
    price: Decimal | None = None
    ref_execution_id: uuid.UUID | None = None
    order_type: str | None = None
    destination: str | None = None

    def row(self) -> tuple:
        return tuple(getattr(self, c) for c in EXECUTION_COLUMNS)


@dataclass
class OpenBlock:
    """What the market knows about one open block order."""

    block_order_id: uuid.UUID
    quantity: int  # the current order quantity, after replaces
    filled: int  # net of busts
    next_seq: int
    low: int  # the day's price range, in ticks
    high: int
    live: list[tuple[uuid.UUID, int]] = field(default_factory=list)  # executes not busted

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled


@dataclass
class MarketReport:
    executions: int = 0
    executes: int = 0
    busts: int = 0
    replaces: int = 0
    blocks_filled: int = 0
    shares: int = 0  # net shares executed
    seconds: float = 0.0
    retries: dict = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


OPEN_BLOCKS = """
SELECT b.block_order_id, b.quantity, p.low, p.high
  FROM orders.block_orders AS b
  JOIN market.daily_prices AS p
    ON p.security_id = b.security_id AND p.trade_date = b.trade_date
 WHERE b.status = 'open' AND (%(day)s::date IS NULL OR b.trade_date = %(day)s::date)
"""

PAST_EXECUTIONS = """
SELECT block_order_id, execution_id, seq, activity, quantity, ref_execution_id
  FROM trades.executions WHERE block_order_id = ANY(%s)
 ORDER BY block_order_id, seq
"""


class Market:
    """Generates executions for a set of open block orders and writes them."""

    def __init__(self, blocks: list[OpenBlock], options: TradeOptions, rng: random.Random):
        self.options = options
        self.rng = rng
        self.open = blocks
        self.filled_ids: list[uuid.UUID] = []  # completed since the last write
        self.report = MarketReport()

    @classmethod
    def load(
        cls, conn: psycopg.Connection, options: TradeOptions, shard: tuple[int, int] = (0, 1)
    ) -> Market:
        """The open block orders (of ``shard`` i of n) with what was already executed."""
        index, count = shard
        rows = conn.execute(OPEN_BLOCKS, {"day": options.trade_date}).fetchall()
        blocks = {
            bid: OpenBlock(bid, qty, 0, 1, int(low * PRICE_TICKS), int(high * PRICE_TICKS))
            for bid, qty, low, high in rows
            if bid.int % count == index
        }
        past = conn.execute(PAST_EXECUTIONS, (list(blocks),)).fetchall() if blocks else []
        busted: set[uuid.UUID] = set()
        for block_id, execution_id, seq, activity, quantity, ref in past:
            block = blocks[block_id]
            block.next_seq = seq + 1
            if activity == "execute":
                block.filled += quantity
                block.live.append((execution_id, quantity))
            elif activity == "bust":
                block.filled -= quantity
                busted.add(ref)
            elif activity == "replace":
                block.quantity = quantity
        for block in blocks.values():
            block.live = [(e, q) for e, q in block.live if e not in busted]
        # A different stream for every resumption, the same one for the same state.
        rng = random.Random(f"{options.seed}:{index}/{count}:{len(past)}")
        ordered = sorted(blocks.values(), key=lambda b: b.block_order_id)
        return cls([b for b in ordered if b.remaining > 0], options, rng)

    # -- generation ---------------------------------------------------------------------------

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def next_event(self) -> Execution | None:
        """One execution against a random open block order; None when all are filled."""
        if not self.open:
            return None
        rng, opts = self.rng, self.options
        slot = rng.randrange(len(self.open))
        block = self.open[slot]
        roll = rng.random()
        seq = block.next_seq
        if roll < opts.bust_rate and block.live:
            victim_id, victim_qty = block.live.pop(rng.randrange(len(block.live)))
            block.filled -= victim_qty
            event = Execution(self._uuid(), block.block_order_id, seq, "bust", victim_qty,
                              ref_execution_id=victim_id)  # fmt: skip
            self.report.busts += 1
        elif roll < opts.bust_rate + opts.replace_rate and block.remaining > opts.lot_size:
            # Amend down, never below what is filled, and never to zero: that would be a
            # cancel, which this market does not model.
            cut = opts.lot_size * rng.randint(1, opts.max_lots)
            block.quantity = max(block.quantity - cut, block.filled, 1)
            event = Execution(
                self._uuid(), block.block_order_id, seq, "replace", block.quantity,
                order_type=rng.choice(ORDER_TYPES), destination=rng.choice(DESTINATIONS),
            )  # fmt: skip
            self.report.replaces += 1
        else:
            lot = min(block.remaining, opts.lot_size * rng.randint(1, opts.max_lots))
            price = Decimal(rng.randint(block.low, block.high)) / PRICE_TICKS
            event = Execution(self._uuid(), block.block_order_id, seq, "execute", lot, price)
            block.filled += lot
            block.live.append((event.execution_id, lot))
            self.report.executes += 1
        block.next_seq += 1
        self.report.executions += 1
        if block.remaining == 0:
            # O(1) removal: the order of open blocks does not matter, the rng picks anyway.
            self.open[slot] = self.open[-1]
            self.open.pop()
            self.filled_ids.append(block.block_order_id)
            self.report.blocks_filled += 1
        return event

    def take(self, n: int) -> list[Execution]:
        events = []
        for _ in range(n):
            event = self.next_event()
            if event is None:
                break
            events.append(event)
        return events

    @property
    def remaining_shares(self) -> int:
        return sum(b.remaining for b in self.open)

    # -- writing ------------------------------------------------------------------------------

    def write(self, conn: psycopg.Connection, events: list[Execution], stats: RetryStats) -> None:
        """The events and the block orders they completed, in one transaction."""
        filled, self.filled_ids = self.filled_ids, []
        if not events and not filled:
            return
        copy_sql = sql.SQL("COPY trades.executions ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, EXECUTION_COLUMNS))
        )

        def work(c: psycopg.Connection) -> None:
            if events:
                with c.cursor().copy(copy_sql) as copy:
                    for event in events:
                        copy.write_row(event.row())
            if filled:
                c.execute(
                    "UPDATE orders.block_orders SET status = 'filled' "
                    "WHERE block_order_id = ANY(%s)",
                    (filled,),
                )

        try:
            run_transaction(conn, work, stats=stats)
        except BaseException:
            self.filled_ids = filled + self.filled_ids  # still to be marked next time
            raise
        self.report.shares += sum(
            e.quantity if e.activity == "execute" else -e.quantity
            for e in events
            if e.activity != "replace"
        )


def run_bulk(
    conn: psycopg.Connection,
    options: TradeOptions,
    progress: Callable[[str, int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> MarketReport:
    """Fill every open block order as fast as the database takes the writes."""
    options.validate()
    started = time.perf_counter()
    stats = RetryStats()
    market = Market.load(conn, options)
    total = market.remaining_shares
    while market.open and not (stop and stop.is_set()):
        market.write(conn, market.take(options.batch_size), stats)
        if progress is not None:
            progress("trades.executions (shares)", total - market.remaining_shares, total)
    market.write(conn, [], stats)
    market.report.seconds = time.perf_counter() - started
    market.report.retries = stats.as_dict()
    return market.report


def run_stream(
    conn: psycopg.Connection,
    options: TradeOptions,
    rate: float,
    duration: float,
    stop: threading.Event | None = None,
    tick: float = 0.02,
) -> MarketReport:
    """``rate`` executions per second for ``duration`` seconds (or until every block order is
    filled, or ``stop`` is set); each tick's executions are one transaction."""
    options.validate()
    if rate <= 0 or duration <= 0:
        raise LabError("--rate and --duration must be positive")
    stats = RetryStats()
    market = Market.load(conn, options)
    started = time.perf_counter()
    emitted = 0
    while market.open and not (stop and stop.is_set()):
        elapsed = time.perf_counter() - started
        if elapsed >= duration:
            break
        due = int(elapsed * rate) - emitted
        if due > 0:
            events = market.take(due)
            market.write(conn, events, stats)
            emitted += len(events)
        time.sleep(min(tick, max(0.0, (emitted + 1) / rate - (time.perf_counter() - started))))
    market.write(conn, [], stats)
    market.report.seconds = time.perf_counter() - started
    market.report.retries = stats.as_dict()
    return market.report

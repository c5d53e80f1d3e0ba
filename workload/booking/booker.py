"""Booking the OMS outbox into holdings, one small transaction per batch of block orders.

The unit of work is an outboxed block order. A booker claims a few at a time with
``FOR UPDATE SKIP LOCKED`` on their outbox rows, so concurrent bookers (threads or processes)
never wait for each other's claims, and books each final allocation (the rows with the
outbox's ``snapshot_seq``, quantity > 0) of those block orders:

- the account's position moves by the quantity (buys add, sells remove), its cash by
  ``quantity x price`` rounded half-even to 4 places, plus fees (``workload.booking.money``);
- a booking row records both figures and the cash and position before and after, in the
  account's own sequence (``account_seq``), so verify can walk each account's chain;
- a settlement row is written in the same transaction, for the relay to publish.

Idempotent per (block order, account): a booked or dead-lettered pair is never read as work
again, and the bookings primary key would refuse a second one. Locks are taken in one
order, so bookers never deadlock: outbox rows (claimed, never waited for), then the block
orders' rebalance requests, then accounts, each sorted. The account lock, taken before its
balances are read, is what serialises every booking of one account, new positions included.

What cannot be booked is dead-lettered with its reason and the run goes on: an allocation
whose account no longer exists (``unknown_account``), a sell of more than the position holds
(``oversell``), an allocation whose customer or block order is gone (``unknown_order``), a
booking that would leave the account with negative cash (``insufficient_cash``) or beyond a
column's range (``out_of_range``).

Cash and order of arrival. A rebalance sizes an account's buys to its cash *plus its sells'
proceeds*, but block orders complete (and reach the outbox) in any order, so a buy often
arrives before the sells that fund it. A buy the account cannot pay for yet therefore
*waits* while sell block orders of the same rebalance request are still to be booked: its
block order is marked ``waiting`` and retried as soon as the last of those sells is booked
(the booker that books it wakes the request's waiting block orders; both hold the request's
row lock, so no wake-up is lost), or after ``hold_seconds`` as a safety net. Once no sell of
the request is left, a buy that still does not fit is dead-lettered as ``insufficient_cash``.
Sells never wait. In one transaction an account's sells are booked before its buys.

Finding work cheaply. Each booker keeps a cursor (created_at, block order) in the outbox
and scans forward from it, so a busy booker reads only new rows; when the forward scan finds
nothing it starts again from the beginning, which picks up rows that committed late behind
the cursor. Waiting block orders that are due are claimed first, through their own index.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import psycopg
from psycopg import sql

from workload.booking.money import CASH_LIMIT, POSITION_LIMIT, Fees, cash_move, settle_date
from workload.booking.settlement import settlement_id
from workload.dialect import Dialect

DEAD_LETTER_REASONS = (
    "unknown_account", "oversell", "insufficient_cash", "unknown_order", "out_of_range",
)  # fmt: skip

CLAIM_DUE = """
SELECT o.block_order_id
  FROM allocations.block_bookings AS k
  JOIN allocations.oms_outbox AS o ON o.block_order_id = k.block_order_id
 WHERE k.status = 'waiting' AND k.retry_at <= now()
 ORDER BY k.retry_at
 LIMIT %s
   FOR UPDATE OF o SKIP LOCKED
"""

# New work of one side. A block order that is gone from the orders domain counts as a sell:
# it is dead-lettered, and sells never wait.
_CLAIM_NEW = """
SELECT o.block_order_id, o.created_at
  FROM allocations.oms_outbox AS o
  LEFT JOIN orders.block_orders AS b ON b.block_order_id = o.block_order_id
 WHERE coalesce(b.side, 'sell') = %s AND {after}
   AND NOT EXISTS (SELECT 1 FROM allocations.block_bookings AS k
                    WHERE k.block_order_id = o.block_order_id)
 ORDER BY o.created_at, o.block_order_id
 LIMIT %s
   FOR UPDATE OF o SKIP LOCKED
"""
CLAIM_NEW_FROM_START = sql.SQL(_CLAIM_NEW).format(after=sql.SQL("TRUE"))
CLAIM_NEW_AFTER = sql.SQL(_CLAIM_NEW).format(
    after=sql.SQL("(o.created_at, o.block_order_id) > (%s, %s)")
)

# A fresh statement after the claim: it sees whatever another booker committed between the
# claim's snapshot and the lock (at READ COMMITTED that can be a whole booking). The server's
# clock, not ours, times the retries of waiting block orders.
BLOCKS = """
SELECT o.block_order_id, o.snapshot_seq, b.request_id, k.status, coalesce(k.attempts, 0),
       coalesce(k.booked, 0), coalesce(k.dead_letters, 0), now()
  FROM allocations.oms_outbox AS o
  LEFT JOIN orders.block_orders AS b ON b.block_order_id = o.block_order_id
  LEFT JOIN allocations.block_bookings AS k ON k.block_order_id = o.block_order_id
 WHERE o.block_order_id = ANY(%s)
"""

WORK = """
SELECT a.block_order_id, a.account_id, a.quantity, a.price, a.snapshot_seq,
       c.security_id, c.side, b.request_id, b.trade_date
  FROM allocations.account_allocations AS a
  JOIN allocations.oms_outbox AS o
    ON o.block_order_id = a.block_order_id AND o.snapshot_seq = a.snapshot_seq
  LEFT JOIN orders.block_orders AS b ON b.block_order_id = a.block_order_id
  LEFT JOIN orders.customer_orders AS c
    ON c.block_order_id = a.block_order_id AND c.account_id = a.account_id
 WHERE a.block_order_id = ANY(%s) AND a.quantity > 0
   AND NOT EXISTS (SELECT 1 FROM allocations.bookings AS k
                    WHERE k.block_order_id = a.block_order_id AND k.account_id = a.account_id)
   AND NOT EXISTS (SELECT 1 FROM allocations.booking_dead_letters AS d
                    WHERE d.block_order_id = a.block_order_id AND d.account_id = a.account_id)
 ORDER BY a.account_id, a.block_order_id
"""

# Every booking of a rebalance request holds its request's row lock, taken before any
# account lock: it makes "this buy waits for its request's sells" and "this sell wakes its
# request's waiting buys" exclusive, so no wake-up is lost between a decision and its commit.
LOCK_REQUESTS = """
SELECT request_id FROM orders.rebalance_requests
 WHERE request_id = ANY(%s) ORDER BY request_id FOR UPDATE
"""

# Sorted, so that every booker takes account locks in the same order.
LOCK_ACCOUNTS = """
SELECT account_id, cash FROM holdings.accounts
 WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE
"""

# Both columns of the primary key constrained: an index scan of the (small) cross product;
# the caller keeps the pairs it asked for.
POSITIONS = """
SELECT account_id, security_id, quantity FROM holdings.positions
 WHERE account_id = ANY(%s) AND security_id = ANY(%s)
"""

# One index probe per account (the newest entry of bookings_account_seq_key), however many
# bookings the account has.
LAST_ACCOUNT_SEQ = """
SELECT k.account_id,
       (SELECT max(b.account_seq) FROM allocations.bookings AS b
         WHERE b.account_id = k.account_id)
  FROM unnest(%s::uuid[]) AS k(account_id)
"""

# Requests with a sell block order not booked yet (other than the ones in hand): their buys
# may wait for the cash.
SELLS_TO_COME = """
SELECT DISTINCT s.request_id
  FROM orders.block_orders AS s
 WHERE s.request_id = ANY(%s) AND s.side = 'sell' AND s.block_order_id <> ALL(%s::uuid[])
   AND NOT EXISTS (SELECT 1 FROM allocations.block_bookings AS k
                    WHERE k.block_order_id = s.block_order_id AND k.status = 'booked')
"""

# Writes are one statement per table, whatever the batch's size: arrays in, unnest() out.
# Arrays are sent in binary (%b), which psycopg dumps twice as fast as text.
INSERT_BOOKINGS = """
INSERT INTO allocations.bookings
    (block_order_id, account_id, account_seq, snapshot_seq, security_id, side, quantity,
     price, amount, cash_amount, fee, cash_before, cash_after, position_before,
     position_after)
SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::int8[], %b::int8[], %b::uuid[], %b::text[],
                     %b::int8[], %b::numeric[], %b::numeric[], %b::numeric[], %b::numeric[],
                     %b::numeric[], %b::numeric[], %b::int8[], %b::int8[])
"""

INSERT_SETTLEMENTS = """
INSERT INTO allocations.settlements
    (settlement_id, block_order_id, account_id, security_id, side, quantity, price,
     gross_amount, cash_amount, fee, net_amount, trade_date, settle_date)
SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::uuid[], %b::text[], %b::int8[],
                     %b::numeric[], %b::numeric[], %b::numeric[], %b::numeric[],
                     %b::numeric[], %b::date[], %b::date[])
"""

INSERT_DEAD_LETTER = """
INSERT INTO allocations.booking_dead_letters
    (block_order_id, account_id, snapshot_seq, security_id, side, quantity, price, reason,
     detail)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

UPDATE_CASH = """
UPDATE holdings.accounts AS a SET cash = u.cash
  FROM unnest(%b::uuid[], %b::numeric[]) AS u(account_id, cash)
 WHERE a.account_id = u.account_id
"""

# Positions are read under the account lock, so whether each one exists is known: existing
# ones are updated, new ones inserted (no upsert needed).
UPDATE_POSITIONS = """
UPDATE holdings.positions AS p SET quantity = u.quantity
  FROM unnest(%b::uuid[], %b::uuid[], %b::int8[]) AS u(account_id, security_id, quantity)
 WHERE p.account_id = u.account_id AND p.security_id = u.security_id
"""

INSERT_POSITIONS = """
INSERT INTO holdings.positions (account_id, security_id, quantity)
SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::int8[])
"""

BLOCK_BOOKING_COLUMNS = (
    "block_order_id", "request_id", "snapshot_seq", "status", "attempts", "booked",
    "dead_letters", "waiting", "retry_at", "updated_at",
)  # fmt: skip

# Once a request's last sell is booked, its waiting buys have all the cash they will get:
# retry them now. (Waking them at every sell would only make them wait again.)
WAKE_WAITING = """
UPDATE allocations.block_bookings SET retry_at = now()
 WHERE request_id = ANY(%s) AND status = 'waiting' AND retry_at > now()
"""


@dataclass(frozen=True)
class Allocation:
    """One final allocation to book, with what its orders say (None where they are gone)."""

    block_order_id: uuid.UUID
    account_id: uuid.UUID
    quantity: int
    price: Decimal
    snapshot_seq: int
    security_id: uuid.UUID | None
    side: str | None
    request_id: uuid.UUID | None
    trade_date: date | None


@dataclass
class BookingOutcome:
    """What one booking transaction did."""

    claimed: int = 0
    blocks_booked: int = 0  # block orders now fully booked
    blocks_waiting: int = 0
    bookings: int = 0
    shares: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    waiting: int = 0  # allocations left waiting for cash

    @property
    def progressed(self) -> bool:
        return bool(self.bookings or self.dead_letters or self.blocks_booked)


@dataclass
class _Block:
    block_order_id: uuid.UUID
    snapshot_seq: int
    request_id: uuid.UUID | None
    status: str | None
    attempts: int
    booked: int
    dead_letters: int
    now: datetime
    waiting: int = 0


@dataclass
class _Account:
    cash: Decimal
    seq: int  # the account's last account_seq
    positions: dict[uuid.UUID, int] = field(default_factory=dict)
    held: set[uuid.UUID] = field(default_factory=set)  # securities with a positions row


Cursor = tuple[datetime, uuid.UUID]


@dataclass
class _Writes:
    bookings: list[tuple] = field(default_factory=list)
    settlements: list[tuple] = field(default_factory=list)
    dead_letters: list[tuple] = field(default_factory=list)
    positions: set[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=set)
    sold_in: set[uuid.UUID] = field(default_factory=set)  # requests with a sell booked


class Booker:
    """Claims and books batches of outboxed block orders; one instance per worker (it keeps
    that worker's cursor)."""

    def __init__(
        self,
        dialect: Dialect,
        fees: Fees | None = None,
        *,
        batch_size: int = 4,
        hold_seconds: float = 30.0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if hold_seconds <= 0:
            raise ValueError("hold_seconds must be positive")
        self.dialect = dialect
        self.fees = fees or Fees()
        self.batch_size = batch_size
        self.hold = timedelta(seconds=hold_seconds)
        # Per side, the (created_at, block order) of the newest row claimed: the next claim
        # scans forward from there.
        self._cursors: dict[str, Cursor | None] = {"sell": None, "buy": None}
        self._next_cursors = dict(self._cursors)
        self._upsert_block = dialect.upsert(
            "allocations.block_bookings", BLOCK_BOOKING_COLUMNS, BLOCK_BOOKING_COLUMNS[:1]
        )

    # -- the transaction ----------------------------------------------------------------------

    def book_batch(self, conn: psycopg.Connection) -> BookingOutcome:
        """Claim up to ``batch_size`` block orders and book them; must run inside a
        transaction (the retry helper's), followed by :meth:`committed` once it committed.
        A retried attempt starts again from the same cursors."""
        outcome = BookingOutcome()
        claimed = self._claim(conn)
        outcome.claimed = len(claimed)
        if not claimed:
            return outcome
        blocks = {row[0]: _Block(*row) for row in conn.execute(BLOCKS, (claimed,)).fetchall()}
        # Booked by another booker since our claim's snapshot was taken: nothing to do.
        blocks = {b: block for b, block in blocks.items() if block.status != "booked"}
        if blocks:
            work = conn.execute(WORK, (sorted(blocks),)).fetchall()
            self._book(conn, blocks, [Allocation(*row) for row in work], outcome)
        return outcome

    def committed(self) -> None:
        self._cursors = dict(self._next_cursors)

    def _claim(self, conn: psycopg.Connection) -> list[uuid.UUID]:
        """Due waiting block orders first, then new sells (their cash funds the buys), then
        new buys, which keep at least one place in a batch of two or more so that a steady
        stream of sells cannot starve them."""
        claimed = [row[0] for row in conn.execute(CLAIM_DUE, (self.batch_size,)).fetchall()]
        room = self.batch_size - len(claimed)
        if room > 0:
            claimed += self._claim_new(conn, "sell", room - 1 if room > 1 else room)
            claimed += self._claim_new(conn, "buy", self.batch_size - len(claimed))
        return claimed

    def _claim_new(self, conn: psycopg.Connection, side: str, limit: int) -> list[uuid.UUID]:
        cursor = self._cursors[side]
        if limit < 1:
            self._next_cursors[side] = cursor
            return []
        if cursor is None:
            rows = conn.execute(CLAIM_NEW_FROM_START, (side, limit)).fetchall()
        else:
            rows = conn.execute(CLAIM_NEW_AFTER, (side, *cursor, limit)).fetchall()
            if not rows:
                # Caught up: look once more from the start, for rows that committed late
                # behind the cursor (or were locked by a booker that then rolled back).
                rows = conn.execute(CLAIM_NEW_FROM_START, (side, limit)).fetchall()
        newest = max(((created, block) for block, created in rows), default=None)
        self._next_cursors[side] = newest
        return [block for block, _created in rows]

    def _book(self, conn, blocks: dict[uuid.UUID, _Block], work: list[Allocation], outcome):
        requests = sorted({b.request_id for b in blocks.values() if b.request_id is not None})
        if requests:
            conn.execute(LOCK_REQUESTS, (requests,))
        accounts = self._lock_accounts(conn, work)
        writes = _Writes()
        funded_later: set[uuid.UUID] | None = None  # asked once, at the first short buy

        # Per account: sells first (their proceeds fund the buys), then buys, in a fixed
        # order so that a retried transaction makes the same decisions.
        for item in sorted(work, key=lambda i: (i.account_id, i.side != "sell", i.block_order_id)):
            block = blocks[item.block_order_id]
            reason, detail = _rejection(item, accounts)
            if reason is None:
                account = accounts[item.account_id]
                move = cash_move(item.side, item.quantity, item.price, self.fees)
                cash_after = account.cash + move.delta
                if cash_after < 0 and item.side == "buy":
                    if funded_later is None:
                        funded_later = self._sells_to_come(conn, blocks, work)
                    if item.request_id in funded_later:
                        block.waiting += 1
                        outcome.waiting += 1
                        continue
                if cash_after < 0:
                    reason = "insufficient_cash"
                    detail = (
                        f"{item.side} of {item.quantity} at {item.price} moves cash by "
                        f"{move.delta}; the account has {account.cash}"
                    )
                elif cash_after >= CASH_LIMIT:
                    reason, detail = "out_of_range", f"cash would reach {cash_after}"
            if reason is not None:
                block.dead_letters += 1
                outcome.dead_letters[reason] += 1
                writes.dead_letters.append(
                    (item.block_order_id, item.account_id, item.snapshot_seq, item.security_id,
                     item.side, item.quantity, item.price, reason, detail)
                )  # fmt: skip
                continue
            self._apply(item, account, move, writes)
            block.booked += 1
            outcome.bookings += 1
            outcome.shares += item.quantity

        rows = []
        for block in blocks.values():
            state = "waiting" if block.waiting else "booked"
            if state == "booked":
                outcome.blocks_booked += 1
            else:
                outcome.blocks_waiting += 1
            rows.append(
                (block.block_order_id, block.request_id, block.snapshot_seq, state,
                 block.attempts + 1, block.booked, block.dead_letters, block.waiting,
                 block.now + self.hold if block.waiting else None, block.now)
            )  # fmt: skip
        self._write(conn, accounts, writes, rows)

    def _apply(self, item: Allocation, account: _Account, move, writes: _Writes) -> None:
        before = account.positions.get(item.security_id, 0)
        after = before + item.quantity if item.side == "buy" else before - item.quantity
        cash_after = account.cash + move.delta
        account.seq += 1
        writes.bookings.append(
            (item.block_order_id, item.account_id, account.seq, item.snapshot_seq,
             item.security_id, item.side, item.quantity, item.price, move.amount,
             move.cash_amount, move.fee, account.cash, cash_after, before, after)
        )  # fmt: skip
        writes.settlements.append(
            (settlement_id(item.block_order_id, item.account_id), item.block_order_id,
             item.account_id, item.security_id, item.side, item.quantity, item.price,
             move.amount, move.cash_amount, move.fee, move.delta, item.trade_date,
             settle_date(item.trade_date))
        )  # fmt: skip
        account.cash = cash_after
        account.positions[item.security_id] = after
        writes.positions.add((item.account_id, item.security_id))
        if item.side == "sell":
            writes.sold_in.add(item.request_id)

    def _write(self, conn, accounts: dict[uuid.UUID, _Account], writes: _Writes, blocks):
        """Every row of the batch, in one statement per table (dead letters aside: rare)."""
        with conn.cursor() as cur:
            if writes.bookings:
                cur.execute(INSERT_BOOKINGS, _columns(writes.bookings))
                cur.execute(INSERT_SETTLEMENTS, _columns(writes.settlements))
                for statement, existed in ((UPDATE_POSITIONS, True), (INSERT_POSITIONS, False)):
                    rows = [
                        (a, s, accounts[a].positions[s])
                        for a, s in sorted(writes.positions)
                        if (s in accounts[a].held) == existed
                    ]
                    if rows:
                        cur.execute(statement, _columns(rows))
                ids = sorted({row[1] for row in writes.bookings})
                cur.execute(UPDATE_CASH, (ids, [accounts[a].cash for a in ids]))
            if writes.dead_letters:
                cur.executemany(INSERT_DEAD_LETTER, writes.dead_letters)
            cur.executemany(self._upsert_block, blocks)
            if writes.sold_in:
                # This transaction's block orders are written: they count as booked here.
                selling = cur.execute(SELLS_TO_COME, (sorted(writes.sold_in), [])).fetchall()
                sold_out = writes.sold_in - {row[0] for row in selling}
                if sold_out:
                    cur.execute(WAKE_WAITING, (sorted(sold_out),))

    # -- reads ----------------------------------------------------------------------------------

    def _lock_accounts(self, conn, work: list[Allocation]) -> dict[uuid.UUID, _Account]:
        """The existing accounts of ``work``, locked, with their cash, positions and last
        booking number."""
        ids = sorted({item.account_id for item in work})
        if not ids:
            return {}
        accounts = {
            account: _Account(cash=cash, seq=0)
            for account, cash in conn.execute(LOCK_ACCOUNTS, (ids,)).fetchall()
        }
        if not accounts:
            return accounts
        pairs = {
            (i.account_id, i.security_id)
            for i in work
            if i.account_id in accounts and i.security_id is not None
        }
        if pairs:
            owners = sorted({a for a, _ in pairs})
            securities = sorted({s for _, s in pairs})
            for account, security, quantity in conn.execute(
                POSITIONS, (owners, securities)
            ).fetchall():
                if (account, security) in pairs:
                    accounts[account].positions[security] = quantity
                    accounts[account].held.add(security)
        for account, seq in conn.execute(LAST_ACCOUNT_SEQ, (sorted(accounts),)).fetchall():
            accounts[account].seq = seq or 0
        return accounts

    @staticmethod
    def _sells_to_come(conn, blocks: dict[uuid.UUID, _Block], work) -> set[uuid.UUID]:
        """The requests (of the buys in hand) that still have a sell block order to book
        besides the ones in hand."""
        requests = sorted({i.request_id for i in work if i.side == "buy" and i.request_id})
        if not requests:
            return set()
        rows = conn.execute(SELLS_TO_COME, (requests, sorted(blocks))).fetchall()
        return {row[0] for row in rows}


def _rejection(item: Allocation, accounts: dict[uuid.UUID, _Account]):
    """(reason, detail) why ``item`` cannot be booked whatever the cash, or (None, None)."""
    if item.side is None or item.security_id is None or item.trade_date is None:
        return "unknown_order", (
            f"the customer or block order behind account {item.account_id}'s allocation in "
            f"block order {item.block_order_id} is not in the orders domain"
        )
    account = accounts.get(item.account_id)
    if account is None:
        return "unknown_account", f"account {item.account_id} is not in holdings.accounts"
    held = account.positions.get(item.security_id, 0)
    if item.side == "sell" and item.quantity > held:
        return "oversell", (
            f"sell of {item.quantity} shares of {item.security_id}; the position holds {held}"
        )
    if item.side == "buy" and held + item.quantity > POSITION_LIMIT:
        return "out_of_range", f"the position would reach {held + item.quantity} shares"
    return None, None


def _columns(rows: list[tuple]) -> list[list]:
    """Rows as one list per column: the parameters of an unnest() statement."""
    return [list(column) for column in zip(*rows, strict=True)]

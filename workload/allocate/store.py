"""Applying executions to the allocations domain, in one transaction per batch.

The effect is exactly once however often an execution is delivered:

1. every execution becomes a *fill* keyed by its execution id (``ON CONFLICT DO NOTHING``: a
   redelivered one changes nothing);
2. a block order's fill state is the **contiguous prefix** of its fills in ``seq`` order:
   ``block_fills.applied_seq`` says how far it reaches. Fills that arrive early (a bust before
   the execute it breaks, a later seq before an earlier one) stay ``pending`` until the gap
   closes, so the state never depends on the order of arrival;
3. the prefix is applied with :class:`workload.fairprice.BlockFill` (exact arithmetic, the
   same rules as the property tests); a fill that cannot apply (an overfill, a bust of
   nothing, a replace out of bounds, a second execution with the same seq) is marked
   ``rejected`` with its reason and dead-lettered by the caller, and the prefix moves past it;
4. every ``snapshot_every`` applied fills, and always on completion, a fair-price snapshot is
   written: the cumulative filled quantity, the average price, and every account's pro-rata
   share at that price (largest remainder, never above its order);
5. a completed block order goes to the OMS outbox, once.

A batch costs a constant number of round trips, whatever its size (reads are set-based, and
writes are sent as a few pipelined ``executemany`` statements): that is what lets the
micro-batch and block strategies amortise round trips, and what the experiment measures.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import psycopg
from psycopg import sql

from workload.dialect import Dialect
from workload.envelope import Execution
from workload.fairprice import BlockFill, price_units

NOTIONAL_UNIT = Decimal("0.0001")

INSERT_FILLS = """
INSERT INTO allocations.fills
    (execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id,
     order_type, destination, executed_at)
SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::int8[], %s::text[], %s::int8[],
                     %s::numeric[], %s::uuid[], %s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT (execution_id) DO NOTHING
RETURNING execution_id
"""

OPEN_BLOCK_STATES = """
INSERT INTO allocations.block_fills
    (block_order_id, order_quantity, order_type, destination, filled_quantity, notional,
     applied_seq, executions_applied, since_snapshot, snapshot_seq, status)
SELECT b.block_order_id, b.quantity, b.order_type, b.destination, 0, 0, 0, 0, 0, 0, 'open'
  FROM orders.block_orders AS b WHERE b.block_order_id = ANY(%s)
ON CONFLICT (block_order_id) DO NOTHING
"""

LOCK_BLOCK_STATES = """
SELECT block_order_id, order_quantity, order_type, destination, filled_quantity, notional,
       applied_seq, executions_applied, since_snapshot, snapshot_seq, status
  FROM allocations.block_fills
 WHERE block_order_id = ANY(%s)
 ORDER BY block_order_id
   FOR UPDATE
"""

PENDING_FILLS = """
SELECT execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id,
       order_type, destination, executed_at
  FROM allocations.fills
 WHERE block_order_id = ANY(%s) AND status = 'pending'
 ORDER BY block_order_id, seq, execution_id
"""

BUST_TARGETS = """
SELECT execution_id, quantity, price, busted_by
  FROM allocations.fills
 WHERE execution_id = ANY(%s) AND status = 'applied' AND activity = 'execute'
"""

MARK_FILLS = """
UPDATE allocations.fills AS f
   SET status = u.status, reason = u.reason
  FROM unnest(%s::uuid[], %s::text[], %s::text[]) AS u(execution_id, status, reason)
 WHERE f.execution_id = u.execution_id
"""

MARK_BUSTED = """
UPDATE allocations.fills AS f
   SET busted_by = u.busted_by
  FROM unnest(%s::uuid[], %s::uuid[]) AS u(execution_id, busted_by)
 WHERE f.execution_id = u.execution_id
"""

UPDATE_BLOCK_STATE = """
UPDATE allocations.block_fills
   SET order_quantity = %s, order_type = %s, destination = %s, filled_quantity = %s,
       notional = %s, avg_price = %s, applied_seq = %s, executions_applied = %s,
       since_snapshot = %s, snapshot_seq = %s, status = %s, updated_at = now()
 WHERE block_order_id = %s
"""

INSERT_SNAPSHOT = """
INSERT INTO allocations.snapshots (block_order_id, snapshot_seq, filled_quantity, avg_price)
VALUES (%s, %s, %s, %s)
"""

OUTBOX = """
INSERT INTO allocations.oms_outbox
    (block_order_id, snapshot_seq, filled_quantity, avg_price, status)
VALUES (%s, %s, %s, %s, 'filled')
ON CONFLICT (block_order_id) DO NOTHING
"""

ALLOCATION_COLUMNS = ("block_order_id", "account_id", "quantity", "price", "snapshot_seq")
ALLOCATION_TYPES = ("uuid", "uuid", "int8", "numeric", "int8")


ALLOCATION_TABLES = ("fills", "block_fills", "snapshots", "account_allocations", "oms_outbox")


def reset_allocations(conn: psycopg.Connection) -> None:
    """Empty what allocation writes, so the same executions can be allocated again (the
    demo and the benchmarks compare strategies on the same data this way)."""
    conn.execute(
        sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier("allocations", t) for t in ALLOCATION_TABLES)
        )
    )


@dataclass(frozen=True)
class FillRow:
    """A stored fill, shaped as :class:`workload.fairprice.ExecutionLike`."""

    execution_id: uuid.UUID
    block_order_id: uuid.UUID
    seq: int
    activity: str
    quantity: int
    price: Decimal | None
    ref_execution_id: uuid.UUID | None
    order_type: str | None
    destination: str | None
    executed_at: datetime


@dataclass(frozen=True)
class Rejection:
    """A fill that cannot apply, for the dead-letter topic."""

    execution_id: uuid.UUID
    block_order_id: uuid.UUID
    reason: str
    detail: str
    fill: FillRow | Execution | None = None


@dataclass
class BatchOutcome:
    """What one transaction did; the consumer turns it into metrics and dead letters."""

    stored: int = 0  # new fills (not seen before)
    duplicates: int = 0  # deliveries of fills already stored
    applied: list[FillRow] = field(default_factory=list)  # now part of a block's state
    rejected: list[Rejection] = field(default_factory=list)
    snapshots: int = 0
    allocations_written: int = 0
    completed: list[uuid.UUID] = field(default_factory=list)


@dataclass
class _State:
    block_order_id: uuid.UUID
    order_quantity: int
    order_type: str | None
    destination: str | None
    filled: int
    notional: Decimal
    applied_seq: int
    executions_applied: int
    since_snapshot: int
    snapshot_seq: int
    status: str


class AllocationStore:
    """Applies batches of executions; one instance per consumer (it caches block orders).

    Customer orders never change once a block order exists, so they are read once per block
    order and kept; so is the fact that a block order exists. Both caches hold at most
    ``cache_size`` block orders, the least recently used dropped first, so that a consumer
    running for days keeps a constant footprint (a dropped block order is read again).
    """

    def __init__(self, dialect: Dialect, snapshot_every: int = 1, cache_size: int = 20_000):
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.dialect = dialect
        self.snapshot_every = snapshot_every
        self.cache_size = cache_size
        self._ordered: dict[uuid.UUID, dict[uuid.UUID, int]] = {}
        self._known: dict[uuid.UUID, None] = {}  # an ordered set, oldest use first

    # -- reads ------------------------------------------------------------------------------

    def _known_blocks(self, conn: psycopg.Connection, ids: set[uuid.UUID]) -> set[uuid.UUID]:
        known = {b for b in ids if _touch(self._known, b)}
        missing = ids - known
        if missing:
            rows = conn.execute(
                "SELECT block_order_id FROM orders.block_orders WHERE block_order_id = ANY(%s)",
                (list(missing),),
            ).fetchall()
            found = {r[0]: None for r in rows}
            known.update(found)
            _remember(self._known, found, self.cache_size)
        return known

    def _ordered_for(
        self, conn: psycopg.Connection, ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, dict[uuid.UUID, int]]:
        ordered = {b: self._ordered[b] for b in ids if _touch(self._ordered, b)}
        missing = [b for b in ids if b not in ordered]
        if missing:
            found: dict[uuid.UUID, dict[uuid.UUID, int]] = defaultdict(dict)
            for block, account, quantity in conn.execute(
                "SELECT block_order_id, account_id, quantity FROM orders.customer_orders "
                "WHERE block_order_id = ANY(%s)",
                (missing,),
            ).fetchall():
                found[block][account] = quantity
            ordered.update(found)
            _remember(self._ordered, found, self.cache_size)
        return {b: ordered.get(b, {}) for b in ids}

    # -- the transaction ----------------------------------------------------------------------

    def apply(self, conn: psycopg.Connection, executions: list[Execution]) -> BatchOutcome:
        """Store and apply ``executions``; must run inside a transaction (the retry helper's)."""
        outcome = BatchOutcome()
        if not executions:
            return outcome
        known = self._known_blocks(conn, {e.block_order_id for e in executions})
        for e in executions:
            if e.block_order_id not in known:
                outcome.rejected.append(
                    Rejection(
                        e.execution_id,
                        e.block_order_id,
                        "unknown_block_order",
                        f"block order {e.block_order_id} does not exist in orders.block_orders",
                        e,
                    )
                )
        incoming = [e for e in executions if e.block_order_id in known]
        if not incoming:
            return outcome
        stored = self._insert_fills(conn, incoming)
        outcome.stored = len(stored)
        outcome.duplicates = len(incoming) - len(stored)

        blocks = sorted({e.block_order_id for e in incoming})
        conn.execute(OPEN_BLOCK_STATES, (blocks,))
        states = {row[0]: _State(*row) for row in conn.execute(LOCK_BLOCK_STATES, (blocks,))}
        pending: dict[uuid.UUID, list[FillRow]] = defaultdict(list)
        for row in conn.execute(PENDING_FILLS, (blocks,)).fetchall():
            pending[row[1]].append(FillRow(*row))
        if not pending:
            return outcome  # every delivery was a duplicate of something already applied
        ordered = self._ordered_for(conn, list(pending))
        targets = self._bust_targets(conn, pending)

        writes = _Writes()
        for block_id, fills in pending.items():
            self._advance(states[block_id], fills, ordered[block_id], targets, outcome, writes)
        writes.flush(conn, self.dialect)
        return outcome

    def _insert_fills(self, conn: psycopg.Connection, incoming: list[Execution]) -> set:
        columns = list(
            zip(
                *(
                    (e.execution_id, e.block_order_id, e.seq, str(e.activity), e.quantity,
                     e.price, e.ref_execution_id, e.order_type, e.destination, e.executed_at)
                    for e in incoming
                ),
                strict=True,
            )
        )  # fmt: skip
        return {r[0] for r in conn.execute(INSERT_FILLS, [list(c) for c in columns]).fetchall()}

    def _bust_targets(
        self, conn: psycopg.Connection, pending: dict[uuid.UUID, list[FillRow]]
    ) -> dict[uuid.UUID, tuple[int, Decimal, uuid.UUID | None]]:
        refs = [
            f.ref_execution_id
            for fills in pending.values()
            for f in fills
            if f.activity == "bust" and f.ref_execution_id is not None
        ]
        if not refs:
            return {}
        rows = conn.execute(BUST_TARGETS, (refs,)).fetchall()
        return {eid: (qty, price, by) for eid, qty, price, by in rows}

    def _advance(self, state: _State, fills, ordered, targets, outcome, writes: _Writes):
        """Apply the block's contiguous run of pending fills; collect what to write."""
        live = {
            ref: (qty, price_units(price))
            for ref, (qty, price, by) in targets.items()
            if by is None
        }
        already_busted = frozenset(ref for ref, (_, _, by) in targets.items() if by is not None)
        fill = BlockFill(
            block_order_id=state.block_order_id,
            ordered=ordered,
            order_quantity=state.order_quantity,
            order_type=state.order_type,
            destination=state.destination,
            filled=state.filled,
            notional_units=int(state.notional / NOTIONAL_UNIT),
            last_seq=state.applied_seq,
            fills=live,
            busted=already_busted,
        )
        prefix: list[FillRow] = []
        for row in fills:
            if row.seq <= state.applied_seq:
                # Another execution already took this seq: two rows claim one position.
                writes.marks.append((row.execution_id, "rejected", "duplicate_seq"))
                outcome.rejected.append(
                    Rejection(
                        row.execution_id,
                        row.block_order_id,
                        "duplicate_seq",
                        f"seq {row.seq} of block order {row.block_order_id} is taken",
                        row,
                    )
                )
                continue
            if row.seq != state.applied_seq + 1:
                break  # a gap: the rest waits for the missing executions
            state.applied_seq = row.seq
            prefix.append(row)
        fill, applied, rejected = fill.apply_all(prefix)
        for row, exc in rejected:
            writes.marks.append((row.execution_id, "rejected", exc.reason))
            outcome.rejected.append(
                Rejection(row.execution_id, row.block_order_id, exc.reason, str(exc), row)
            )
        for row in applied:
            writes.marks.append((row.execution_id, "applied", None))
            if row.activity == "bust":
                writes.busted.append((row.ref_execution_id, row.execution_id))
        outcome.applied.extend(applied)
        applied_now = len(applied)

        state.filled = fill.filled
        state.notional = Decimal(fill.notional_units) * NOTIONAL_UNIT
        state.order_quantity = fill.order_quantity
        state.order_type, state.destination = fill.order_type, fill.destination
        state.executions_applied += applied_now
        state.since_snapshot += applied_now
        completes = fill.complete and state.status != "complete"
        if applied_now and (state.since_snapshot >= self.snapshot_every or completes):
            state.snapshot_seq += 1
            state.since_snapshot = 0
            snap = fill.snapshot(seq=state.snapshot_seq)
            writes.snapshots.append((state.block_order_id, snap.seq, snap.filled, snap.avg_price))
            writes.allocations.extend(
                (state.block_order_id, account, quantity, snap.avg_price, snap.seq)
                for account, quantity in snap.allocations.items()
            )
            outcome.snapshots += 1
            outcome.allocations_written += len(snap.allocations)
        if completes:
            state.status = "complete"
            writes.outbox.append(
                (state.block_order_id, state.snapshot_seq, state.filled, fill.avg_price)
            )
            outcome.completed.append(state.block_order_id)
        writes.states.append(
            (
                state.order_quantity, state.order_type, state.destination, state.filled,
                state.notional, fill.avg_price, state.applied_seq, state.executions_applied,
                state.since_snapshot, state.snapshot_seq, state.status, state.block_order_id,
            )
        )  # fmt: skip


def _touch(cache: dict, key) -> bool:
    """Whether ``key`` is cached; if so, it becomes the most recently used."""
    if key not in cache:
        return False
    cache[key] = cache.pop(key)
    return True


def _remember(cache: dict, entries: dict, limit: int) -> None:
    """Add ``entries``, then drop the least recently used beyond ``limit`` (the caller has
    already taken what it needs from them, so an eviction never loses a batch's data)."""
    cache.update(entries)
    while len(cache) > limit:
        del cache[next(iter(cache))]


@dataclass
class _Writes:
    """Every row a batch writes, sent at the end as a few pipelined statements."""

    marks: list[tuple[uuid.UUID, str, str | None]] = field(default_factory=list)
    busted: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    states: list[tuple] = field(default_factory=list)
    snapshots: list[tuple] = field(default_factory=list)
    allocations: list[tuple] = field(default_factory=list)
    outbox: list[tuple] = field(default_factory=list)

    def flush(self, conn: psycopg.Connection, dialect: Dialect) -> None:
        if self.marks:
            ids, statuses, reasons = (list(x) for x in zip(*self.marks, strict=True))
            conn.execute(MARK_FILLS, (ids, statuses, reasons))
        if self.busted:
            ids, by = (list(x) for x in zip(*self.busted, strict=True))
            conn.execute(MARK_BUSTED, (ids, by))
        if self.allocations:
            # Every account of every snapshotted block order, in one statement.
            statement = dialect.upsert_arrays(
                "allocations.account_allocations", ALLOCATION_COLUMNS, ALLOCATION_TYPES,
                key=ALLOCATION_COLUMNS[:2],
            )  # fmt: skip
            conn.execute(statement, [list(c) for c in zip(*self.allocations, strict=True)])
        with conn.cursor() as cur:
            for statement, rows in (
                (INSERT_SNAPSHOT, self.snapshots),
                (OUTBOX, self.outbox),
                (UPDATE_BLOCK_STATE, self.states),
            ):
                if rows:
                    cur.executemany(statement, rows)

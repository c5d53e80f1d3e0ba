"""Fair-price allocation: how a block order's fills are shared among its customer orders.

A block order aggregates customer orders, account -> ordered quantity q_i (sum Q). Executions
fill it over time. At any moment the net filled quantity F is split across accounts pro rata
and every account pays the same average price P. Everything here is exact integer or
:class:`~fractions.Fraction` arithmetic: no floats, and no :mod:`decimal` context whose
precision could round a large notional behind our back.

Rules, in one place:

* **Apportionment** (:func:`allocate_pro_rata`): largest remainder (Hamilton). Each account
  gets ``floor(F * q_i / Q)``; the shares left over go one each to the accounts with the
  largest remainders ``F * q_i mod Q``, ties broken by **ascending account key**. So keys must
  be mutually orderable (UUIDs, strings or ints, not a mix). Every account ends within one
  share of its exact pro-rata share, never above q_i, and the shares sum to F exactly.
* **Average price** (:func:`average_price`): ``P = sum(x_j * p_j) / F`` over the net
  (non-busted) executions, rounded to :data:`PRICE_PLACES` (6) decimal places with
  ROUND_HALF_EVEN. Every account is allocated at exactly this rounded P: an account's notional
  and cash in later phases are ``a_i * P``. The accounts' notionals therefore add up to the
  block's true notional only to within ``F * 0.5e-6``; that residual is the price of every
  account paying the same, published price.
* **Monotonicity**: largest remainder is *not* house-monotone (the Alabama paradox). With
  ordered ``{a: 1, b: 3, c: 3}`` a fill of 3 gives ``a`` one share and a fill of 4 gives it
  none. What does hold, and is tested: a larger fill never takes more than one share from
  any account (``a_i(F') >= a_i(F) - 1`` for ``F' >= F``), and never takes any when the fill
  grew by at least ``Q / q_i`` (then ``a_i(F') >= a_i(F)``). Both follow from the quota
  property ``floor(F q_i / Q) <= a_i <= ceil(F q_i / Q)``. This is why snapshots are
  cumulative and *replace* one another rather than being added up as deltas: an earlier
  partial snapshot may show an account one share that a later one takes back. Only the last
  snapshot of a block order is booked.

:class:`BlockFill` is the immutable state of one block order's fills. Applying an execution
returns a new state; applying the same execution id again changes nothing and says so, which
is what makes at-least-once delivery from a changefeed safe.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

PRICE_PLACES = 6
"""Decimal places of the published average price P (rounded ROUND_HALF_EVEN)."""

EXECUTION_PRICE_PLACES = 4
"""Decimal places of an execution price, as in trades.executions.price DECIMAL(18,4)."""

_PRICE_UNIT = 10**EXECUTION_PRICE_PLACES


# --------------------------------------------------------------------------------------------
# Apportionment and average price
# --------------------------------------------------------------------------------------------


def _check_ordered(ordered: Mapping[Any, int]) -> int:
    """Return Q after checking every ordered quantity is a positive int."""
    total = 0
    for key, quantity in ordered.items():
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
            raise ValueError(f"ordered quantity for {key!r} must be a positive int: {quantity!r}")
        total += quantity
    return total


def allocate_pro_rata(ordered: Mapping[K, int], filled: int) -> dict[K, int]:
    """Split ``filled`` shares over accounts in proportion to their ordered quantities.

    Largest remainder with the tie-break of the module docstring (larger remainder first, then
    ascending key). The result is keyed like ``ordered``, in ascending key order, so equal
    inputs give equal outputs whatever the insertion order of ``ordered``.

    Raises ValueError if a quantity is not a positive int, or unless 0 <= filled <= sum(q).
    """
    total = _check_ordered(ordered)
    if isinstance(filled, bool) or not isinstance(filled, int):
        raise ValueError(f"filled must be an int: {filled!r}")
    if filled < 0 or filled > total:
        raise ValueError(f"filled must be between 0 and the ordered total {total}: {filled}")
    keys = sorted(ordered)
    if total == 0:
        return {}
    shares = {}
    remainders = {}
    for key in keys:
        shares[key], remainders[key] = divmod(filled * ordered[key], total)
    left_over = filled - sum(shares.values())
    # Only accounts with a positive remainder can be chosen: the remainders sum to
    # left_over * total and each is below total, so more than left_over of them are positive.
    for key in sorted(keys, key=lambda k: -remainders[k])[:left_over]:
        shares[key] += 1
    return shares


def _round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest int, ties to even (denominator > 0)."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def _decimal_from_units(units: int, places: int) -> Decimal:
    """The exact Decimal units * 10**-places, built from digits so no context can round it."""
    sign = 1 if units < 0 else 0
    digits = tuple(int(c) for c in str(abs(units)))
    return Decimal((sign, digits, -places))


def price_units(price: Decimal) -> int:
    """An execution price in units of 10**-4, exactly; ValueError if it is not such a price."""
    if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
        raise ValueError(f"price must be a positive finite Decimal: {price!r}")
    scaled = Fraction(price) * _PRICE_UNIT
    if scaled.denominator != 1:
        raise ValueError(f"price has more than {EXECUTION_PRICE_PLACES} decimal places: {price}")
    return scaled.numerator


def average_price(notional_units: int, filled: int) -> Decimal | None:
    """P = notional / filled, rounded to PRICE_PLACES places half-even; None when nothing filled.

    ``notional_units`` is sum(x_j * p_j) in units of 10**-4 (an exact int).
    """
    if filled == 0:
        return None
    if filled < 0:
        raise ValueError(f"filled must not be negative: {filled}")
    scale = 10 ** (PRICE_PLACES - EXECUTION_PRICE_PLACES)
    return _decimal_from_units(_round_half_even(notional_units * scale, filled), PRICE_PLACES)


# --------------------------------------------------------------------------------------------
# One block order's fills
# --------------------------------------------------------------------------------------------


class ExecutionLike(Protocol):
    """What BlockFill reads from an execution (``workload.envelope.Execution`` fits)."""

    @property
    def execution_id(self) -> Hashable: ...
    @property
    def block_order_id(self) -> Hashable: ...
    @property
    def seq(self) -> int: ...
    @property
    def activity(self) -> str: ...
    @property
    def quantity(self) -> int: ...
    @property
    def price(self) -> Decimal | None: ...
    @property
    def ref_execution_id(self) -> Hashable | None: ...
    @property
    def order_type(self) -> str | None: ...
    @property
    def destination(self) -> str | None: ...


class FillRejected(ValueError):
    """An execution that cannot apply to the block order; the caller dead-letters it.

    ``reason`` is a short machine-friendly code, the message says what and why.
    """

    reason = "rejected"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.reason}: {detail}")
        self.detail = detail


class InvalidBust(FillRejected):
    """A bust names an execution that was never applied here, or is already busted."""

    reason = "invalid_bust"


class InvalidReplace(FillRejected):
    """A replace asks for a total below the net filled quantity or above the ordered total Q."""

    reason = "invalid_replace"


class Overfill(FillRejected):
    """An execute would take the net filled quantity above the current order quantity."""

    reason = "overfill"


class WrongBlockOrder(FillRejected):
    """The execution belongs to another block order."""

    reason = "wrong_block_order"


class InvalidExecution(FillRejected):
    """The execution itself is malformed (unknown activity, bad quantity or price)."""

    reason = "invalid_execution"


@dataclass(frozen=True)
class Snapshot:
    """The cumulative allocation of one block order as of execution sequence ``seq``.

    Cumulative: the snapshot with the highest seq fully determines the allocations and
    replaces every earlier one (see the module docstring on why they are not deltas).
    ``allocations`` is a fresh dict in ascending account order, owned by this snapshot.
    ``avg_price`` is None when nothing is filled; every account is allocated at exactly it.
    """

    block_order_id: Hashable
    seq: int
    filled: int
    avg_price: Decimal | None
    allocations: dict[Hashable, int]
    complete: bool

    def supersedes(self, other: Snapshot) -> bool:
        """True if this snapshot replaces ``other``: same block order, higher seq."""
        return self.block_order_id == other.block_order_id and self.seq > other.seq


@dataclass(frozen=True)
class ApplyResult:
    """The state after applying one execution; ``duplicate`` says it had been applied before."""

    fill: BlockFill
    duplicate: bool


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class BlockFill:
    """The immutable fill state of one block order. Build with :meth:`open`, then :meth:`apply`.

    ``fills`` maps each live (applied, not busted) execute to (quantity, price in 10**-4
    units), so a bust can remove exactly what its execute added. ``applied`` holds every
    execution id applied here (execute, bust and replace): a duplicate is recognized by id
    alone, since trades.executions is append-only and a row never changes.
    """

    block_order_id: Hashable
    ordered: Mapping[Hashable, int]
    order_quantity: int
    order_type: str | None = None
    destination: str | None = None
    filled: int = 0
    notional_units: int = 0
    last_seq: int = -1
    fills: Mapping[Hashable, tuple[int, int]] = field(default_factory=lambda: _frozen({}))
    applied: frozenset[Hashable] = frozenset()
    busted: frozenset[Hashable] = frozenset()

    @classmethod
    def open(
        cls,
        block_order_id: Hashable,
        ordered: Mapping[Hashable, int],
        order_type: str | None = None,
        destination: str | None = None,
    ) -> BlockFill:
        """A block order with nothing filled; its order quantity starts at Q = sum(q_i)."""
        total = _check_ordered(ordered)
        return cls(
            block_order_id=block_order_id,
            ordered=_frozen(ordered),
            order_quantity=total,
            order_type=order_type,
            destination=destination,
        )

    @property
    def ordered_total(self) -> int:
        """Q: the sum of the customer orders, the ceiling for any replace."""
        return sum(self.ordered.values())

    @property
    def notional(self) -> Decimal:
        """sum(x_j * p_j) over live executes, exactly (4 decimal places)."""
        return _decimal_from_units(self.notional_units, EXECUTION_PRICE_PLACES)

    @property
    def avg_price(self) -> Decimal | None:
        """The published average price P, or None when nothing is filled."""
        return average_price(self.notional_units, self.filled)

    @property
    def complete(self) -> bool:
        """True when the net filled quantity equals the current order quantity."""
        return self.filled == self.order_quantity

    def apply(self, execution: ExecutionLike) -> ApplyResult:
        """Apply one execution; raise a FillRejected subclass if it cannot apply.

        Idempotent: an execution id applied before returns this same state with
        ``duplicate=True``. A rejected execution leaves nothing behind, so the caller can
        dead-letter it and carry on with this state.
        """
        if execution.execution_id in self.applied:
            self._check_block(execution)
            return ApplyResult(self, duplicate=True)
        work = _Work.of(self)
        work.apply(execution)
        return ApplyResult(work.freeze(self), duplicate=False)

    def apply_all(
        self, executions: Iterable[ExecutionLike]
    ) -> tuple[BlockFill, list[ExecutionLike], list[tuple[ExecutionLike, FillRejected]]]:
        """Apply executions in order, as repeated :meth:`apply` would, in one working copy.

        Returns the final state, the executions applied (duplicates left out) and the
        rejected ones with their reason. Folding :meth:`apply` copies the state per
        execution, which makes a block order of n executions cost n^2; this costs n.
        """
        work = _Work.of(self)
        applied: list[ExecutionLike] = []
        rejected: list[tuple[ExecutionLike, FillRejected]] = []
        for execution in executions:
            if execution.execution_id in work.applied:
                self._check_block(execution)
                continue
            try:
                work.apply(execution)
            except FillRejected as exc:
                rejected.append((execution, exc))
                continue
            applied.append(execution)
        return work.freeze(self), applied, rejected

    def _check_block(self, execution: ExecutionLike) -> None:
        if execution.block_order_id != self.block_order_id:
            raise WrongBlockOrder(
                f"execution {execution.execution_id} is for block order "
                f"{execution.block_order_id}, not {self.block_order_id}"
            )

    def snapshot(self, seq: int | None = None) -> Snapshot:
        """The cumulative allocation now, tagged ``seq`` (default: the highest seq applied).

        The default makes a snapshot a pure function of the executions applied, so replaying
        the same executions after a crash writes the same snapshot again.
        """
        tag = self.last_seq if seq is None else seq
        if isinstance(tag, bool) or not isinstance(tag, int):
            raise ValueError(f"seq must be an int: {tag!r}")
        return Snapshot(
            block_order_id=self.block_order_id,
            seq=tag,
            filled=self.filled,
            avg_price=self.avg_price,
            allocations=allocate_pro_rata(self.ordered, self.filled),
            complete=self.complete,
        )


@dataclass
class _Work:
    """A mutable copy of a :class:`BlockFill`'s changing parts, for applying executions.

    Every check happens before any change, so a rejected execution leaves it as it was.
    """

    block_order_id: Hashable
    ordered_total: int
    order_quantity: int
    order_type: str | None
    destination: str | None
    filled: int
    notional_units: int
    last_seq: int
    fills: dict[Hashable, tuple[int, int]]
    applied: set[Hashable]
    busted: set[Hashable]

    @classmethod
    def of(cls, state: BlockFill) -> _Work:
        return cls(
            block_order_id=state.block_order_id,
            ordered_total=state.ordered_total,
            order_quantity=state.order_quantity,
            order_type=state.order_type,
            destination=state.destination,
            filled=state.filled,
            notional_units=state.notional_units,
            last_seq=state.last_seq,
            fills=dict(state.fills),
            applied=set(state.applied),
            busted=set(state.busted),
        )

    def freeze(self, state: BlockFill) -> BlockFill:
        return replace(
            state,
            order_quantity=self.order_quantity,
            order_type=self.order_type,
            destination=self.destination,
            filled=self.filled,
            notional_units=self.notional_units,
            last_seq=self.last_seq,
            fills=_frozen(self.fills),
            applied=frozenset(self.applied),
            busted=frozenset(self.busted),
        )

    def apply(self, execution: ExecutionLike) -> None:
        if execution.block_order_id != self.block_order_id:
            raise WrongBlockOrder(
                f"execution {execution.execution_id} is for block order "
                f"{execution.block_order_id}, not {self.block_order_id}"
            )
        if execution.activity == "execute":
            self._execute(execution)
        elif execution.activity == "bust":
            self._bust(execution)
        elif execution.activity == "replace":
            self._replace(execution)
        else:
            raise InvalidExecution(f"unknown activity {execution.activity!r}")
        self.applied.add(execution.execution_id)
        self.last_seq = max(self.last_seq, execution.seq)

    def _execute(self, execution: ExecutionLike) -> None:
        quantity = execution.quantity
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
            raise InvalidExecution(f"execute quantity must be a positive int: {quantity!r}")
        if execution.price is None:
            raise InvalidExecution(f"execute {execution.execution_id} has no price")
        try:
            units = price_units(execution.price)
        except ValueError as exc:
            raise InvalidExecution(str(exc)) from None
        if self.filled + quantity > self.order_quantity:
            raise Overfill(
                f"execute {execution.execution_id} of {quantity} on {self.filled} filled "
                f"exceeds the order quantity {self.order_quantity}"
            )
        self.fills[execution.execution_id] = (quantity, units)
        self.filled += quantity
        self.notional_units += quantity * units

    def _bust(self, execution: ExecutionLike) -> None:
        ref = execution.ref_execution_id
        if ref is None:
            raise InvalidBust(f"bust {execution.execution_id} names no execution")
        if ref in self.busted:
            raise InvalidBust(f"bust {execution.execution_id}: {ref} is already busted")
        if ref not in self.fills:
            raise InvalidBust(f"bust {execution.execution_id}: no execute {ref} in this order")
        quantity, units = self.fills.pop(ref)
        self.filled -= quantity
        self.notional_units -= quantity * units
        self.busted.add(ref)

    def _replace(self, execution: ExecutionLike) -> None:
        quantity = execution.quantity
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise InvalidExecution(f"replace quantity must be an int: {quantity!r}")
        if quantity < self.filled or quantity > self.ordered_total:
            raise InvalidReplace(
                f"replace {execution.execution_id} to {quantity} outside "
                f"[{self.filled} filled, {self.ordered_total} ordered]"
            )
        # NULL order type or destination on a replace means "unchanged".
        self.order_quantity = quantity
        if execution.order_type is not None:
            self.order_type = execution.order_type
        if execution.destination is not None:
            self.destination = execution.destination


__all__ = [
    "EXECUTION_PRICE_PLACES",
    "PRICE_PLACES",
    "ApplyResult",
    "BlockFill",
    "ExecutionLike",
    "FillRejected",
    "InvalidBust",
    "InvalidExecution",
    "InvalidReplace",
    "Overfill",
    "Snapshot",
    "WrongBlockOrder",
    "allocate_pro_rata",
    "average_price",
    "price_units",
]

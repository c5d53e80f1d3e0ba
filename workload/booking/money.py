"""The money rules of booking: what a booking moves, to the last cent and share.

The rounding rule. An allocation's price is NUMERIC(18,6) (the block's fair average price,
see ``workload.fairprice``) and its quantity whole shares, so ``amount = quantity x price`` is
exact at 6 decimal places, while cash is NUMERIC(20,4). Each booking therefore moves cash by
``cash_amount = amount`` rounded **half-even to 4 places** (banker's rounding: no upward
drift over many bookings, the same tie rule as the average price), computed once per booking
and never summed before rounding. Both figures are recorded (``amount`` exact, ``cash_amount``
moved), and ``verify`` recomputes the rule in SQL (:data:`HALF_EVEN_SQL`).

Fees are a rate of the exact amount plus an amount per share, rounded the same way, and are
always paid by the account: a buy costs ``cash_amount + fee``, a sell brings
``cash_amount - fee``. Both default to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal

CASH_QUANTUM = Decimal("0.0001")  # NUMERIC(20,4)
AMOUNT_QUANTUM = Decimal("0.000001")  # quantity x NUMERIC(18,6)
CASH_LIMIT = Decimal("1E+16")  # NUMERIC(20,4) holds 16 integer digits
POSITION_LIMIT = 2**63 - 1  # INT8
SETTLEMENT_DAYS = 1  # T+1, the US equities cycle since May 2024 (weekends skipped, no holidays)

# Exact arithmetic in a context of our own: a caller's thread context cannot change a booking.
_DECIMAL = Context(prec=60, rounding=ROUND_HALF_EVEN)

HALF_EVEN_SQL = """(floor({x} * 10000)
        + CASE WHEN {x} * 10000 - floor({x} * 10000) > 0.5 THEN 1
               WHEN {x} * 10000 - floor({x} * 10000) < 0.5 THEN 0
               ELSE mod(floor({x} * 10000), 2) END) / 10000"""
"""``{x}`` (a non-negative NUMERIC) rounded half-even to 4 places, in SQL both servers run:
``round()`` cannot be used, as it rounds half away from zero on PostgreSQL and CockroachDB."""


def cash_rounded(amount: Decimal) -> Decimal:
    """``amount`` rounded half-even to cash's 4 places."""
    return amount.quantize(CASH_QUANTUM, rounding=ROUND_HALF_EVEN, context=_DECIMAL)


@dataclass(frozen=True)
class Fees:
    rate: Decimal = Decimal(0)  # a fraction of the exact amount (0.0005 = 5 basis points)
    per_share: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not (self.rate.is_finite() and self.per_share.is_finite()):
            raise ValueError("fees must be finite numbers")
        if self.rate < 0 or self.per_share < 0:
            raise ValueError("fees cannot be negative")
        if self.rate >= 1:
            raise ValueError("a fee rate is a fraction of the amount, below 1")

    def on(self, quantity: int, amount: Decimal) -> Decimal:
        raw = _DECIMAL.add(
            _DECIMAL.multiply(self.per_share, Decimal(quantity)),
            _DECIMAL.multiply(self.rate, amount),
        )
        return cash_rounded(raw)


@dataclass(frozen=True)
class CashMove:
    """What one booking does to an account's cash."""

    amount: Decimal  # quantity x price, exact
    cash_amount: Decimal  # amount, rounded half-even to 4 places
    fee: Decimal
    delta: Decimal  # the signed change of the account's cash


def cash_move(side: str, quantity: int, price: Decimal, fees: Fees) -> CashMove:
    amount = _DECIMAL.multiply(Decimal(quantity), price).quantize(AMOUNT_QUANTUM, context=_DECIMAL)
    cash_amount = cash_rounded(amount)
    fee = fees.on(quantity, amount)
    if side == "buy":
        delta = -(cash_amount + fee)
    elif side == "sell":
        delta = cash_amount - fee
    else:
        raise ValueError(f"side must be buy or sell, not {side!r}")
    return CashMove(amount, cash_amount, fee, delta)


def settle_date(trade_date: date, days: int = SETTLEMENT_DAYS) -> date:
    """``days`` business days after ``trade_date`` (Saturdays and Sundays skipped)."""
    current = trade_date
    remaining = days
    while remaining > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            remaining -= 1
    return current

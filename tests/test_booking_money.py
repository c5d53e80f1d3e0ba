"""The booking money rules: half-even cash rounding (in Python and in verify's SQL), fees,
settlement dates, and the settlement message codec."""

import random
import uuid
from datetime import date
from decimal import Decimal

import psycopg
import pytest

from workload.booking.money import HALF_EVEN_SQL, Fees, cash_move, cash_rounded, settle_date
from workload.booking.settlement import SETTLEMENT_COLUMNS, decode, encode, settlement_id


@pytest.mark.parametrize(
    ("amount", "cash"),
    [
        ("1.00005", "1.0000"),  # a tie goes to the even neighbour ...
        ("1.00015", "1.0002"),  # ... up or down
        ("2.99995", "3.0000"),
        ("1.000251", "1.0003"),  # not a tie: nearest
        ("1.000249", "1.0002"),
        ("0.000050", "0.0000"),
        ("12345678.123456", "12345678.1235"),
    ],
)
def test_cash_is_rounded_half_even_to_four_places(amount, cash):
    assert str(cash_rounded(Decimal(amount))) == cash


def test_a_buy_costs_the_rounded_amount_plus_fees_and_a_sell_brings_it_less_fees():
    fees = Fees(rate=Decimal("0.001"), per_share=Decimal("0.01"))
    buy = cash_move("buy", 3, Decimal("10.000050"), fees)
    assert buy.amount == Decimal("30.000150")  # exact
    assert buy.cash_amount == Decimal("30.0002")  # 300001.5 ten-thousandths: even is ...02
    assert buy.fee == Decimal("0.0600")  # 3 x 0.01 + 0.001 x 30.00015 = 0.06000015
    assert buy.delta == Decimal("-30.0602")
    sell = cash_move("sell", 3, Decimal("10.000050"), fees)
    assert sell.delta == Decimal("29.9402")
    assert cash_move("sell", 7, Decimal("1.5"), Fees()).delta == Decimal("10.5000")


@pytest.mark.parametrize(
    "fees",
    [{"rate": Decimal(-1)}, {"rate": Decimal(1)}, {"per_share": Decimal("-0.01")},
     {"per_share": Decimal("NaN")}],
)  # fmt: skip
def test_fees_are_checked(fees):
    with pytest.raises(ValueError):
        Fees(**fees)


def test_only_buys_and_sells_move_cash():
    with pytest.raises(ValueError):
        cash_move("hold", 1, Decimal(1), Fees())


def test_settlement_is_one_business_day_later():
    assert settle_date(date(2026, 1, 28)) == date(2026, 1, 29)  # Wednesday -> Thursday
    assert settle_date(date(2026, 1, 30)) == date(2026, 2, 2)  # Friday -> Monday
    assert settle_date(date(2026, 1, 31)) == date(2026, 2, 2)  # Saturday -> Monday


def test_a_settlement_message_carries_the_row_exactly_keyed_by_its_id():
    block, account = uuid.uuid4(), uuid.uuid4()
    sid = settlement_id(block, account)
    assert sid == settlement_id(block, account) != settlement_id(account, block)
    row = (sid, block, account, uuid.uuid4(), "buy", 12, Decimal("101.123457"),
           Decimal("1213.481484"), Decimal("1213.4815"), Decimal("0.0000"),
           Decimal("-1213.4815"), date(2026, 1, 30), date(2026, 2, 2))  # fmt: skip
    key, value = encode(row)
    assert key == str(sid).encode()
    message = decode(value)
    assert message["schema_version"] == 1
    assert tuple(message[c] for c in SETTLEMENT_COLUMNS) == row


@pytest.mark.integration
def test_verify_rounds_half_even_exactly_as_the_booker_does(lab_stack):
    """verify's SQL rule and the booker's Decimal rule agree, ties and all."""
    rng = random.Random(6)
    amounts = [Decimal(rng.randrange(0, 10**12)) / 10**6 for _ in range(2000)]
    amounts += [Decimal(f"{n}.{d:04d}{t}") for n in (0, 1, 7) for d in (0, 1, 2, 9999)
                for t in ("50", "49", "51", "00")]  # fmt: skip
    query = f"SELECT x, {HALF_EVEN_SQL.format(x='x')} FROM unnest(%s::numeric[]) AS t(x)"  # noqa: S608
    with psycopg.connect(lab_stack.dsn) as conn:
        rows = conn.execute(query, (amounts,)).fetchall()
    assert len(rows) == len(amounts)
    assert [(x, cash_rounded(x)) for x, _ in rows] == [(x, y) for x, y in rows]

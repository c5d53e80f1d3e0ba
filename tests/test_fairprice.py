"""Tests of the fair-price allocation arithmetic: worked examples first, then properties."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from workload.envelope import Execution
from workload.fairprice import (
    PRICE_PLACES,
    BlockFill,
    FillRejected,
    InvalidBust,
    InvalidExecution,
    InvalidReplace,
    Overfill,
    Snapshot,
    WrongBlockOrder,
    allocate_pro_rata,
    average_price,
    price_units,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BLOCK = uuid.UUID("00000000-0000-4000-8000-0000000000b1")
AT = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def execute(n: int, quantity: int, price: str, block: uuid.UUID = BLOCK) -> Execution:
    return Execution(_id(n), block, n, "execute", quantity, Decimal(price), None, None, None, AT)


def bust(n: int, ref: int) -> Execution:
    return Execution(_id(n), BLOCK, n, "bust", 0, None, _id(ref), None, None, AT)


def amend(n: int, quantity: int, order_type: str | None = None) -> Execution:
    return Execution(_id(n), BLOCK, n, "replace", quantity, None, None, order_type, "XNYS", AT)


def apply_all(fill: BlockFill, *executions: Execution) -> BlockFill:
    for e in executions:
        fill = fill.apply(e).fill
    return fill


# --- worked examples ------------------------------------------------------------------------


def test_even_orders_split_evenly() -> None:
    assert allocate_pro_rata({"a": 50, "b": 50}, 30) == {"a": 15, "b": 15}


def test_left_over_share_goes_to_the_largest_remainder() -> None:
    # Exact shares 3.5, 2.1, 1.4: floors 3, 2, 1 leave one share, and a's .5 is largest.
    assert allocate_pro_rata({"a": 5, "b": 3, "c": 2}, 7) == {"a": 4, "b": 2, "c": 1}


def test_equal_remainders_go_to_the_smaller_key() -> None:
    assert allocate_pro_rata({"c": 1, "b": 1, "a": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert allocate_pro_rata({3: 1, 1: 1, 2: 1}, 1) == {1: 1, 2: 0, 3: 0}


def test_nothing_and_everything_filled() -> None:
    assert allocate_pro_rata({"a": 7, "b": 3}, 0) == {"a": 0, "b": 0}
    assert allocate_pro_rata({"a": 7, "b": 3}, 10) == {"a": 7, "b": 3}
    assert allocate_pro_rata({}, 0) == {}


@pytest.mark.parametrize(
    ("ordered", "filled"),
    [
        ({"a": 7}, 8),
        ({"a": 7}, -1),
        ({"a": 0}, 0),
        ({"a": -3}, 0),
        ({"a": True}, 1),
        ({"a": 2.0}, 1),
        ({"a": 2}, 1.0),
        ({}, 1),
    ],
)
def test_impossible_inputs_raise(ordered: dict, filled: object) -> None:
    with pytest.raises(ValueError):
        allocate_pro_rata(ordered, filled)  # type: ignore[arg-type]


def test_alabama_paradox_a_larger_fill_can_take_a_share_back() -> None:
    # Why snapshots replace each other instead of adding up (module docstring).
    ordered = {"a": 1, "b": 3, "c": 3}
    assert allocate_pro_rata(ordered, 3) == {"a": 1, "b": 1, "c": 1}
    assert allocate_pro_rata(ordered, 4) == {"a": 0, "b": 2, "c": 2}


def test_average_price_of_two_executions() -> None:
    fill = apply_all(
        BlockFill.open(BLOCK, {"a": 300, "b": 100}),
        execute(1, 100, "10.00"),
        execute(2, 300, "10.50"),
    )
    assert fill.notional == Decimal("4150.0000")
    assert fill.avg_price == Decimal("10.375000")
    assert str(fill.avg_price) == "10.375000"


@pytest.mark.parametrize(
    ("second_price", "expected"),
    [
        ("10.0001", "10.000088"),  # 80.0007 / 8 = 10.0000875: a tie, rounds up to even 8
        ("10.0003", "10.000262"),  # 80.0021 / 8 = 10.0002625: a tie, stays at even 2
        ("10.0002", "10.000175"),  # 80.0014 / 8 = 10.000175 exactly
    ],
)
def test_average_price_rounds_half_even_to_six_places(second_price: str, expected: str) -> None:
    fill = apply_all(
        BlockFill.open(BLOCK, {"a": 8}), execute(1, 1, "10.0000"), execute(2, 7, second_price)
    )
    assert fill.avg_price == Decimal(expected)
    assert fill.avg_price.as_tuple().exponent == -PRICE_PLACES


def test_nothing_filled_has_no_price() -> None:
    assert average_price(0, 0) is None
    assert BlockFill.open(BLOCK, {"a": 1}).snapshot(0).avg_price is None


def test_price_units_are_exact_or_refused() -> None:
    assert price_units(Decimal("101.25")) == 1_012_500
    assert price_units(Decimal("0.0001")) == 1
    for bad in ("0", "-1", "1.00001", "NaN", "Infinity"):
        with pytest.raises(ValueError):
            price_units(Decimal(bad))


def test_a_block_order_from_first_fill_to_complete() -> None:
    fill = BlockFill.open(BLOCK, {"acct-1": 60, "acct-2": 40}, "limit", "XNAS")
    fill = fill.apply(execute(1, 50, "10.00")).fill
    first = fill.snapshot()
    assert first == Snapshot(
        BLOCK, 1, 50, Decimal("10.000000"), {"acct-1": 30, "acct-2": 20}, False
    )
    fill = fill.apply(execute(2, 50, "11.00")).fill
    last = fill.snapshot()
    assert last == Snapshot(BLOCK, 2, 100, Decimal("10.500000"), {"acct-1": 60, "acct-2": 40}, True)
    assert last.supersedes(first)
    assert not first.supersedes(last)


def test_applying_an_execution_twice_changes_nothing_and_says_so() -> None:
    once = BlockFill.open(BLOCK, {"a": 10}).apply(execute(1, 4, "9.99"))
    twice = once.fill.apply(execute(1, 4, "9.99"))
    assert not once.duplicate
    assert twice.duplicate
    assert twice.fill is once.fill


def test_a_bust_removes_its_execution() -> None:
    before = apply_all(BlockFill.open(BLOCK, {"a": 10}), execute(1, 4, "9.99"))
    busted = apply_all(before, execute(2, 3, "10.05"), bust(3, ref=2))
    assert (busted.filled, busted.notional) == (before.filled, before.notional)
    assert busted.busted == {_id(2)}


def test_busting_an_unknown_or_busted_execution_is_refused() -> None:
    fill = apply_all(BlockFill.open(BLOCK, {"a": 10}), execute(1, 4, "9.99"), bust(2, ref=1))
    with pytest.raises(InvalidBust, match="already busted"):
        fill.apply(bust(3, ref=1))
    with pytest.raises(InvalidBust, match="no execute"):
        fill.apply(bust(3, ref=99))
    with pytest.raises(InvalidBust, match="no execute"):  # a bust names an execute, not a bust
        fill.apply(bust(3, ref=2))


def test_replace_stays_between_filled_and_ordered() -> None:
    fill = apply_all(BlockFill.open(BLOCK, {"a": 6, "b": 4}, "market", "XNAS"), execute(1, 5, "2"))
    with pytest.raises(InvalidReplace):
        fill.apply(amend(2, 4))
    with pytest.raises(InvalidReplace):
        fill.apply(amend(2, 11))
    lowered = fill.apply(amend(2, 5, "limit")).fill
    assert (lowered.order_quantity, lowered.order_type, lowered.destination) == (5, "limit", "XNYS")
    assert lowered.complete
    assert lowered.snapshot().allocations == {"a": 3, "b": 2}
    raised = lowered.apply(amend(3, 10)).fill
    assert (raised.order_quantity, raised.order_type) == (10, "limit")  # NULL: unchanged
    assert not raised.complete


def test_overfill_and_foreign_executions_are_refused() -> None:
    fill = apply_all(BlockFill.open(BLOCK, {"a": 10}), amend(1, 6))
    with pytest.raises(Overfill):
        fill.apply(execute(2, 7, "1"))
    with pytest.raises(WrongBlockOrder):
        fill.apply(execute(2, 1, "1", block=_id(12345)))


def test_a_refused_execution_is_not_remembered() -> None:
    fill = BlockFill.open(BLOCK, {"a": 10})
    with pytest.raises(Overfill):
        fill.apply(execute(1, 11, "1"))
    assert not fill.apply(execute(1, 10, "1")).duplicate


def test_unknown_activity_is_refused() -> None:
    class Odd:
        execution_id = _id(1)
        block_order_id = BLOCK
        seq = 1
        activity = "cancel"
        quantity = 1
        price = None
        ref_execution_id = None
        order_type = None
        destination = None

    with pytest.raises(InvalidExecution):
        BlockFill.open(BLOCK, {"a": 1}).apply(Odd())


# --- properties of the apportionment ----------------------------------------------------------

accounts = st.one_of(
    st.dictionaries(st.text(max_size=6), st.integers(1, 10**6), min_size=1, max_size=25),
    st.dictionaries(st.integers(-1000, 1000), st.integers(1, 50), min_size=1, max_size=25),
)


@st.composite
def orders_and_fill(draw: st.DrawFn) -> tuple[dict, int]:
    ordered = draw(accounts)
    return ordered, draw(st.integers(0, sum(ordered.values())))


@FAST
@given(orders_and_fill())
def test_shares_sum_to_the_fill_and_respect_each_order(case: tuple[dict, int]) -> None:
    ordered, filled = case
    shares = allocate_pro_rata(ordered, filled)
    assert shares.keys() == ordered.keys()
    assert sum(shares.values()) == filled
    assert all(0 <= shares[k] <= ordered[k] for k in ordered)


@FAST
@given(orders_and_fill())
def test_every_account_is_within_one_share_of_its_exact_share(case: tuple[dict, int]) -> None:
    ordered, filled = case
    total = sum(ordered.values())
    shares = allocate_pro_rata(ordered, filled)
    for k, q in ordered.items():
        exact = Fraction(filled * q, total)
        assert abs(shares[k] - exact) < 1
        assert math.floor(exact) <= shares[k] <= math.ceil(exact)


@FAST
@given(orders_and_fill())
def test_left_over_shares_follow_the_documented_tie_break(case: tuple[dict, int]) -> None:
    ordered, filled = case
    total = sum(ordered.values())
    shares = allocate_pro_rata(ordered, filled)
    rounded_up = {k for k in ordered if shares[k] > filled * ordered[k] // total}
    for up in rounded_up:
        for down in ordered.keys() - rounded_up:
            up_rem, down_rem = filled * ordered[up] % total, filled * ordered[down] % total
            assert up_rem > down_rem or (up_rem == down_rem and up < down)


@FAST
@given(orders_and_fill(), st.randoms(use_true_random=False))
def test_same_input_same_output_whatever_the_insertion_order(case, rnd) -> None:
    ordered, filled = case
    items = list(ordered.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    first, second = allocate_pro_rata(ordered, filled), allocate_pro_rata(shuffled, filled)
    assert first == second
    assert list(first) == list(second) == sorted(ordered)


@st.composite
def orders_and_two_fills(draw: st.DrawFn) -> tuple[dict, int, int]:
    ordered = draw(accounts)
    low = draw(st.integers(0, sum(ordered.values())))
    return ordered, low, draw(st.integers(low, sum(ordered.values())))


@FAST
@given(orders_and_two_fills())
def test_a_larger_fill_takes_at_most_one_share_from_any_account(case) -> None:
    ordered, low, high = case
    before, after = allocate_pro_rata(ordered, low), allocate_pro_rata(ordered, high)
    assert all(after[k] >= before[k] - 1 for k in ordered)


@FAST
@given(orders_and_two_fills())
def test_a_fill_larger_by_q_over_q_i_never_gives_account_i_less(case) -> None:
    ordered, low, high = case
    total = sum(ordered.values())
    before, after = allocate_pro_rata(ordered, low), allocate_pro_rata(ordered, high)
    for k, q in ordered.items():
        if (high - low) * q >= total:
            assert after[k] >= before[k]


# --- properties of the price ------------------------------------------------------------------

prices = st.decimals(
    min_value=Decimal("0.0001"), max_value=Decimal("99999999999999.9999"), places=4
)
fills = st.lists(st.tuples(st.integers(1, 10**9), prices), min_size=1, max_size=12)


@FAST
@given(fills)
def test_average_price_is_the_exact_mean_rounded_half_even(executions) -> None:
    notional_units = sum(q * price_units(p) for q, p in executions)
    filled = sum(q for q, _ in executions)
    wide = Context(prec=100)
    exact = wide.divide(sum(wide.multiply(Decimal(q), p) for q, p in executions), Decimal(filled))
    expected = exact.quantize(Decimal(1).scaleb(-PRICE_PLACES), ROUND_HALF_EVEN, context=wide)
    assert average_price(notional_units, filled) == expected
    assert abs(Fraction(average_price(notional_units, filled)) - Fraction(exact)) <= Fraction(
        1, 2 * 10**PRICE_PLACES
    )


@FAST
@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=12), prices)
def test_one_price_averages_to_itself_however_large_the_notional(quantities, price) -> None:
    fill = BlockFill.open(BLOCK, {"a": sum(quantities)})
    for n, q in enumerate(quantities):
        fill = fill.apply(execute(n, q, str(price))).fill
    assert fill.avg_price == price
    assert fill.notional == sum(q * price for q in quantities)


# --- a block order under random executions, busts, replaces and redeliveries ------------------


class BlockOrderMachine(RuleBasedStateMachine):
    """Drives BlockFill against a plain model: a list of live executes and the order size."""

    def __init__(self) -> None:
        super().__init__()
        self.ordered = {"acct-a": 700, "acct-b": 250, "acct-c": 50}
        self.fill = BlockFill.open(BLOCK, self.ordered)
        self.live: dict[uuid.UUID, tuple[int, Decimal]] = {}
        self.busted: set[uuid.UUID] = set()
        self.order_quantity = 1000
        self.delivered: list[Execution] = []
        self.next_seq = 0
        self.last_snapshot: Snapshot | None = None

    def _seq(self) -> int:
        self.next_seq += 1
        return self.next_seq

    def _apply_new(self, e: Execution) -> None:
        result = self.fill.apply(e)
        assert not result.duplicate
        self.fill = result.fill
        self.delivered.append(e)

    @precondition(lambda self: self.fill.filled < self.order_quantity)
    @rule(data=st.data(), price=prices)
    def fill_some(self, data: st.DataObject, price: Decimal) -> None:
        room = self.order_quantity - self.fill.filled
        quantity = data.draw(st.integers(1, room))
        n = self._seq()
        self._apply_new(execute(n, quantity, str(price)))
        self.live[_id(n)] = (quantity, price)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def bust_one(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.live)))
        before_filled, before_notional = self.fill.filled, self.fill.notional
        quantity, price = self.live.pop(ref)
        self._apply_new(bust(self._seq(), ref.int))
        self.busted.add(ref)
        assert self.fill.filled == before_filled - quantity
        assert self.fill.notional == before_notional - quantity * price

    @rule(data=st.data())
    def bust_what_cannot_be_busted(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from([*sorted(self.busted), _id(10**9)]))
        before = self.fill
        with pytest.raises(InvalidBust):
            self.fill.apply(bust(self._seq(), ref.int))
        assert self.fill is before

    @rule(data=st.data())
    def amend_order(self, data: st.DataObject) -> None:
        quantity = data.draw(st.integers(self.fill.filled, 1000))
        self._apply_new(amend(self._seq(), quantity))
        self.order_quantity = quantity

    @rule(data=st.data())
    def replace_out_of_bounds(self, data: st.DataObject) -> None:
        below = st.integers(0, self.fill.filled - 1) if self.fill.filled else st.nothing()
        quantity = data.draw(st.one_of(below, st.integers(1001, 2000)))
        with pytest.raises(InvalidReplace):
            self.fill.apply(amend(self._seq(), quantity))

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        again = data.draw(st.sampled_from(self.delivered))
        result = self.fill.apply(again)
        assert result.duplicate
        assert result.fill is self.fill

    @rule()
    def take_snapshot(self) -> None:
        snapshot = self.fill.snapshot()
        if self.last_snapshot is not None and snapshot.seq != self.last_snapshot.seq:
            assert snapshot.supersedes(self.last_snapshot)
        self.last_snapshot = snapshot

    @invariant()
    def state_matches_the_model(self) -> None:
        filled = sum(q for q, _ in self.live.values())
        assert self.fill.filled == filled
        assert self.fill.notional == sum((q * p for q, p in self.live.values()), Decimal(0))
        assert self.fill.order_quantity == self.order_quantity
        assert 0 <= self.fill.filled <= self.fill.order_quantity <= self.fill.ordered_total
        assert self.fill.busted == self.busted

    @invariant()
    def snapshot_is_determined_by_the_fill(self) -> None:
        snapshot = self.fill.snapshot()
        assert snapshot.allocations == allocate_pro_rata(self.ordered, self.fill.filled)
        assert sum(snapshot.allocations.values()) == snapshot.filled == self.fill.filled
        assert snapshot.complete == (self.fill.filled == self.order_quantity)
        assert snapshot.avg_price == average_price(self.fill.notional_units, self.fill.filled)
        assert snapshot.seq == self.next_seq_applied()

    def next_seq_applied(self) -> int:
        return max((e.seq for e in self.delivered), default=-1)


BlockOrderMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
test_block_order_machine = BlockOrderMachine.TestCase


# --- applying a run at once ----------------------------------------------------------------


@st.composite
def execution_runs(draw: st.DrawFn) -> list[Execution]:
    """Valid and invalid executions mixed: overfills, busts of nothing, repeats, replaces."""
    events: list[Execution] = []
    for n in range(1, draw(st.integers(1, 40)) + 1):
        kind = draw(st.sampled_from(["execute", "execute", "execute", "bust", "replace", "again"]))
        if kind == "execute":
            events.append(execute(n, draw(st.integers(1, 60)), f"{draw(st.integers(1, 999))}.25"))
        elif kind == "bust":
            events.append(bust(n, draw(st.integers(1, n))))
        elif kind == "replace":
            events.append(amend(n, draw(st.integers(0, 400))))
        elif events:
            events.append(draw(st.sampled_from(events)))  # a redelivery
    return events


@FAST
@given(run=execution_runs())
def test_apply_all_equals_applying_one_by_one(run: list[Execution]) -> None:
    start = BlockFill.open(BLOCK, {"a": 100, "b": 150, "c": 50})
    folded, applied, rejected = start, [], []
    for e in run:
        try:
            result = folded.apply(e)
        except FillRejected as exc:
            rejected.append((e.execution_id, type(exc)))
            continue
        if not result.duplicate:
            applied.append(e.execution_id)
        folded = result.fill
    at_once, applied_at_once, rejected_at_once = start.apply_all(run)
    assert at_once == folded
    assert [e.execution_id for e in applied_at_once] == applied
    assert [(e.execution_id, type(exc)) for e, exc in rejected_at_once] == rejected

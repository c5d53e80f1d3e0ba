"""The generators' invariants and determinism, without a database."""

from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload import seed
from workload.errors import LabError

scales = st.builds(
    seed.Scale,
    securities=st.integers(1, 60),
    days=st.integers(1, 30),
    managers=st.integers(1, 3),
    models_per_manager=st.integers(1, 3),
    accounts=st.integers(1, 80),
    positions_per_account=st.integers(1, 12),
).filter(lambda s: s.positions_per_account <= s.securities)


def generate(scale, seed_value):
    securities = seed.generate_securities(scale, seed_value)
    prices = seed.generate_prices(scale, seed_value)
    holdings = seed.generate_holdings(scale, seed_value, prices.close[:, 0])
    return securities, prices, holdings


@settings(max_examples=60, deadline=None)
@given(scale=scales, seed_value=st.integers(0, 2**32 - 1))
def test_invariants_hold_for_any_scale_and_seed(scale, seed_value):
    securities, prices, holdings = generate(scale, seed_value)

    assert len(set(securities.ids)) == scale.securities
    assert len(set(securities.tickers)) == scale.securities
    assert all(t.isalpha() and t.isupper() and 3 <= len(t) <= 5 for t in securities.tickers)

    assert prices.open.shape == (scale.securities, scale.days)
    assert (prices.low > 0).all()
    assert (prices.low <= prices.open).all() and (prices.low <= prices.close).all()
    assert (prices.high >= prices.open).all() and (prices.high >= prices.close).all()
    assert (prices.volume > 0).all()
    assert all(d.weekday() < 5 for d in prices.days)
    assert prices.days == sorted(set(prices.days))

    assert (holdings.model_weights > 0).all()
    assert (holdings.model_weights.sum(axis=1) == seed.WEIGHT_UNITS).all()
    for row in holdings.model_securities:
        assert len(set(row.tolist())) == len(row)

    assert (holdings.account_cash >= 0).all()
    assert (holdings.position_quantity >= 1).all()
    pairs = set(
        zip(holdings.position_account.tolist(), holdings.position_security.tolist(), strict=False)
    )
    assert len(pairs) == len(holdings.position_account), "an account holds a security twice"
    assert set(holdings.position_account.tolist()) == set(range(scale.accounts))


def test_same_seed_same_data_other_seed_other_data():
    scale = seed.scale_for("small")
    a, b, c = generate(scale, 1), generate(scale, 1), generate(scale, 2)
    assert a[0].ids == b[0].ids and a[0].tickers == b[0].tickers
    assert np.array_equal(a[1].close, b[1].close)
    assert np.array_equal(a[2].position_quantity, b[2].position_quantity)
    assert a[2].account_ids == b[2].account_ids
    assert a[0].ids != c[0].ids
    assert not np.array_equal(a[1].close, c[1].close)


def test_domains_draw_from_their_own_streams():
    """More accounts must not reshuffle the securities or prices of the same seed."""
    small = seed.scale_for("small")
    more_accounts = seed.scale_for("small", accounts=small.accounts * 3)
    a, b = generate(small, 3), generate(more_accounts, 3)
    assert a[0].ids == b[0].ids
    assert np.array_equal(a[1].close, b[1].close)


def test_rows_are_exact_decimal_text():
    assert seed._ticks(np.array([1234567, 5, 10000])) == ["123.4567", "0.0005", "1.0000"]
    assert seed._ticks(np.array([12345678]), places=8) == ["0.12345678"]


def test_positions_text_matches_the_arrays():
    scale = seed.scale_for("small")
    securities, _, holdings = generate(scale, 4)
    text = "".join(seed.position_rows(holdings, securities, chunk=97))
    lines = text.splitlines()
    assert len(lines) == len(holdings.position_account)
    account, security, quantity = lines[10].split("\t")
    assert account == holdings.account_ids[holdings.position_account[10]]
    assert security == securities.ids[holdings.position_security[10]]
    assert int(quantity) == holdings.position_quantity[10]


def test_presets_are_what_the_docs_promise():
    large = seed.PRESETS["large"]
    assert large.accounts >= 100_000
    assert large.accounts * large.positions_per_account >= 1_000_000


def test_business_days_skip_weekends():
    days = seed.business_days(date(2026, 1, 2), 3)  # a Friday
    assert days == [date(2026, 1, 2), date(2026, 1, 5), date(2026, 1, 6)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"accounts": 0}, "--accounts must be at least 1"),
        ({"securities": -5}, "--securities must be at least 1"),
        ({"securities": 5, "positions_per_account": 6}, "cannot exceed --securities"),
    ],
)
def test_bad_scales_are_refused(overrides, message):
    with pytest.raises(LabError, match=message):
        seed.scale_for("small", **overrides)


def test_unknown_preset():
    with pytest.raises(LabError, match="unknown scale 'huge'"):
        seed.scale_for("huge")

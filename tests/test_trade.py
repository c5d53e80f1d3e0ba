"""The market generator: never overfills, busts only what it executed, resumes cleanly."""

import random
import uuid

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload.errors import LabError
from workload.rebalance import rebalance
from workload.trade import Market, OpenBlock, TradeOptions, run_bulk, run_stream

# -- the generator in memory (property-based: the space of orders and rates is large) ---------

blocks_strategy = st.lists(
    st.tuples(st.integers(1, 5_000), st.integers(1, 500), st.integers(0, 400)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    blocks=blocks_strategy,
    bust=st.floats(0, 0.3),
    replace=st.floats(0, 0.3),
    lot=st.integers(1, 100),
    max_lots=st.integers(1, 10),
    seed=st.integers(0, 2**32),
)
def test_replaying_the_events_never_overfills_and_ends_filled(
    blocks, bust, replace, lot, max_lots, seed
):
    options = TradeOptions(lot_size=lot, max_lots=max_lots, bust_rate=bust, replace_rate=replace)
    opened = [
        OpenBlock(uuid.UUID(int=i + 1), quantity=q, filled=0, next_seq=1, low=low, high=low + w)
        for i, (q, low, w) in enumerate((q, low + 1, w) for q, low, w in blocks)
    ]
    original = {b.block_order_id: b.quantity for b in opened}
    ranges = {b.block_order_id: (b.low, b.high) for b in opened}
    market = Market(opened, options, random.Random(seed))
    events = market.take(1_000_000)
    assert not market.open, "bulk generation stops only when every block order is filled"

    # Replay the rows alone, as a consumer would, and check every prefix.
    state = {bid: {"qty": q, "filled": 0, "live": {}, "seq": 0} for bid, q in original.items()}
    for e in events:
        s = state[e.block_order_id]
        assert e.seq == s["seq"] + 1
        s["seq"] = e.seq
        if e.activity == "execute":
            assert e.quantity > 0 and e.price is not None
            low, high = ranges[e.block_order_id]
            assert low <= e.price * 10_000 <= high
            s["live"][e.execution_id] = e.quantity
            s["filled"] += e.quantity
        elif e.activity == "bust":
            assert s["live"].pop(e.ref_execution_id) == e.quantity
            s["filled"] -= e.quantity
        else:
            assert e.activity == "replace" and e.price is None
            assert s["filled"] <= e.quantity < s["qty"]
            s["qty"] = e.quantity
        assert 0 <= s["filled"] <= s["qty"] <= original[e.block_order_id]
    for s in state.values():
        assert s["filled"] == s["qty"] > 0
    assert len({e.execution_id for e in events}) == len(events)


def test_options_are_validated():
    with pytest.raises(LabError, match="--lot-size"):
        TradeOptions(lot_size=0).validate()
    with pytest.raises(LabError, match="--bust-rate"):
        TradeOptions(bust_rate=0.9).validate()


# -- against the real embedded PostgreSQL -------------------------------------------------------


@pytest.fixture
def ordered_dsn(seeded_dsn):
    rebalance(seeded_dsn)
    return seeded_dsn


def fill_check(conn):
    """Per block order: net filled vs its last quantity, and whether any prefix overfilled."""
    return conn.execute(
        """WITH e AS (
             SELECT block_order_id, seq, activity, quantity,
                    sum(CASE activity WHEN 'execute' THEN quantity
                                      WHEN 'bust' THEN -quantity ELSE 0 END)
                        OVER (PARTITION BY block_order_id ORDER BY seq) AS net
               FROM trades.executions),
           q AS (
             SELECT b.block_order_id, b.status,
                    coalesce((SELECT e2.quantity FROM e e2
                               WHERE e2.block_order_id = b.block_order_id
                                 AND e2.activity = 'replace' ORDER BY e2.seq DESC LIMIT 1),
                             b.quantity) AS final_qty
               FROM orders.block_orders b)
           SELECT q.status, q.final_qty,
                  coalesce((SELECT net FROM e WHERE e.block_order_id = q.block_order_id
                             ORDER BY seq DESC LIMIT 1), 0) AS net,
                  coalesce((SELECT max(net) FROM e WHERE e.block_order_id = q.block_order_id), 0)
                      AS peak,
                  (SELECT count(*) = coalesce(max(seq), 0) FROM e
                    WHERE e.block_order_id = q.block_order_id) AS contiguous
             FROM q"""
    ).fetchall()


@pytest.mark.integration
def test_bulk_fills_every_block_order_exactly(ordered_dsn):
    with psycopg.connect(ordered_dsn, autocommit=True) as conn:
        report = run_bulk(conn, TradeOptions(seed=5))
        rows = fill_check(conn)
        busts_valid = conn.execute(
            """SELECT count(*) FROM trades.executions b
                 JOIN trades.executions x ON x.execution_id = b.ref_execution_id
                WHERE b.activity = 'bust'
                  AND (x.activity <> 'execute' OR x.block_order_id <> b.block_order_id
                       OR x.seq >= b.seq OR x.quantity <> b.quantity)"""
        ).fetchone()[0]
        double_busts = conn.execute(
            "SELECT count(*) FROM (SELECT ref_execution_id FROM trades.executions "
            "WHERE activity = 'bust' GROUP BY 1 HAVING count(*) > 1) t"
        ).fetchone()[0]
        prices_outside = conn.execute(
            """SELECT count(*) FROM trades.executions e
                 JOIN orders.block_orders b USING (block_order_id)
                 JOIN market.daily_prices p
                   ON p.security_id = b.security_id AND p.trade_date = b.trade_date
                WHERE e.activity = 'execute' AND NOT e.price BETWEEN p.low AND p.high"""
        ).fetchone()[0]
    assert report.executions > 500 and report.busts > 0 and report.replaces > 0
    assert all(status == "filled" for status, *_ in rows)
    assert all(net == final for _, final, net, _, _ in rows)
    assert all(peak <= final for _, final, _, peak, _ in rows), "a prefix overfilled an order"
    assert all(contiguous for *_, contiguous in rows)
    assert busts_valid == 0 and double_busts == 0 and prices_outside == 0


@pytest.mark.integration
def test_a_stream_interrupted_then_resumed_in_bulk_stays_consistent(ordered_dsn):
    with psycopg.connect(ordered_dsn, autocommit=True) as conn:
        streamed = run_stream(conn, TradeOptions(seed=1), rate=400, duration=0.5)
        assert 0 < streamed.executions <= 400 * 0.5 + 1
        resumed = run_bulk(conn, TradeOptions(seed=1))
        rows = fill_check(conn)
        (total,) = conn.execute("SELECT count(*) FROM trades.executions").fetchone()
    assert total == streamed.executions + resumed.executions
    assert all(status == "filled" and net == final and peak <= final and contiguous
               for status, final, net, peak, contiguous in rows)  # fmt: skip
    with psycopg.connect(ordered_dsn, autocommit=True) as conn:
        assert run_bulk(conn, TradeOptions()).executions == 0


@pytest.mark.integration
def test_the_same_seed_gives_the_same_executions(new_database):
    from workload import schema, seed
    from workload.dialect import detect

    digests = []
    for dsn in (new_database(), new_database()):
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.create(conn, detect(conn))
            seed.seed(conn, seed.scale_for("small"), 3)
        rebalance(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            run_bulk(conn, TradeOptions(seed=9))
            digests.append(
                conn.execute(
                    "SELECT md5(string_agg(execution_id::text || seq || activity || quantity "
                    "|| coalesce(price::text, ''), ',' ORDER BY execution_id)) "
                    "FROM trades.executions"
                ).fetchone()[0]
            )
    assert digests[0] == digests[1] is not None


@pytest.mark.integration
def test_trade_cli(ordered_dsn):
    from tests.conftest import run_cli

    result = run_cli("trade", "--dsn", ordered_dsn, "--rate", "200", "--duration", "1s")
    assert result.returncode == 0, result.stderr
    assert "executions in" in result.stdout
    result = run_cli("trade", "--dsn", ordered_dsn)
    assert result.returncode == 0 and "block orders filled" in result.stdout
    bad = run_cli("trade", "--dsn", ordered_dsn, "--rate", "5", "--duration", "soon")
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr

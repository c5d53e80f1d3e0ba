"""Booking against the real embedded servers: book after allocating, book twice, dead letters,
settlements that outlive a crash, and a booker killed mid-run and started again."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from decimal import ROUND_HALF_EVEN, Decimal

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from tests.conftest import REPO, run_cli
from workload.allocate.store import AllocationStore
from workload.booking import Booker, BookingOptions, print_report, run_booking
from workload.booking.settlement import SETTLEMENT_COLUMNS, decode
from workload.cli import build_parser
from workload.db import run_transaction
from workload.dialect import detect
from workload.envelope import Execution
from workload.rebalance import rebalance
from workload.trade import TradeOptions, run_bulk
from workload.verify import run_checks

pytestmark = pytest.mark.integration

EXECUTIONS = (
    "SELECT execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id, "
    "order_type, destination, executed_at FROM trades.executions ORDER BY executed_at, seq"
)
FINAL_ALLOCATIONS = """
SELECT a.block_order_id, a.account_id, a.quantity, a.price, c.security_id, c.side
  FROM allocations.oms_outbox o
  JOIN allocations.account_allocations a
    ON a.block_order_id = o.block_order_id AND a.snapshot_seq = o.snapshot_seq
  JOIN orders.customer_orders c
    ON c.block_order_id = a.block_order_id AND c.account_id = a.account_id
 WHERE a.quantity > 0
"""
_names = itertools.count(1)


@pytest.fixture
def allocated_dsn(seeded_dsn) -> str:
    """Small scale, rebalanced, traded, and every block order allocated into the outbox (the
    allocation consumers' store, without Kafka)."""
    rebalance(seeded_dsn)
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        run_bulk(conn, TradeOptions(seed=11))
        executions = [Execution(*row) for row in conn.execute(EXECUTIONS).fetchall()]
        store = AllocationStore(detect(conn), snapshot_every=50)
        for i in range(0, len(executions), 500):
            batch = executions[i : i + 500]
            run_transaction(conn, lambda c, b=batch: store.apply(c, b))
    return seeded_dsn


def topic_name() -> str:
    return f"settlements-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


def options(topic: str, **changes) -> BookingOptions:
    quick = {"until_idle": 0.5, "poll_interval": 0.05, "settlement_topic": topic}
    return BookingOptions(**{**quick, **changes})


def failed_checks(dsn: str) -> list:
    with psycopg.connect(dsn) as conn:
        return [(r.check.name, r.count, r.examples[:3]) for r in run_checks(conn) if not r.passed]


def holdings(dsn: str) -> tuple[dict, dict]:
    with psycopg.connect(dsn) as conn:
        cash = dict(conn.execute("SELECT account_id, cash FROM holdings.accounts").fetchall())
        positions = {
            (a, s): q
            for a, s, q in conn.execute(
                "SELECT account_id, security_id, quantity FROM holdings.positions"
            ).fetchall()
        }
    return cash, positions


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def digest(dsn: str) -> list:
    """Everything booking writes, in a comparable form."""
    return [
        rows(dsn, f"SELECT * FROM {table} ORDER BY 1, 2")  # noqa: S608 (constant names)
        for table in (
            "allocations.bookings", "allocations.settlements", "allocations.block_bookings",
            "allocations.booking_dead_letters", "holdings.positions", "holdings.accounts",
        )
    ]  # fmt: skip


def consume(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """Every message on ``topic`` (duplicates included), read by partition assignment: no
    consumer group join, nothing committed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"booking-test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages, read_to = [], dict.fromkeys(ends, 0)
        deadline = time.monotonic() + 30
        while any(read_to[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"topic {topic} not read to its end"
            for m in consumer.consume(500, timeout=0.5):
                assert m.error() is None, m.error()
                messages.append((m.key(), m.value()))
                read_to[m.partition()] = m.offset() + 1
        return messages
    finally:
        consumer.close()


def assert_topic_matches_settlements(bootstrap: str, topic: str, dsn: str) -> int:
    """Each settlement row is on the topic, keyed by its id, with its figures; duplicates
    (same key, same value) are allowed, nothing else is. Returns the number of messages."""
    messages = consume(bootstrap, topic)
    by_key = defaultdict(set)
    for key, value in messages:
        by_key[key].add(value)
    settlements = rows(
        dsn,
        f"SELECT {', '.join(SETTLEMENT_COLUMNS)} FROM allocations.settlements",  # noqa: S608
    )
    assert {str(r[0]).encode() for r in settlements} == set(by_key)
    for row in settlements:
        values = by_key[str(row[0]).encode()]
        assert len(values) == 1, "duplicates of a settlement must be identical"
        message = decode(next(iter(values)))
        assert tuple(message[c] for c in SETTLEMENT_COLUMNS) == row
    return len(messages)


def expected_holdings(before, allocations, dead: set) -> tuple[dict, dict]:
    """Holdings before plus every allocation that was not dead-lettered, computed here from
    the rule (quantity x price, half-even to 4 places), not from the bookings."""
    cash, positions = dict(before[0]), dict(before[1])
    for block, account, quantity, price, security, side in allocations:
        if (block, account) in dead:
            continue
        amount = (quantity * price).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
        sign = 1 if side == "buy" else -1
        cash[account] -= sign * amount
        positions[(account, security)] = positions.get((account, security), 0) + sign * quantity
    return cash, positions


# -- the tests ------------------------------------------------------------------------------


def test_book_after_allocate_then_verify_passes(allocated_dsn, lab_stack, capsys):
    before = holdings(allocated_dsn)
    allocations = rows(allocated_dsn, FINAL_ALLOCATIONS)
    topic = topic_name()

    report = run_booking(
        allocated_dsn, lab_stack.kafka_bootstrap, options(topic, workers=2, batch_size=3)
    )

    dead = rows(
        allocated_dsn,
        "SELECT block_order_id, account_id, reason, side, quantity, price "
        "FROM allocations.booking_dead_letters",
    )
    assert report.bookings + sum(report.dead_letters.values()) == len(allocations)
    assert report.bookings == rows(allocated_dsn, "SELECT count(*) FROM allocations.bookings")[0][0]
    assert report.waiting == report.not_started == report.settlements_unpublished == 0
    assert report.settlements_published == report.bookings
    # Rebalancing sized buys at the open; fills above it leave some accounts short of cash.
    assert set(report.dead_letters) <= {"insufficient_cash"}
    assert failed_checks(allocated_dsn) == []

    cash, positions = holdings(allocated_dsn)
    expected_cash, expected_positions = expected_holdings(
        before, allocations, {(b, a) for b, a, *_ in dead}
    )
    assert cash == expected_cash
    assert positions == expected_positions
    for _block, account, reason, side, quantity, price in dead:
        # Dead-lettered only when even the request's every sell could not pay for it.
        assert reason == "insufficient_cash" and side == "buy"
        assert cash[account] < quantity * price

    assert assert_topic_matches_settlements(lab_stack.kafka_bootstrap, topic, allocated_dsn) >= (
        report.bookings
    )
    print_report(report)
    out = capsys.readouterr().out
    assert f"booked {report.bookings:,} allocations" in out and topic in out


def test_booking_twice_changes_nothing(allocated_dsn, lab_stack):
    topic = topic_name()
    first = run_booking(allocated_dsn, lab_stack.kafka_bootstrap, options(topic))
    assert first.bookings > 0
    booked = digest(allocated_dsn)

    again = run_booking(allocated_dsn, lab_stack.kafka_bootstrap, options(topic, workers=2))

    assert (again.bookings, again.blocks_booked, again.settlements_published) == (0, 0, 0)
    assert not again.dead_letters
    assert digest(allocated_dsn) == booked
    assert failed_checks(allocated_dsn) == []


def test_bad_allocations_are_dead_lettered_and_the_rest_is_booked(allocated_dsn, lab_stack):
    allocations = rows(allocated_dsn, FINAL_ALLOCATIONS)
    gone = allocations[0][1]  # an account that closed after its orders were allocated
    sell = next(a for a in allocations if a[5] == "sell" and a[1] != gone)
    block, oversold, quantity, _price, security, _side = sell
    with psycopg.connect(allocated_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM holdings.positions WHERE account_id = %s", (gone,))
        conn.execute("DELETE FROM holdings.accounts WHERE account_id = %s", (gone,))
        conn.execute(
            "UPDATE holdings.positions SET quantity = %s "
            "WHERE account_id = %s AND security_id = %s",
            (quantity - 1, oversold, security),
        )

    report = run_booking(allocated_dsn, lab_stack.kafka_bootstrap, options(topic_name()))

    letters = {
        (b, a): (reason, detail)
        for b, a, reason, detail in rows(
            allocated_dsn,
            "SELECT block_order_id, account_id, reason, detail "
            "FROM allocations.booking_dead_letters",
        )
    }
    gone_allocations = {(b, a) for b, a, *_ in allocations if a == gone}
    assert {k for k, (reason, _) in letters.items() if reason == "unknown_account"} == (
        gone_allocations
    )
    assert letters[(block, oversold)][0] == "oversell"
    assert f"the position holds {quantity - 1}" in letters[(block, oversold)][1]
    counts = Counter(reason for reason, _ in letters.values())
    assert report.dead_letters == counts
    assert counts["unknown_account"] == len(gone_allocations) and counts["oversell"] == 1
    # The run went on: everything else is booked, and the books still add up.
    assert report.bookings + len(letters) == len(allocations)
    assert report.waiting == report.not_started == 0
    assert failed_checks(allocated_dsn) == []


def test_settlements_committed_but_not_published_are_published_later(allocated_dsn, lab_stack):
    """What a crash between the booking's commit and the publish leaves behind."""
    with psycopg.connect(allocated_dsn, autocommit=True) as conn:
        booker = Booker(detect(conn), batch_size=4)
        while run_transaction(conn, booker.book_batch).claimed:
            booker.committed()
    unpublished = rows(
        allocated_dsn, "SELECT count(*) FROM allocations.settlements WHERE published_at IS NULL"
    )[0][0]
    bookings = rows(allocated_dsn, "SELECT count(*) FROM allocations.bookings")[0][0]
    assert unpublished == bookings > 0
    assert [name for name, *_ in failed_checks(allocated_dsn)] == ["settlement_published"]

    topic = topic_name()
    report = run_booking(allocated_dsn, lab_stack.kafka_bootstrap, options(topic))

    assert report.bookings == 0 and report.settlements_published == bookings
    assert failed_checks(allocated_dsn) == []
    assert assert_topic_matches_settlements(lab_stack.kafka_bootstrap, topic, allocated_dsn) == (
        bookings
    )


def test_a_booker_killed_mid_run_is_restarted_and_verify_passes(allocated_dsn, lab_stack):
    """SIGKILL the ``book`` command while it waits inside a booking transaction, start it
    again: everything is booked once, settled once, and on the topic."""
    app = f"booktest{os.getpid()}{next(_names)}"
    separator = "&" if "?" in allocated_dsn else "?"
    dsn = f"{allocated_dsn}{separator}application_name={app}"
    topic = topic_name()
    # With one worker claiming one block order at a time, sells are booked in outbox order.
    # Hold the row lock of the request whose first sell comes last: the booker books the
    # sells before it, then blocks inside the transaction that books that one.
    sells = rows(
        allocated_dsn,
        "SELECT b.request_id FROM allocations.oms_outbox o "
        "JOIN orders.block_orders b USING (block_order_id) WHERE b.side = 'sell' "
        "ORDER BY o.created_at, o.block_order_id",
    )
    first_sell = {}
    for position, (request,) in enumerate(sells):
        first_sell.setdefault(request, position)
    held = max(first_sell, key=first_sell.get)
    assert first_sell[held] > 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["PYTHONPATH"] = str(REPO)
    command = [
        sys.executable, "-m", "workload", "book", "--dsn", dsn, "--until-idle", "1",
        "--kafka-bootstrap", lab_stack.kafka_bootstrap, "--settlement-topic", topic,
    ]  # fmt: skip
    with psycopg.connect(allocated_dsn) as locker:
        locker.execute(
            "SELECT 1 FROM orders.rebalance_requests WHERE request_id = %s FOR UPDATE", (held,)
        )
        booker = subprocess.Popen(
            [*command, "--batch-size", "1"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not _waiting_on_a_lock(allocated_dsn, app):
                assert booker.poll() is None, booker.communicate()
                assert time.monotonic() < deadline, "the booker never reached the held lock"
                time.sleep(0.05)
            booked_before_kill = rows(allocated_dsn, "SELECT count(*) FROM allocations.bookings")
            booker.send_signal(signal.SIGKILL)
        finally:
            if booker.poll() is None:
                booker.kill()
            booker.communicate()
        assert booker.returncode == -signal.SIGKILL
        locker.rollback()
    assert booked_before_kill[0][0] > 0
    _wait_for_orphans(allocated_dsn, app)

    restarted = run_cli(*command[3:], "--workers", "2", timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert "booked " in restarted.stdout

    verified = run_cli("verify", "--dsn", allocated_dsn, timeout=60)
    assert verified.returncode == 0, verified.stdout
    assert "booking_has_one_settlement" in verified.stdout and "verify: passed" in verified.stdout
    assert_topic_matches_settlements(lab_stack.kafka_bootstrap, topic, allocated_dsn)


@pytest.mark.parametrize(
    "bad", [["--fee-rate", "-0.1"], ["--workers", "0"], ["--fee-per-share", "x"],
            ["--until-idle", "soon"]],
)  # fmt: skip
def test_book_rejects_bad_options_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["book", *bad])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def _waiting_on_a_lock(dsn: str, app: str) -> bool:
    return bool(
        rows_with(
            dsn,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = %s AND wait_event_type = 'Lock'",
            (app,),
        )[0][0]
    )


def _wait_for_orphans(dsn: str, app: str) -> None:
    """The killed process's server sessions end once they notice it is gone; end them if
    they do not (they belong to a process this test started and killed)."""
    deadline = time.monotonic() + 10
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    while rows_with(dsn, query, (app,)):
        if time.monotonic() > deadline:
            rows_with(
                dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            )
            break
        time.sleep(0.05)


def rows_with(dsn: str, query: str, params: tuple) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()

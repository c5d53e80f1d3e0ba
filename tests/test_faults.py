"""Faults the whole pipeline survives, each on a stack of its own, each ending with verify.

- PostgreSQL stopped and started again mid-run (same port, same data): the relay and the
  allocation consumers wait it out and carry on by themselves;
- the Kafka broker restarted (Tansu keeps nothing: topics, messages and committed offsets are
  gone): verify finds the executions that never reached allocations, and ``reconcile``
  re-drives them from the trades domain until verify passes.

The consumer SIGKILLed inside a transaction, the relay SIGKILLed mid-stream and the booker
SIGKILLed inside a transaction are in test_allocation_pipeline, test_cdc_relay and
test_booking.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.allocation_fixtures import (
    executions,
    publish,
    reset_allocations,
    state_digest,
    traded_dsn,
)
from tests.conftest import run_cli
from workload import schema, seed, topics
from workload.allocate import AllocatorOptions, RunOptions, run_allocation
from workload.allocate.runner import AllocationReport
from workload.allocate.store import AllocationStore
from workload.cdc import slot as slots
from workload.cdc.relay import Relay, RelayConfig, RelayOptions
from workload.cli import build_parser
from workload.commands.verify import print_results
from workload.db import run_transaction
from workload.dialect import detect
from workload.embedded import EmbeddedStack, StackInfo
from workload.errors import LabError
from workload.rebalance import rebalance
from workload.reconcile import ReconcileOptions, find_gap, reconcile
from workload.trade import TradeOptions, run_stream
from workload.verify import run_checks

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["traded_dsn"]

RATE = 150  # executions per second the market writes
RELAY_OPTIONS = RelayOptions(
    resolved_interval=0.2, status_interval=0.2, idle_poll=0.01, max_backoff=1.0
)


@dataclass
class Pipeline:
    """A stack of the test's own with the schema, seeded and rebalanced (no executions yet)."""

    stack: EmbeddedStack
    info: StackInfo
    topic: str

    @property
    def dsn(self) -> str:
        return self.info.dsn

    @property
    def bootstrap(self) -> str:
        return self.info.kafka_bootstrap

    def restart(self, name: str, down_for: float) -> None:
        """Stop one server, wait, start it again on the same port (and data directory)."""
        server = self.stack.postgres if name == "postgres" else self.stack.kafka
        record = self.stack.state.load()[name]
        server.stop(record)
        time.sleep(down_for)
        self.stack.state.update(server.start(fixed_port=record.port))


@pytest.fixture
def pipeline(stack_dir) -> Iterator[Pipeline]:
    stack = EmbeddedStack(stack_dir)
    with stack as info:
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            schema.create(conn, detect(conn))
            seed.seed(conn, seed.scale_for("small"), 7)
            slots.setup(conn, slots.SlotSpec())
        rebalance(info.dsn)
        topic = f"executions-{uuid.uuid4().hex[:8]}"
        topics.ensure_topics(info.kafka_bootstrap, topics.TopicSpec(name=topic, partitions=4))
        yield Pipeline(stack, info, topic)


@contextlib.contextmanager
def in_thread(name: str, target: Callable[[threading.Event], object]) -> Iterator[list]:
    """Run ``target(stop)`` in a thread for the block; yields [result or exception]."""
    stop = threading.Event()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(target(stop))
        except BaseException as exc:  # re-raised by the test
            outcome.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive(), f"{name} did not stop"
    if outcome and isinstance(outcome[0], BaseException):
        raise outcome[0]


def relay(p: Pipeline) -> Relay:
    config = RelayConfig(
        topics=topics.TopicSpec(name=p.topic, partitions=4),
        status_path=p.stack.run_dir / "cdc" / "relay.json",
        options=RELAY_OPTIONS,
    )
    return Relay(config, database_url=lambda: p.dsn, kafka_bootstrap=lambda: p.bootstrap)


def allocation(p: Pipeline) -> Callable[[threading.Event], AllocationReport]:
    options = AllocatorOptions(topic=p.topic, consumers=2, group_id=f"g-{uuid.uuid4().hex[:6]}")
    return lambda stop: run_allocation(p.dsn, p.bootstrap, options, RunOptions(), stop=stop)


def market(p: Pipeline, stop: threading.Event) -> int:
    """Trade every block order at RATE executions/s, riding out outages as a client would
    (a write that failed was rolled back; the market resumes from what was committed)."""
    rounds = 0
    while not stop.is_set():
        try:
            with psycopg.connect(p.dsn, autocommit=True, connect_timeout=2) as conn:
                run_stream(conn, TradeOptions(seed=11), rate=RATE, duration=600, stop=stop)
                return rounds
        except psycopg.OperationalError:
            rounds += 1
            stop.wait(0.2)
    return rounds


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchone()[0]


def executions_written(dsn: str) -> int:
    return count(dsn, "SELECT count(*) FROM trades.executions")


def fills(dsn: str) -> int:
    return count(dsn, "SELECT count(*) FROM allocations.fills")


def open_blocks(dsn: str) -> int:
    return count(
        dsn,
        "SELECT count(*) FROM orders.block_orders b WHERE b.quantity > coalesce(("
        "SELECT sum(CASE activity WHEN 'execute' THEN quantity WHEN 'bust' THEN -quantity END)"
        " FROM trades.executions e WHERE e.block_order_id = b.block_order_id), 0)",
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll until ``condition`` holds (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def failed_checks(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {r.check.name: r.count for r in run_checks(conn) if not r.passed}


def everything_allocated(dsn: str) -> bool:
    with contextlib.suppress(psycopg.OperationalError):
        written = executions_written(dsn)
        return written > 0 and fills(dsn) >= written
    return False


def test_postgres_restarted_mid_run_relay_and_consumers_resume_by_themselves(pipeline):
    p = pipeline
    the_relay = relay(p)
    with (
        in_thread("relay", the_relay.run),
        in_thread("allocate", allocation(p)) as allocated,
        in_thread("market", lambda stop: market(p, stop)) as traded,
    ):
        wait_for(lambda: fills(p.dsn) >= 200, "the pipeline to allocate some executions")
        # Redeliveries in hand when the server goes: the consumers must be mid-flush during
        # the outage (duplicates, so they change nothing once it is back).
        again = executions(p.dsn)
        p.stack.postgres.stop(p.stack.state.load()["postgres"])
        publish(p.bootstrap, p.topic, again)
        time.sleep(3)
        p.stack.state.update(
            p.stack.postgres.start(fixed_port=p.stack.state.load()["postgres"].port)
        )
        wait_for(lambda: bool(traded), "the market to trade every block order")
        wait_for(lambda: everything_allocated(p.dsn), "every execution to be allocated")
        # Past the outage: the relay's and the consumers' counters say it happened.
        assert the_relay.reconnects["database"] >= 1
        assert the_relay.state == "running"
    report = allocated[0]
    assert report.total.database_outages >= 1
    assert report.as_dict()["database_outages"] == report.total.database_outages
    assert report.total.duplicates >= len(again)
    assert failed_checks(p.dsn) == {}
    assert fills(p.dsn) == executions_written(p.dsn)


def missing_fills(dsn: str) -> int:
    return count(
        dsn,
        "SELECT count(*) FROM trades.executions e LEFT JOIN allocations.fills f "
        "USING (execution_id) WHERE f.execution_id IS NULL",
    )


def test_broker_restarted_loses_executions_and_reconcile_re_drives_them(pipeline, capsys):
    p = pipeline
    the_relay = relay(p)
    args = ("--dsn", p.dsn, "--kafka-bootstrap", p.bootstrap)
    with (
        in_thread("relay", the_relay.run),
        in_thread("market", lambda stop: market(p, stop)) as traded,
    ):
        with in_thread("allocate", allocation(p)):
            wait_for(lambda: fills(p.dsn) >= 200, "the pipeline to allocate some executions")
        # The consumers are gone; what the relay publishes now waits in the broker only.
        published = the_relay.metrics()["changes_published"]
        wait_for(
            lambda: the_relay.metrics()["changes_published"] >= published + 50,
            "the relay to publish executions nobody reads yet",
        )
        p.restart("kafka", down_for=1)
        drained = dict(until_idle=2.0, max_seconds=90)
        options = AllocatorOptions(topic=p.topic, consumers=2, group_id="after-restart")
        with in_thread(
            "allocate", lambda stop: run_allocation(
                p.dsn, p.bootstrap, options, RunOptions(**drained), stop=stop
            )
        ) as after:  # fmt: skip
            wait_for(lambda: bool(traded), "the market to trade every block order")
            wait_for(lambda: bool(after), "the consumers to drain the topic", timeout=90)
        assert the_relay.reconnects["kafka"] >= 1 and the_relay.state == "running"

        lost = missing_fills(p.dsn)
        assert lost >= 50, "what the broker held when it restarted never reached allocations"
        capsys.readouterr()
        with psycopg.connect(p.dsn) as conn:
            assert not print_results(run_checks(conn))  # what `verify` prints
        printed = capsys.readouterr().out
        assert "FAIL execution_has_one_fill" in printed and f"{lost} violation(s)" in printed

        dry = reconcile(p.dsn, p.bootstrap, ReconcileOptions(topic=p.topic, dry_run=True))
        assert (dry.found, dry.remaining, dry.published, dry.passed) == (lost, lost, 0, False)
        assert f"found {lost:,} execution(s) with no fill" in capsys.readouterr().out

        with in_thread("allocate", allocation(p)):
            fixed = run_cli("reconcile", *args, "--topic", p.topic, "--wait", "45s", timeout=120)
            assert fixed.returncode == 0, fixed.stdout + fixed.stderr
            assert f"re-publishing {lost:,} execution(s)" in fixed.stdout
    verified = run_cli("verify", *args, timeout=60)
    assert verified.returncode == 0, verified.stdout
    assert missing_fills(p.dsn) == 0


def test_reconcile_apply_allocates_what_never_came_exactly_once(lab_stack, traded_dsn):
    """Without a consumer group: --apply allocates the missing executions through the store,
    closing the gaps that held later fills pending; the end state is the undisturbed one."""
    items = executions(traded_dsn)
    with psycopg.connect(traded_dsn, autocommit=True) as conn:
        store = AllocationStore(detect(conn))
        run_transaction(conn, lambda c: store.apply(c, items))
        expected = state_digest(traded_dsn)
        reset_allocations(traded_dsn)
        lost = items[5::7]  # what a broker restart took: gaps in many block orders
        kept = [e for e in items if e not in lost]
        run_transaction(conn, lambda c: store.apply(c, kept))
        gap = find_gap(conn)
    assert {e.execution_id for e in gap.missing} == {e.execution_id for e in lost}
    assert len(gap.missing) == len(lost) and gap.waiting > 0 and gap.stuck == 0
    assert set(failed_checks(traded_dsn)) >= {"execution_has_one_fill", "no_fill_left_pending"}

    with pytest.raises(LabError, match="needs a Kafka bootstrap"):
        reconcile(traded_dsn, None, ReconcileOptions())
    said: list[str] = []
    report = reconcile(traded_dsn, None, ReconcileOptions(apply=True, batch_size=40), said.append)
    assert report.passed and report.remaining == 0 and report.rounds == 1
    assert report.found == len(lost) and report.applied >= len(lost) and report.rejected == 0
    assert said[0].startswith(f"found {len(lost):,} execution(s) with no fill")
    assert failed_checks(traded_dsn) == {}
    assert state_digest(traded_dsn) == expected

    again = reconcile(traded_dsn, None, ReconcileOptions(apply=True), said.append)
    assert (again.found, again.applied, again.passed) == (0, 0, True)  # nothing left to do


@pytest.mark.parametrize(
    "bad", [["--wait", "soon"], ["--batch-size", "x"], ["--rounds", "1.5"]]
)  # fmt: skip
def test_reconcile_rejects_bad_options_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["reconcile", *bad])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [({"batch_size": 0}, "--batch-size 0"), ({"rounds": 0}, "--rounds 0"),
     ({"wait": 0}, "--wait 0"), ({"topic": "no spaces"}, "not a Kafka topic name")],
)  # fmt: skip
def test_reconcile_options_say_what_is_wrong(options, message):
    with pytest.raises(LabError, match=message):
        ReconcileOptions(**options)

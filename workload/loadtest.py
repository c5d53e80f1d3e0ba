"""What a Locust load test needs from the kit, kept free of Locust and gevent.

The locustfiles (``locustfiles/``) hold users and wiring only; everything they measure or
decide lives here, so it can be tested without a load generator:

- :class:`LoadOptions`: the options of a load test, resolved to servers through
  :mod:`workload.settings` exactly as the CLI resolves them;
- :class:`ConsumerWorker`: one allocation consumer, run in a thread of its own, that hands
  each transaction back as a :class:`TransactionEvent` through a queue;
- :class:`OwnConnection`: the one database connection a consumer thread owns;
- :class:`Tally`: what one process measured in a run, shipped to the Locust master and merged;
- :class:`SlotLedger`: who holds which consumer slot (at most one per partition) and which
  market shard;
- :class:`RateWindow`: executions per second over the last seconds, for the Pipeline tab;
- :func:`cdc_lag`: how far CDC trails, where the kit can tell without Kafka's admin API;
- :func:`build_record`: the run record (:mod:`workload.records`) of a load test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import psycopg.waiting
from confluent_kafka import Consumer, KafkaException

from workload.allocate.consumer import (
    STRATEGIES,
    AllocationConsumer,
    AllocatorOptions,
    ConsumerMetrics,
)
from workload.allocate.recording import data_scale, describe_topology
from workload.allocate.store import AllocationStore
from workload.dialect import Dialect, detect
from workload.endpoints import Endpoints, resolve
from workload.errors import LabError
from workload.metrics import Histogram
from workload.records import (
    DEFAULT_RESULTS_DIR,
    DataScale,
    Results,
    RunRecord,
    empty_retries,
)
from workload.settings import KNOBS_BY_NAME, STACK_OUTPUTS_ENV, Settings, load_settings
from workload.topics import DEFAULT_TOPIC
from workload.verify import run_checks

log = logging.getLogger("workload.loadtest")

CONSUMER_SLOTS = "consumer"
MARKET_SHARDS = "market"


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """A load test's options; ``None`` means "not given" (the settings layers decide)."""

    strategy: str = "micro-batch"
    batch_size: int = 100
    linger_ms: float = 50.0
    topic: str = DEFAULT_TOPIC
    group: str = "allocation"
    dsn: str | None = None
    bootstrap: str | None = None
    topology: str | None = None
    stack_outputs: str | None = None
    run_dir: str | None = None
    results_dir: Path = DEFAULT_RESULTS_DIR
    market_rate: float = 20.0  # executions per second per market user
    market_shards: int = 8
    pool_size: int = 20  # connections for the users that run in greenlets, per process
    until_idle: float = 0.0  # seconds; 0: run until stopped
    verify: bool = True  # check the invariants when the test stops, for the run record

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> LoadOptions:
        """From Locust's parsed options (or any mapping with these names). The web UI sends
        an emptied text field as "", which means "not given" as much as a missing flag."""
        known = {name for name in cls.__dataclass_fields__}
        given = {
            k: (None if isinstance(v, str) and not v.strip() else v)
            for k, v in values.items()
            if k in known
        }
        if "skip_verify" in values:
            given["verify"] = not values["skip_verify"]
        defaults = cls()
        for name in ("strategy", "topic", "group", "results_dir"):
            if given.get(name) is None:
                given[name] = getattr(defaults, name)
        given["results_dir"] = Path(given["results_dir"])
        options = cls(**given)
        return options.validate()

    def validate(self) -> LoadOptions:
        if self.strategy not in STRATEGIES:
            raise LabError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.batch_size < 1 or self.linger_ms < 0:
            raise LabError("--batch-size must be at least 1 and --linger-ms at least 0")
        if self.market_rate <= 0 or self.market_shards < 1 or self.pool_size < 1:
            raise LabError("--market-rate, --market-shards and --pool-size must be positive")
        if self.until_idle < 0:
            raise LabError("--until-idle must be 0 (off) or a number of seconds")
        return self

    @property
    def allocator(self) -> AllocatorOptions:
        return AllocatorOptions(
            strategy=self.strategy,
            batch_size=self.batch_size,
            linger_ms=self.linger_ms,
            topic=self.topic,
            group_id=self.group,
        )

    def settings(self, env: Mapping[str, str] | None = None) -> Settings:
        """The kit's settings: stack outputs, then ``LAB_*`` variables, then these options.

        Locust already read LAB_DSN and friends into the options (each option names its
        variable), so those variables are not read a second time here: a field the user
        emptied in the web UI must stay empty rather than come back from the environment.
        """
        env = dict(os.environ if env is None else env)
        for name in ("dsn", "kafka_bootstrap", "topology", "run_dir"):
            env.pop(KNOBS_BY_NAME[name].env, None)
        env.pop(STACK_OUTPUTS_ENV, None)
        return load_settings(
            {
                "dsn": self.dsn,
                "kafka_bootstrap": self.bootstrap,
                "topology": self.topology,
                "run_dir": self.run_dir,
                "stack_outputs": self.stack_outputs,
            },
            env,
        )


@dataclass(frozen=True)
class Target:
    """The servers of a run, resolved once per run in each process."""

    settings: Settings
    endpoints: Endpoints
    dialect: Dialect


def resolve_target(options: LoadOptions, *, need_kafka: bool) -> Target:
    """Settings and servers as the CLI finds them (stack outputs, LAB_*, the embedded stack)."""
    settings = options.settings()
    endpoints = resolve(settings, need_kafka=need_kafka)
    try:
        with psycopg.connect(endpoints.dsn, autocommit=True, connect_timeout=10) as conn:
            dialect = detect(conn)
    except psycopg.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise LabError(f"cannot connect to the database: {reason}") from None
    return Target(settings, endpoints, dialect)


def partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    """The topic's partitions from the broker's metadata.

    A plain consumer's metadata call, not :func:`workload.topics.partition_count`: the admin
    API answers through ``concurrent.futures``, whose locks gevent's monkey-patching turns
    into greenlet locks that a librdkafka thread cannot wake (the wait ends in LoopExit).
    Blocking: call it off the event loop.
    """
    probe = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "crdblab-loadtest-probe",
            "allow.auto.create.topics": False,
            "log_level": 0,
        }
    )
    try:
        metadata = probe.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise LabError(
            f"cannot reach the Kafka broker at {bootstrap}: {exc.args[0].str()}"
        ) from None
    finally:
        probe.close()
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise LabError(
            f"Kafka topic {topic!r} does not exist at {bootstrap}; create it with "
            "`python -m workload cdc start` (or name another with --topic)"
        )
    return len(found.partitions)


# -- a consumer in a thread -------------------------------------------------------------------


class TransactionEvent(NamedTuple):
    """One allocation transaction, as the consumer's hook saw it."""

    strategy: str
    executions: int
    seconds: float
    error: BaseException | None
    ended_at: float  # time.time() when it ended


class ThreadConnection(psycopg.Connection):
    """A connection for a real OS thread: it waits for the server in C.

    Imported into a gevent-patched process, psycopg waits through gevent's ``select.poll``
    so that greenlets take turns; in a thread that wait runs on a gevent hub of the thread's
    own, a detour that costs a third of the round trips a thread could make. A thread needs
    no turns: psycopg's C wait blocks just the thread and releases the GIL meanwhile.
    """

    def wait(self, gen, interval=0.1, timeout=None):  # type: ignore[override]
        if _C_WAIT is None:  # psycopg without its C extension: its own choice
            return super().wait(gen, interval=interval, timeout=timeout)
        return _C_WAIT(gen, self.pgconn.socket, interval=interval, timeout=timeout)


_C_WAIT = getattr(psycopg.waiting, "wait_c", None)


class OwnConnection:
    """The pool interface :class:`AllocationConsumer` uses, over one connection of its own.

    A consumer runs in a thread of its own; sharing a pool with other threads would share the
    pool's locks, which in a gevent-patched process are greenlet locks that each thread must
    wait on through a hub of its own. One connection per consumer is what ``run_allocation``
    sizes its pool to anyway. A broken connection is replaced on the next use.
    """

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: psycopg.Connection | None = None

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """``timeout`` is the pool's wait for a free connection: this one never waits."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = ThreadConnection.connect(self.dsn, autocommit=True, connect_timeout=10)
        yield self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class StopFlag:
    """What :class:`AllocationConsumer` needs of a stop event: ``is_set`` and ``set``.

    A plain attribute read and write, which any thread can do without a lock; a
    ``threading.Event`` in a patched process would be a greenlet event.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class ConsumerWorker:
    """One member of the allocation consumer group: :meth:`run` in a thread of its own.

    Everything the thread reports crosses over through a ``deque`` (appends and pops are
    atomic): each transaction as a :class:`TransactionEvent`, and, once :meth:`run` returns,
    the consumer's metrics. While it runs, the event loop reads only plain integers of it
    (``allocated``, ``lag``), never its locks.
    """

    def __init__(self, name: str, options: AllocatorOptions, bootstrap: str, dsn: str,
                 dialect: Dialect):  # fmt: skip
        self.name = name
        self.events: deque[TransactionEvent] = deque()
        self.stop_flag = StopFlag()
        self._db = OwnConnection(dsn)
        self._consumer = AllocationConsumer(
            name,
            options,
            bootstrap,
            self._db,  # type: ignore[arg-type]  (the pool interface the consumer uses)
            AllocationStore(dialect, snapshot_every=options.snapshot_every),
            self.stop_flag,  # type: ignore[arg-type]
            self._on_transaction,
        )

    def _on_transaction(self, strategy, executions, seconds, error) -> None:
        self.events.append(TransactionEvent(strategy, executions, seconds, error, time.time()))

    def run(self) -> ConsumerMetrics:
        """Consume until :meth:`stop`; then flush, commit and leave the group. Blocking."""
        try:
            return self._consumer.run()
        finally:
            self._db.close()

    def stop(self) -> None:
        self.stop_flag.set()

    def drain(self) -> list[TransactionEvent]:
        out = []
        while self.events:
            out.append(self.events.popleft())
        return out

    @property
    def metrics(self) -> ConsumerMetrics:
        """Counters only while it runs; histograms and retries once :meth:`run` returned."""
        return self._consumer.metrics


# -- what a process measured --------------------------------------------------------------------


class WireHistogram(Histogram):
    """A :class:`Histogram` that travels as plain data, so the Locust master can merge the
    workers' histograms bucket by bucket (summaries of summaries would not be percentiles)."""

    def to_wire(self) -> dict:
        with self._lock:
            return {
                "buckets": [[b, n] for b, n in self._counts.items()],
                "count": self.count,
                "total": self.total,
                "max": self.max,
                "min": None if self.count == 0 else self.min,
            }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> WireHistogram:
        h = cls()
        h._counts = {int(b): int(n) for b, n in wire["buckets"]}
        h.count, h.total, h.max = int(wire["count"]), float(wire["total"]), float(wire["max"])
        if wire.get("min") is not None:
            h.min = float(wire["min"])
        return h


@dataclass
class Tally:
    """What the users of one process measured in the current run.

    Counts are cumulative for the run, so the latest snapshot a worker sent is all the master
    needs (a lost report loses nothing). ``allocated`` and ``lag`` hold each consumer's latest
    reading by name, the ``finished`` part what consumers that stopped handed over.
    """

    transactions: int = 0
    failed_transactions: int = 0
    executions: int = 0  # in transactions: what they were given, duplicates included
    allocated: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    first_at: float | None = None
    last_at: float | None = None
    txn_latency: WireHistogram = field(default_factory=WireHistogram)
    e2e_latency: WireHistogram = field(default_factory=WireHistogram)
    retries: dict[str, Any] = field(default_factory=empty_retries)
    dead_letters: int = 0
    duplicates: int = 0

    @property
    def total_allocated(self) -> int:
        return sum(self.allocated.values())

    @property
    def total_lag(self) -> int | None:
        return sum(self.lag.values()) if self.lag else None

    @property
    def active_seconds(self) -> float:
        if self.first_at is None or self.last_at is None:
            return 0.0
        return max(self.last_at - self.first_at, 1e-9)

    def record(self, event: TransactionEvent) -> None:
        if event.error is not None:
            self.failed_transactions += 1
            return
        self.transactions += 1
        self.executions += event.executions
        self.txn_latency.record(event.seconds)
        started = event.ended_at - event.seconds
        self.first_at = started if self.first_at is None else min(self.first_at, started)
        self.last_at = event.ended_at if self.last_at is None else max(self.last_at, event.ended_at)

    def count_allocated(self, owner: str, allocated: int) -> None:
        self.allocated[owner] = allocated

    def consumer_finished(self, name: str, metrics: ConsumerMetrics) -> None:
        """Take over what a stopped consumer measured besides its allocations (counted by
        :meth:`count_allocated`); its thread has ended, so its histograms are free to read."""
        self.lag.pop(name, None)
        self.e2e_latency.merge(metrics.e2e_latency)
        self.add_retries(metrics.retries.as_dict())
        self.dead_letters += sum(metrics.dead_letters.values())
        self.duplicates += metrics.duplicates

    def add_retries(self, retries: Mapping[str, Any]) -> None:
        for key in ("transactions", "retries", "exhausted"):
            self.retries[key] += retries.get(key, 0)
        by_state = Counter(self.retries["by_sqlstate"])
        by_state.update(retries.get("by_sqlstate", {}))
        self.retries["by_sqlstate"] = dict(by_state)

    def to_wire(self) -> dict:
        return {
            "transactions": self.transactions,
            "failed_transactions": self.failed_transactions,
            "executions": self.executions,
            "allocated": dict(self.allocated),
            "lag": dict(self.lag),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "txn_latency": self.txn_latency.to_wire(),
            "e2e_latency": self.e2e_latency.to_wire(),
            "retries": self.retries,
            "dead_letters": self.dead_letters,
            "duplicates": self.duplicates,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Tally:
        return cls(
            transactions=wire["transactions"],
            failed_transactions=wire["failed_transactions"],
            executions=wire["executions"],
            allocated=dict(wire["allocated"]),
            lag=dict(wire["lag"]),
            first_at=wire["first_at"],
            last_at=wire["last_at"],
            txn_latency=WireHistogram.from_wire(wire["txn_latency"]),
            e2e_latency=WireHistogram.from_wire(wire["e2e_latency"]),
            retries=dict(wire["retries"]),
            dead_letters=wire["dead_letters"],
            duplicates=wire["duplicates"],
        )

    @classmethod
    def merged(cls, parts: list[Tally]) -> Tally:
        """The run as a whole. Owner names are unique per process (see the users), so the
        per-consumer readings add up without collisions."""
        total = cls()
        for part in parts:
            total.transactions += part.transactions
            total.failed_transactions += part.failed_transactions
            total.executions += part.executions
            total.allocated.update(part.allocated)
            total.lag.update(part.lag)
            for name, pick in (("first_at", min), ("last_at", max)):
                values = [v for v in (getattr(total, name), getattr(part, name)) if v is not None]
                setattr(total, name, pick(values) if values else None)
            total.txn_latency.merge(part.txn_latency)
            total.e2e_latency.merge(part.e2e_latency)
            total.add_retries(part.retries)
            total.dead_letters += part.dead_letters
            total.duplicates += part.duplicates
        return total


# -- slots and shards ---------------------------------------------------------------------------


class SlotLedger:
    """Numbered slots per kind, each held by at most one user at a time.

    ``consumer`` slots are the topic's partitions: a group member beyond them would get no
    partition, so such a user waits for a slot instead. ``market`` slots are the shards of the
    open block orders: two markets on one shard would write the same seq of a block order
    twice. One ledger serves the whole test: the local runner's, or the master's, which the
    workers ask (see ``locustfiles/lab_users.py``).
    """

    def __init__(self) -> None:
        self._capacity: dict[str, int] = {}
        self._held: dict[str, dict[int, str]] = {}

    def reset(self, capacities: Mapping[str, int]) -> None:
        self._capacity = dict(capacities)
        self._held = {kind: {} for kind in capacities}

    def capacity(self, kind: str) -> int:
        return self._capacity.get(kind, 0)

    def claim(self, kind: str, holder: str) -> int | None:
        """The lowest free slot, now held by ``holder``; None when all are taken."""
        held = self._held.get(kind)
        if held is None:
            return None
        for slot in range(self._capacity[kind]):
            if slot not in held:
                held[slot] = holder
                return slot
        return None

    def release(self, kind: str, slot: int, holder: str) -> None:
        held = self._held.get(kind, {})
        if held.get(slot) == holder:
            del held[slot]

    def held(self, kind: str) -> int:
        return len(self._held.get(kind, {}))


# -- live figures -------------------------------------------------------------------------------


class RateWindow:
    """A counter's rate over the last ``seconds``, from samples of its running total."""

    def __init__(self, seconds: float = 10.0):
        self.seconds = seconds
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, total: int) -> None:
        self._samples.append((at, total))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.seconds:
            self._samples.popleft()

    def reset(self) -> None:
        self._samples.clear()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def cdc_lag(target: Target) -> dict | None:
    """How far CDC trails, where the kit can tell; None where it cannot.

    PostgreSQL: the relay's commit-to-acknowledgement percentiles from its status file (since
    the relay started). CockroachDB: how far the changefeed's high-water mark trails the clock.
    Not ``workload.cdc.status``: that asks Kafka's admin API too (see :func:`partition_count`).
    """
    try:
        from workload import cdc
        from workload.cdc import changefeed
    except ImportError:  # a kit without CDC
        return None
    if target.dialect.is_cockroachdb:
        with psycopg.connect(target.endpoints.dsn, autocommit=True, connect_timeout=5) as conn:
            active = [job for job in changefeed.jobs(conn, target.dialect) if job["active"]]
        if not active or active[0]["high_water_lag_s"] is None:
            return None
        return {"source": "changefeed", "high_water_lag_ms": active[0]["high_water_lag_s"] * 1000}
    metrics = cdc.relay_metrics(target.settings.run_dir)
    if not metrics or not metrics.get("lag_ms") or not metrics["lag_ms"].get("count"):
        return None
    return {"source": "relay", "lag_ms": metrics["lag_ms"], "since": metrics.get("started_at")}


def cdc_lag_text(lag: dict | None) -> str:
    if lag is None:
        return "n/a"
    if lag["source"] == "changefeed":
        return f"{lag['high_water_lag_ms']:,.0f} ms behind (changefeed high-water mark)"
    summary = lag["lag_ms"]
    return f"p50 {summary['p50_ms']:,.1f} ms, p99 {summary['p99_ms']:,.1f} ms (relay)"


@dataclass(frozen=True)
class PipelineView:
    """The rows of the web UI's Pipeline tab."""

    topology: str
    executions_per_s: float
    cdc_lag: str
    consumer_lag: int | None
    consumers: int
    partitions: int | None

    def rows(self) -> list[dict[str, str]]:
        lag = "n/a" if self.consumer_lag is None else f"{self.consumer_lag:,} messages behind"
        members = str(self.consumers)
        if self.partitions:
            members += f" of {self.partitions} partitions"
        return [
            {"metric": "Topology under test", "value": self.topology},
            {"metric": "Allocated executions/s", "value": f"{self.executions_per_s:,.1f}"},
            {"metric": "CDC lag", "value": self.cdc_lag},
            {"metric": "Consumer lag", "value": lag},
            {"metric": "Consumers in the group", "value": members},
        ]


# -- the run record ---------------------------------------------------------------------------


def named_data(conn: psycopg.Connection, settings: Settings) -> DataScale:
    """The data's size; its scale and seed only when someone named them: the settings'
    defaults would label whatever the database holds."""
    named = settings.source_of("scale") != "default" or settings.source_of("seed") != "default"
    if named:
        return data_scale(conn, settings.scale, settings.seed)
    return data_scale(conn, None, None)


@dataclass(frozen=True)
class RunShape:
    """What a run was, beyond its options: for the record's strategy and knobs."""

    strategy: str
    knobs: dict[str, Any]
    started_at: str  # records.utc_now() at test start
    duration_s: float
    notes: str = ""


# Checks that a run stopped before it allocated everything fails without being wrong: they ask
# that nothing is lost or left waiting, which only a drained pipeline can answer.
COMPLETENESS_CHECKS = frozenset(
    {"execution_has_one_fill", "no_fill_left_pending", "outbox_booked", "settlement_published"}
)


def verify_outcome(conn: psycopg.Connection) -> tuple[str, str]:
    """``verify`` for a load test: passed when every check passes; skipped when only
    completeness checks fail (the test stopped mid-flight); failed when anything else does,
    since no stop makes an allocation inconsistent. Returns (outcome, note)."""
    failed = sorted(r.check.name for r in run_checks(conn) if not r.passed)
    if not failed:
        return "passed", ""
    if set(failed) <= COMPLETENESS_CHECKS:
        return "skipped", "stopped before every execution was allocated: " + ", ".join(failed)
    return "failed", "verify failed: " + ", ".join(failed)


def build_record(target: Target, tally: Tally, shape: RunShape, cdc: dict | None,
                 *, verify: bool = True) -> RunRecord:  # fmt: skip
    """The run record of a load test (source ``locust``), measured like ``allocate``'s:
    executions per second over the time from the first transaction to the last; with
    ``verify``, the invariants checked at its end (see :func:`verify_outcome`)."""
    outcome, note = "skipped", ""
    with psycopg.connect(target.endpoints.dsn, autocommit=True, connect_timeout=10) as conn:
        topology = describe_topology(target.endpoints, conn)
        data = named_data(conn, target.settings)
        if verify:
            outcome, note = verify_outcome(conn)
    notes = "; ".join(part for part in (shape.notes, note) if part)
    record = RunRecord.begin(topology, shape.strategy, "locust", knobs=shape.knobs, data=data,
                             notes=notes)  # fmt: skip
    record.started_at = shape.started_at
    active = tally.active_seconds
    allocated = tally.total_allocated
    results = Results(
        executions_allocated=allocated,
        executions_per_s=round(allocated / active, 1) if active else 0.0,
        transactions=tally.transactions,
        transactions_per_s=round(tally.transactions / active, 1) if active else 0.0,
        txn_latency_ms=tally.txn_latency.summary(),
        retries=tally.retries,
        cdc_lag_ms=cdc["lag_ms"] if cdc and cdc.get("source") == "relay" else None,
        e2e_latency_ms=tally.e2e_latency.summary() if tally.e2e_latency.count else None,
        consumer_lag=tally.total_lag,
        dead_letters=tally.dead_letters,
        errors=tally.failed_transactions,
        verify=outcome,
    )
    return record.finish(results, duration_s=shape.duration_s)

"""What every locustfile of the kit shares: its options, the clients each Locust process owns,
the abstract user, the run record and the web UI's Pipeline tab.

Keeping the event loop free
---------------------------
Locust runs every user of a process as a greenlet on one gevent loop, so a call that blocks
in C without yielding freezes every user of that process. Two clients do:

- confluent-kafka: ``consume``/``poll``/``commit``/``close`` block in librdkafka. Each
  allocation consumer therefore runs in a real OS thread from a gevent ``ThreadPool`` of its
  own (not the hub's pool, which gevent's DNS resolver needs); its transactions come back
  through a ``deque`` that the user's greenlet drains every tenth of a second and reports with
  ``events.request.fire`` and the time the thread measured. The consumer's thread owns its
  Kafka clients and its database connection; the loop never takes a lock of it.
- Kafka's admin API answers through ``concurrent.futures``, whose locks monkey-patching turns
  into greenlet locks that librdkafka's thread cannot wake: it is not used here at all (the
  partition count comes from a consumer's metadata call, in the thread pool).

psycopg 3 is gevent-aware: when it is imported after monkey-patching, it waits for the server
with the patched ``select.poll`` instead of its C wait, so a query in a greenlet yields to the
others (the market and transactions users rely on that). In a real thread of the patched
process the same wait runs on that thread's own gevent hub and blocks only that thread.

One ledger for the whole test (the local runner's, or the master's, which the workers ask by
message) hands out consumer slots, at most one per partition, and market shards, so users
spread over ``--processes`` or workers share one consumer group and never two markets a shard.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# The `locust` console script puts only this folder on sys.path; the kit sits one level up.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import gevent  # noqa: E402 (after the path fix above)
from flask import request as web_request  # noqa: E402
from gevent import GreenletExit  # noqa: E402
from gevent.event import AsyncResult  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402
from gevent.threadpool import ThreadPool  # noqa: E402
from locust import User, events  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from locust.runners import (  # noqa: E402
    STATE_RUNNING,
    STATE_SPAWNING,
    MasterRunner,
    WorkerRunner,
)

from workload import loadtest, records  # noqa: E402
from workload.allocate.consumer import STRATEGIES  # noqa: E402
from workload.db import RetryStats, open_pool  # noqa: E402
from workload.errors import LabError  # noqa: E402
from workload.loadtest import CONSUMER_SLOTS, MARKET_SHARDS, LoadOptions, Tally  # noqa: E402
from workload.trade import Market, TradeOptions  # noqa: E402
from workload.transaction_mix import load_accounts  # noqa: E402

log = logging.getLogger("crdblab.locust")

HAND_OVER_INTERVAL = 0.1  # seconds between a consumer user's looks at its thread's queue
MONITOR_INTERVAL = 1.0
CDC_LAG_INTERVAL = 5.0
CLAIM_TIMEOUT = 10.0
LEAVE_TIMEOUT = 60.0  # a consumer flushes, commits and leaves the group within this
WRAP_UP_TIMEOUT = 90.0
SLOT_RETRY = 2.0

MSG_CLAIM, MSG_CLAIMED, MSG_RELEASE = "crdblab:claim", "crdblab:claimed", "crdblab:release"
MSG_FINAL, MSG_WRAP_UP = "crdblab:final", "crdblab:wrap-up"


# -- options ----------------------------------------------------------------------------------


WEB_HOST_DEFAULT = "127.0.0.1"


@events.init_command_line_parser.add_listener
def add_options(parser, **_kwargs) -> None:
    """The kit's options: in the web UI's form, settable by LAB_* variables."""
    # The web UI starts and stops load against the database: loopback only unless asked
    # (`--web-host '*'` or LOCUST_WEB_HOST), where Locust's own default is every interface.
    parser.set_defaults(web_host=WEB_HOST_DEFAULT)
    d = LoadOptions()
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default=d.strategy, env_var="LAB_STRATEGY",
        help="allocation strategy of the consumer users",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, env_var="LAB_BATCH_SIZE",
        help="micro-batch: executions per transaction at most",
    )  # fmt: skip
    parser.add_argument(
        "--linger-ms", type=float, default=d.linger_ms, env_var="LAB_LINGER_MS",
        help="micro-batch: flush a partial batch after this long",
    )  # fmt: skip
    parser.add_argument(
        "--dsn", default="", env_var="LAB_DSN", is_secret=True,
        help="database URL; empty: the embedded stack of the run directory",
    )  # fmt: skip
    parser.add_argument(
        "--bootstrap", default="", env_var="LAB_KAFKA_BOOTSTRAP",
        help="Kafka bootstrap servers; empty: the embedded broker",
    )  # fmt: skip
    parser.add_argument(
        "--topology", default="", env_var="LAB_TOPOLOGY",
        help="name of the topology under test, recorded with the run",
    )  # fmt: skip
    parser.add_argument(
        "--stack-outputs", default="", env_var="LAB_STACK_OUTPUTS",
        help="JSON of `pulumi stack output --json --show-secrets`",
    )  # fmt: skip
    parser.add_argument(
        "--run-dir", default="", env_var="LAB_RUN_DIR",
        help="where the embedded stack keeps its state (default .lab)",
    )  # fmt: skip
    parser.add_argument("--topic", default=d.topic, env_var="LAB_TOPIC", help="executions topic")
    parser.add_argument("--group", default=d.group, env_var="LAB_GROUP", help="consumer group id")
    parser.add_argument(
        "--market-rate", type=float, default=d.market_rate, env_var="LAB_MARKET_RATE",
        help="executions per second of each market user",
    )  # fmt: skip
    parser.add_argument(
        "--market-shards", type=int, default=d.market_shards, env_var="LAB_MARKET_SHARDS",
        help="shards of the open block orders, one market user each at most",
    )  # fmt: skip
    parser.add_argument(
        "--pool-size", type=int, default=d.pool_size, env_var="LAB_POOL_SIZE",
        help="database connections per Locust process for the market and transactions users",
    )  # fmt: skip
    parser.add_argument(
        "--results-dir", default=str(d.results_dir), env_var="LAB_RESULTS_DIR",
        help="where the run record goes",
    )  # fmt: skip
    parser.add_argument(
        "--until-idle", type=float, default=d.until_idle, env_var="LAB_UNTIL_IDLE",
        include_in_web_ui=False,
        help="quit once the consumers drained the topic and allocated nothing for this many "
        "seconds (0: off); for headless runs and benchmarks",
    )  # fmt: skip
    parser.add_argument(
        "--skip-verify", action="store_true", env_var="LAB_SKIP_VERIFY",
        help="do not check the invariants when the test stops (the record says skipped)",
    )  # fmt: skip


# -- the process ------------------------------------------------------------------------------


class Lab:
    """The clients and measurements of one Locust process, for one run at a time."""

    def __init__(self) -> None:
        self.environment = None
        self.options: LoadOptions | None = None
        self.target: loadtest.Target | None = None
        self.failure: str | None = None
        self.running = False
        self.tally = Tally()
        self.retry_stats = RetryStats()
        self.ledger = loadtest.SlotLedger()
        self.partitions: int | None = None
        self.rate = loadtest.RateWindow()
        self.cdc: dict | None = None
        self.peak_users: Counter = Counter()
        self.last_consumer_lag: int | None = None  # the monitor's last reading while running
        self.started_at = records.utc_now()
        self.started = time.monotonic()
        self._threads: ThreadPool | None = None
        self._pool = None
        self._pool_lock = Semaphore()
        self._accounts: list | None = None
        self._names = itertools.count(1)
        self.pending_claims: dict[str, AsyncResult] = {}
        self.worker_tallies: dict[str, dict] = {}
        self.finals: set[str] = set()

    # -- roles --------------------------------------------------------------------------------

    @property
    def runner(self):
        return self.environment.runner

    @property
    def is_worker(self) -> bool:
        return isinstance(self.runner, WorkerRunner)

    @property
    def is_master(self) -> bool:
        return isinstance(self.runner, MasterRunner)

    @property
    def headless(self) -> bool:
        return bool(getattr(self.environment.parsed_options, "headless", False))

    def new_name(self, kind: str) -> str:
        """Unique across the processes of a test: the worker index tells them apart."""
        index = max(getattr(self.runner, "worker_index", 0), 0)
        return f"locust{index}-{kind}-{next(self._names)}"

    def user_kinds(self) -> dict[str, str]:
        classes = self.environment.available_user_classes or {
            c.__name__: c for c in self.environment.user_classes
        }
        return {name: getattr(c, "kind", "") for name, c in classes.items()}

    def needs_kafka(self) -> bool:
        return any(getattr(c, "needs_kafka", False) for c in self.environment.user_classes)

    # -- off the event loop -------------------------------------------------------------------

    def off_loop(self, fn, *args):
        """Run a blocking call in a real thread; this greenlet waits, the others run."""
        return self.threads(1).spawn(fn, *args).get()

    def threads(self, busy: int) -> ThreadPool:
        # Created on first use, after Locust forked its --processes, so no pool crosses a fork.
        if self._threads is None:
            self._threads = ThreadPool(8)
        if self._threads.maxsize < busy + 4:
            self._threads.maxsize = busy + 4
        return self._threads

    # -- a run --------------------------------------------------------------------------------

    def begin_run(self) -> None:
        self.running = True
        self.failure = None
        self.tally = Tally()
        self.retry_stats = RetryStats()
        self.rate.reset()
        self.cdc = None
        self.peak_users = Counter()
        self.last_consumer_lag = None
        self.worker_tallies.clear()
        self.finals.clear()
        self._accounts = None
        self.started_at = records.utc_now()
        self.started = time.monotonic()
        try:
            self.options = LoadOptions.from_values(vars(self.environment.parsed_options))
            self.target = loadtest.resolve_target(self.options, need_kafka=self.needs_kafka())
            if not self.is_worker:
                self.partitions = None
                if self.needs_kafka():
                    self.partitions = self.off_loop(
                        loadtest.partition_count,
                        self.target.endpoints.kafka_bootstrap,
                        self.options.topic,
                    )
                self.ledger.reset(
                    {
                        CONSUMER_SLOTS: self.partitions or 0,
                        MARKET_SHARDS: self.options.market_shards,
                    }
                )
        except LabError as exc:
            self.failure = str(exc)
            log.error("error: %s", exc)
            if not self.is_worker:
                # A run that cannot reach its servers ends here, in the UI as in a headless run.
                self.environment.process_exit_code = 2
                gevent.spawn(self.runner.quit if self.headless else self.runner.stop)

    def require_target(self) -> loadtest.Target:
        if self.target is None or self.failure:
            raise StopUser(self.failure or "the run has no servers (see the log)")
        return self.target

    def pool(self):
        """The process's connection pool for users that run in greenlets (opened on demand)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = open_pool(
                    self.require_target().endpoints.dsn, size=self.options.pool_size, name="locust"
                )
            return self._pool

    def accounts(self) -> list:
        if self._accounts is None:
            with self.pool().connection() as conn:
                self._accounts = load_accounts(conn)
        return self._accounts

    def close_pool(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def snapshot(self) -> Tally:
        """This process's tally, with the retries of the greenlet users counted in."""
        tally = Tally.from_wire(self.tally.to_wire())
        tally.add_retries(self.retry_stats.as_dict())
        return tally

    def run_tally(self) -> Tally:
        """The whole test's tally: this process's, or on the master every worker's."""
        if self.is_master:
            return Tally.merged([Tally.from_wire(t) for t in self.worker_tallies.values()])
        return self.snapshot()

    # -- slots --------------------------------------------------------------------------------

    def claim(self, kind: str, holder: str) -> tuple[int | None, int]:
        """A consumer slot or market shard: (slot or None when all are taken, how many)."""
        if not self.is_worker:
            return self.ledger.claim(kind, holder), self.ledger.capacity(kind)
        key = uuid.uuid4().hex
        answer = self.pending_claims[key] = AsyncResult()
        self.runner.send_message(MSG_CLAIM, {"kind": kind, "holder": holder, "key": key})
        try:
            slot, capacity = answer.get(timeout=CLAIM_TIMEOUT)
        except gevent.Timeout:
            log.warning("%s: the master did not answer a %s claim", holder, kind)
            return None, 0
        finally:
            self.pending_claims.pop(key, None)
        return slot, capacity

    def release(self, kind: str, slot: int, holder: str) -> None:
        if self.is_worker:
            self.runner.send_message(MSG_RELEASE, {"kind": kind, "slot": slot, "holder": holder})
        else:
            self.ledger.release(kind, slot, holder)

    # -- the Pipeline tab and the monitor -----------------------------------------------------

    def user_counts(self) -> dict[str, int]:
        """Users per class now running: on the master, as the workers last reported."""
        if self.is_master:
            return dict(self.runner.reported_user_classes_count)
        return dict(self.runner.user_classes_count)

    def note_users(self, counts) -> None:
        for name, count in counts.items():
            self.peak_users[name] = max(self.peak_users[name], count)

    def pipeline_rows(self) -> list[dict[str, str]]:
        if self.target is None:
            topology = f"error: {self.failure}" if self.failure else "(starts with the test)"
            return [{"metric": "Topology under test", "value": topology}]
        tally = self.run_tally()
        return loadtest.PipelineView(
            topology=self.target.endpoints.topology,
            executions_per_s=self.rate.rate(),
            cdc_lag=loadtest.cdc_lag_text(self.cdc),
            consumer_lag=tally.total_lag,
            consumers=self.ledger.held(CONSUMER_SLOTS),
            partitions=self.partitions,
        ).rows()

    def monitor(self) -> None:
        """Master or local process: live figures, peak users, and --until-idle."""
        cdc_checked = 0.0
        run, last_total, progress_at = None, 0, 0.0
        while True:
            gevent.sleep(MONITOR_INTERVAL)
            if not self.running or self.target is None:
                continue
            now = time.monotonic()
            if run != self.started:  # a new run (the web UI starts as many as you like)
                run, last_total, progress_at = self.started, 0, now
            self.note_users(self.user_counts())
            tally = self.run_tally()
            total = tally.total_allocated
            self.rate.add(now, total)
            if tally.total_lag is not None:
                self.last_consumer_lag = tally.total_lag
            if total != last_total:
                last_total, progress_at = total, now
            if now - cdc_checked >= CDC_LAG_INTERVAL:
                cdc_checked = now
                try:
                    self.cdc = loadtest.cdc_lag(self.target)
                except Exception as exc:  # a measurement; never let it stop the monitor
                    log.debug("CDC lag unavailable: %s", exc)
            idle = self.options.until_idle
            if idle and total and tally.total_lag == 0 and now - progress_at >= idle:
                log.info("the consumers drained the topic; --until-idle %g s reached", idle)
                self.running = False
                gevent.spawn(self.runner.quit if self.headless else self.runner.stop)

    # -- the end of a run ---------------------------------------------------------------------

    def end_run(self) -> None:
        """Master or local process: collect every process's numbers, write the run record."""
        if self.is_master:
            self._wrap_up_workers()
        self.running = False
        self.close_pool()
        if self.target is None or self.failure:
            return
        try:
            self._write_record()
        except (LabError, records.RecordError, OSError) as exc:
            log.error("error: no run record written: %s", exc)

    def _wrap_up_workers(self) -> None:
        """Make sure every worker of the run sent its final numbers.

        A stop from the web UI reaches the workers first, and each sends its final numbers
        before it reports stopped. A headless run that ends by --run-time stops the master
        first and only then tells the workers to quit (and waits half a second), so the master
        asks them to wrap up now and waits for their final numbers: consumers take a moment to
        flush, commit and leave the group.
        """
        busy = (STATE_RUNNING, STATE_SPAWNING)
        active = {c.id for c in self.runner.clients.all if c.state in busy}
        waiting = (active | set(self.worker_tallies)) - self.finals
        for client_id in waiting & active:
            self.runner.send_message(MSG_WRAP_UP, None, client_id=client_id)
        deadline = time.monotonic() + WRAP_UP_TIMEOUT
        while waiting - self.finals and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if waiting - self.finals:
            log.warning("no final numbers from %d worker(s)", len(waiting - self.finals))

    def _write_record(self) -> None:
        tally = self.run_tally()
        kinds = self.user_kinds()
        peak = Counter()
        for name, count in self.peak_users.items():
            peak[kinds.get(name, "")] += count
        shape = self._shape(peak, tally)
        if shape is None:
            log.info("no allocation transaction in this run: no run record written")
            return
        # Consumers report their lag while they run; by now they have left the group.
        tally.lag = {"group": self.last_consumer_lag} if self.last_consumer_lag is not None else {}
        record = loadtest.build_record(self.target, tally, shape, self.cdc,
                                       verify=self.options.verify)  # fmt: skip
        path = records.write_record(record, self.options.results_dir)
        log.info(
            "run record %s: %s executions allocated, %s/s, verify %s",
            path, record.results.executions_allocated, record.results.executions_per_s,
            record.results.verify,
        )  # fmt: skip

    def _shape(self, peak: Counter, tally: Tally) -> loadtest.RunShape | None:
        if not tally.transactions and not tally.failed_transactions:
            return None
        o = self.options
        duration = time.monotonic() - self.started
        if peak["consumer"]:
            knobs = {
                "driver": "locust",
                "consumers": min(peak["consumer"], self.partitions or peak["consumer"]),
                "batch_size": o.batch_size,
                "linger_ms": o.linger_ms,
                "snapshot_every": 1,
                "partitions": self.partitions,
            }
            if peak["market"]:
                knobs.update(market_users=peak["market"], market_rate=o.market_rate)
            return loadtest.RunShape(o.strategy, knobs, self.started_at, duration)
        mix = {}
        for cls in self.environment.user_classes:
            mix.update(getattr(cls, "task_weights", {}))
        weights = ", ".join(f"{name} {weight}" for name, weight in mix.items())
        knobs = {"driver": "locust-transactions", "users": peak["transactions"], "weights": weights}
        return loadtest.RunShape("per-execution", knobs, self.started_at, duration)


LAB = Lab()


# -- Locust events ------------------------------------------------------------------------------


@events.init.add_listener
def on_init(environment, **_kwargs) -> None:
    LAB.environment = environment
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(MSG_CLAIM, _on_claim)
        runner.register_message(MSG_RELEASE, _on_release)
        runner.register_message(MSG_FINAL, _on_final)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(MSG_CLAIMED, _on_claimed)
        runner.register_message(MSG_WRAP_UP, _on_wrap_up)
    if not isinstance(runner, WorkerRunner):
        gevent.spawn(LAB.monitor)
    if environment.web_ui is not None:
        _add_pipeline_tab(environment.web_ui)


@events.test_start.add_listener
def on_test_start(environment, **_kwargs) -> None:
    LAB.begin_run()


@events.spawning_complete.add_listener
def on_spawning_complete(user_count, **_kwargs) -> None:
    if LAB.is_worker or LAB.options is None:
        return
    # What was asked for, counted now: a run shorter than a worker report has no other.
    asked = getattr(LAB.runner, "target_user_classes_count", None) or {}
    LAB.note_users(asked)
    LAB.note_users(LAB.user_counts())
    kinds = LAB.user_kinds()
    markets = sum(count for name, count in asked.items() if kinds.get(name) == "market")
    if 0 < markets < LAB.options.market_shards:
        log.warning(
            "%d market user(s) for %d shards: the block orders of the other shards get no "
            "executions; set --market-shards %d to trade them all",
            markets, LAB.options.market_shards, markets,
        )  # fmt: skip


@events.test_stop.add_listener
def on_test_stop(environment, **_kwargs) -> None:
    if LAB.is_worker:
        # Sent before the worker reports stopped, so the master has it when its stop ends.
        LAB.runner.send_message(MSG_FINAL, {"tally": LAB.snapshot().to_wire()})
        LAB.running = False
        LAB.close_pool()
    else:
        LAB.end_run()


@events.report_to_master.add_listener
def on_report_to_master(client_id, data, **_kwargs) -> None:
    if LAB.running:
        data["crdblab"] = LAB.snapshot().to_wire()


@events.worker_report.add_listener
def on_worker_report(client_id, data, **_kwargs) -> None:
    if "crdblab" in data and client_id not in LAB.finals:
        LAB.worker_tallies[client_id] = data["crdblab"]


def _on_claim(environment, msg, **_kwargs) -> None:
    d = msg.data
    slot = LAB.ledger.claim(d["kind"], d["holder"])
    answer = {"key": d["key"], "slot": slot, "capacity": LAB.ledger.capacity(d["kind"])}
    LAB.runner.send_message(MSG_CLAIMED, answer, client_id=msg.node_id)


def _on_claimed(environment, msg, **_kwargs) -> None:
    waiting = LAB.pending_claims.get(msg.data["key"])
    if waiting is not None:
        waiting.set((msg.data["slot"], msg.data["capacity"]))


def _on_release(environment, msg, **_kwargs) -> None:
    LAB.ledger.release(msg.data["kind"], msg.data["slot"], msg.data["holder"])


def _on_final(environment, msg, **_kwargs) -> None:
    LAB.worker_tallies[msg.node_id] = msg.data["tally"]
    LAB.finals.add(msg.node_id)


def _on_wrap_up(environment, msg, **_kwargs) -> None:
    # Stopping the users runs their on_stop (consumers leave the group), then test_stop,
    # which sends the final numbers; the master's quit that follows finds nothing to stop.
    gevent.spawn(LAB.runner.stop)


def _add_pipeline_tab(web_ui) -> None:
    """A "Pipeline" tab in Locust's web UI: a table the UI refreshes with its statistics."""
    web_ui.template_args["extended_tabs"] = [{"title": "Pipeline", "key": "pipeline"}]
    web_ui.template_args["extended_tables"] = [
        {
            "key": "pipeline",
            "structure": [{"key": "metric", "title": "Metric"}, {"key": "value", "title": "Value"}],
        }
    ]

    @web_ui.app.after_request
    def add_pipeline_figures(response):
        # The UI polls /stats/requests and shows an extended table from its extended_stats.
        if not web_request.path.endswith("/stats/requests") or not response.is_json:
            return response
        payload = response.get_json()
        payload["extended_stats"] = [{"key": "pipeline", "data": LAB.pipeline_rows()}]
        response.set_data(json.dumps(payload))
        return response


# -- the users ----------------------------------------------------------------------------------


class LabUser(User):
    """The kit's abstract user: owns the clients (the process's pool and dialect, and a
    consumer in its own thread or a market of its own); the locustfiles' users only choose
    tasks, weights and wait times."""

    abstract = True
    kind = ""  # what the run record counts the user as: consumer, market or transactions
    needs_kafka = False
    # Locust's form asks for a host when users have none; the servers come from the options.
    host = "crdblab"

    def __init__(self, environment):
        super().__init__(environment)
        self.lab = LAB
        self.name = LAB.new_name(self.kind or "user")
        self.rng = random.Random()
        self._member: _GroupMember | None = None
        self._market: _MarketFeed | None = None
        self._allocated = 0

    @property
    def options(self) -> LoadOptions:
        return self.lab.options

    @property
    def dialect(self):
        return self.lab.require_target().dialect

    def connection(self):
        return self.lab.pool().connection()

    def on_start(self) -> None:
        self.lab.require_target()

    def on_stop(self) -> None:
        if self._member is not None:
            self._member.leave()
        if self._market is not None:
            self._market.close()

    # -- consumer -----------------------------------------------------------------------------

    def consume(self) -> None:
        """Join the group (once a slot is free) and hand the consumer's transactions to Locust."""
        if self._member is None:
            self._member = _GroupMember(self)
        self._member.step()

    # -- market -------------------------------------------------------------------------------

    def trade(self) -> None:
        """Write the executions due at this user's rate, on its shard of the block orders."""
        if self._market is None:
            self._market = _MarketFeed(self)
        self._market.step()

    # -- measured transactions ------------------------------------------------------------------

    @contextlib.contextmanager
    def measure(self, request_type: str, name: str):
        """Time the block as one Locust request; an exception in it is the request's failure
        (and ends the block, as in ``events.request.measure``). Set ``response_length`` on
        what it yields.

        A user that Locust stops mid-transaction is neither: gevent interrupts it with
        GreenletExit, which psycopg may turn into an OperationalError while it cleans up the
        connection. Recording that as a failure would also swallow the stop and keep the user
        running, so the request is dropped and the user stops.
        """
        measured = Measured()
        start_time, started = time.time(), time.perf_counter()
        try:
            yield measured
        except Exception as exc:
            if _interrupted(exc):
                raise GreenletExit from exc
            measured.error = exc
        measured.seconds = time.perf_counter() - started
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=measured.seconds * 1000,
            response_length=measured.response_length,
            exception=measured.error,
            context={},
            start_time=start_time,
        )

    @contextlib.contextmanager
    def allocation(self, name: str):
        """One allocation transaction: a Locust request (type ``transaction``) and a
        transaction of the run's tally. Set ``response_length`` to the executions it
        allocated, and ``found`` to False when there was nothing left to allocate (not
        counted in the tally: idle reads would stretch the time the allocations took)."""
        with self.measure("transaction", name) as measured:
            yield measured
        if measured.found or measured.error is not None:
            event = loadtest.TransactionEvent("per-execution", 1, measured.seconds,
                                              measured.error, time.time())  # fmt: skip
            self.lab.tally.record(event)
        if measured.error is None:
            self._allocated += measured.response_length
            self.lab.tally.count_allocated(self.name, self._allocated)


@dataclass
class Measured:
    response_length: int = 0
    found: bool = True
    seconds: float = 0.0
    error: Exception | None = None


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` arose while a GreenletExit was unwinding (Locust stopping the user)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, GreenletExit):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class _GroupMember:
    """A consumer user's membership of the group: its slot, its thread, its hand-over."""

    def __init__(self, user: LabUser):
        self.user, self.lab = user, user.lab
        self.slot: int | None = None
        self.worker: loadtest.ConsumerWorker | None = None
        self.result: AsyncResult | None = None
        self.next_claim = 0.0
        self.warned = False
        self.allocated_before = 0  # by this user's earlier consumers (one that failed)

    def step(self) -> None:
        if self.worker is None:
            self._join()
            return
        self._hand_over()
        if self.result.ready():
            error = self.result.exception
            self._finish()
            if error is not None:
                raise error  # Locust shows it; the next step joins again with a new consumer

    def _join(self) -> None:
        now = time.monotonic()
        if now < self.next_claim:
            return
        self.next_claim = now + SLOT_RETRY
        self.slot, capacity = self.lab.claim(CONSUMER_SLOTS, self.user.name)
        if self.slot is None:
            if not self.warned:
                log.warning(
                    "%s waits: all %d partitions have a consumer (a partition has one at a "
                    "time); it joins when a consumer leaves",
                    self.user.name, capacity,
                )  # fmt: skip
                self.warned = True
            return
        target = self.lab.require_target()
        self.worker = loadtest.ConsumerWorker(
            self.user.name,
            self.user.options.allocator,
            target.endpoints.kafka_bootstrap,
            target.endpoints.url_for("allocator"),
            target.dialect,
        )
        self.result = self.lab.threads(capacity).spawn(self.worker.run)

    def _hand_over(self) -> None:
        fire = self.user.environment.events.request.fire
        tally = self.lab.tally
        for event in self.worker.drain():
            fire(
                request_type="allocate",
                name=event.strategy,
                response_time=event.seconds * 1000,
                response_length=event.executions,
                exception=event.error,
                context={},
                start_time=event.ended_at - event.seconds,
            )
            tally.record(event)
        metrics = self.worker.metrics
        tally.count_allocated(self.user.name, self.allocated_before + metrics.allocated)
        if metrics.lag is not None:
            tally.lag[self.user.name] = metrics.lag

    def leave(self) -> None:
        """Stop the consumer: it flushes, commits and leaves the group; then report the rest."""
        if self.worker is None:
            return
        self.worker.stop()
        try:
            self.result.get(timeout=LEAVE_TIMEOUT)
        except gevent.Timeout:
            log.error("%s did not leave the group within %g s", self.user.name, LEAVE_TIMEOUT)
        except Exception as exc:  # reported by the step that sees it; here only leaving counts
            log.error("%s stopped with an error: %s", self.user.name, exc)
        self._hand_over()
        self._finish()

    def _finish(self) -> None:
        if self.result is not None and self.result.ready():
            self.lab.tally.consumer_finished(self.user.name, self.worker.metrics)
        self.allocated_before += self.worker.metrics.allocated
        self.lab.release(CONSUMER_SLOTS, self.slot, self.user.name)
        self.worker, self.result, self.slot = None, None, None


class _MarketFeed:
    """A market user's shard of the open block orders and its pace."""

    def __init__(self, user: LabUser):
        self.user, self.lab = user, user.lab
        self.slot, shards = self.lab.claim(MARKET_SHARDS, user.name)
        if self.slot is None:
            log.warning("%s stops: all %d market shards are taken (raise --market-shards)",
                        user.name, shards)  # fmt: skip
            raise StopUser()
        seed = self.lab.target.settings.seed
        with user.connection() as conn:
            self.market = Market.load(conn, TradeOptions(seed=seed), shard=(self.slot, shards))
        log.info("%s trades shard %d/%d: %d open block orders",
                 user.name, self.slot, shards, len(self.market.open))  # fmt: skip
        self.started = time.monotonic()
        self.emitted = 0
        self.unwritten: list = []
        self.done_logged = False

    def step(self) -> None:
        rate = self.user.options.market_rate
        due = int((time.monotonic() - self.started) * rate) - self.emitted
        if not self.unwritten and due > 0:
            self.unwritten = self.market.take(due)
            self.emitted += len(self.unwritten)
        if not self.unwritten:
            if not self.market.open and not self.done_logged:
                log.info("%s: every block order of its shard is filled", self.user.name)
                self.done_logged = True
            return
        with self.user.measure("trade", "market") as measured:
            with self.user.connection() as conn:
                self.market.write(conn, self.unwritten, self.lab.retry_stats)
            measured.response_length = len(self.unwritten)
            # Written: a failed write keeps them, so no seq of a block order is ever skipped.
            self.unwritten = []

    def close(self) -> None:
        if self.slot is not None:
            with contextlib.suppress(Exception), self.user.connection() as conn:
                self.market.write(conn, self.unwritten, self.lab.retry_stats)
            self.lab.release(MARKET_SHARDS, self.slot, self.user.name)
            self.slot = None

"""The PostgreSQL CDC relay: a logical replication slot into the executions topic.

PostgreSQL has no changefeed; the relay plays its part. It reads trades.executions' changes
from a logical replication slot (pgoutput, through the SQL functions: psycopg 3 has no
replication protocol) and produces each one to Kafka in CockroachDB's JSON changefeed envelope,
keyed by block order, on the partition a CRDB changefeed would pick. Nothing reads the table.

Nothing is lost, by one rule: the slot advances only past transactions whose every message
Kafka has acknowledged. Batches of whole transactions are read (a batch ahead, from a
temporary copy of the slot: :mod:`workload.cdc.reader`), produced, flushed until every
delivery report is in, and only then is the slot ``pg_replication_slot_advance``-d to the
end of the batch's last transaction. A crash at any point leaves the slot where it was, so
the next run reads the unacknowledged transactions again: Kafka may then hold a change twice
(the consumer deduplicates by execution id), never zero times. The producer is idempotent,
so its own retries add no duplicates; reading again after a crash, a broker outage or a lost
database connection does.

``updated`` is the transaction's commit timestamp as an HLC (``<ns>.0000000000``), raised
where needed so that it strictly increases from one transaction to the next within a run
(concurrent commits can reach the WAL out of timestamp order), and above the last resolved
timestamp published, which is kept in the status file so that this holds across restarts.
Every ``resolved_interval`` the relay sends ``{"resolved": ...}`` with no key to every
partition, after everything below it was acknowledged.

The relay survives the database or the broker going away: it logs, closes what failed, waits
with capped exponential backoff and reconnects (looking the embedded stack up again, whose
servers get new ports when ``up`` restarts them), then carries on from the slot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from psycopg import errors

from workload import topics
from workload.cdc import pgoutput
from workload.cdc.encoding import Partitioner, RowEncoder, UnrepresentableChange
from workload.cdc.reader import TRANSIENT_ERRORS, SlotGone, SlotReader
from workload.cdc.slot import SlotSpec, check_server
from workload.envelope import HLC, encode_resolved
from workload.errors import LabError
from workload.metrics import Histogram
from workload.settings import redact_url

log = logging.getLogger("workload.cdc.relay")

KEY_COLUMNS = ("block_order_id",)
LOGICAL_ZERO = b".0000000000"

_ADVANCE = "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)"


@dataclass(frozen=True)
class RelayOptions:
    """How the relay batches, paces and reports; the defaults suit the embedded stack."""

    batch_changes: int = 20_000  # messages per read (whole transactions: a batch may run over)
    idle_poll: float = 0.02  # seconds between reads when the slot had nothing new
    resolved_interval: float = 1.0  # seconds between resolved messages; 0 sends none
    status_interval: float = 1.0  # seconds between writes of the status file
    ack_timeout: float = 30.0  # seconds Kafka may take to acknowledge before it counts as down
    max_backoff: float = 5.0  # cap of the wait between reconnection attempts
    linger_ms: int = 5  # producer batching delay
    shutdown_grace: float = 5.0  # on stop, how long to wait for outstanding acknowledgements

    def __post_init__(self) -> None:
        if self.batch_changes < 1:
            raise LabError(f"relay batch size {self.batch_changes} must be at least 1")
        if self.linger_ms < 0:
            raise LabError(f"producer linger {self.linger_ms} ms must be >= 0")
        for name in ("idle_poll", "status_interval", "ack_timeout", "max_backoff"):
            if getattr(self, name) <= 0:
                raise LabError(f"relay option {name}={getattr(self, name)} must be > 0")
        if self.resolved_interval < 0:
            raise LabError(f"resolved interval {self.resolved_interval} must be >= 0")


@dataclass(frozen=True)
class RelayConfig:
    """What the relay reads, where it publishes, and where it reports."""

    slot: SlotSpec = field(default_factory=SlotSpec)
    topics: topics.TopicSpec = field(default_factory=topics.TopicSpec)
    key_columns: tuple[str, ...] = KEY_COLUMNS
    status_path: Path | None = None
    options: RelayOptions = field(default_factory=RelayOptions)


class DatabaseDown(Exception):
    """The database could not be reached or dropped the connection: reconnect later."""


class BrokerDown(Exception):
    """Kafka did not acknowledge, or could not be reached: reconnect later."""


class _Backoff:
    """Capped exponential backoff with jitter: 0.1 s, 0.2 s, ... up to ``cap``."""

    def __init__(self, cap: float):
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, 0.1 * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 16)  # the cap is reached long before
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class _Transaction:
    """Delivery bookkeeping of one decoded transaction's messages."""

    __slots__ = ("commit_unix", "relay")

    def __init__(self, relay: Relay, commit_unix: float):
        self.relay = relay
        self.commit_unix = commit_unix

    def delivered(self, error: KafkaError | None, _message) -> None:
        relay = self.relay
        if error is None:
            relay._acked += 1
            relay.lag.record(max(0.0, time.time() - self.commit_unix))
        else:
            relay._delivery_failures += 1
            relay._last_kafka_error = error.str()


def read_floor(status_path: Path | None, slot: str) -> int:
    """The last resolved timestamp (ns) a previous run of this slot's relay published."""
    if status_path is None:
        return 0
    try:
        previous = json.loads(status_path.read_text())
        if previous.get("slot") != slot or not previous.get("resolved"):
            return 0
        return HLC.parse(previous["resolved"]).wall_time
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


class Relay:
    """Run with :meth:`run` until ``stop`` is set; :meth:`metrics` is safe from other threads.

    ``database_url`` and ``kafka_bootstrap`` are asked again at every reconnection, so they can
    follow an embedded server that came back on another port.
    """

    def __init__(
        self,
        config: RelayConfig,
        *,
        database_url: Callable[[], str],
        kafka_bootstrap: Callable[[], str],
    ):
        self.config = config
        self.options = config.options
        self._database_url = database_url
        self._kafka_bootstrap = kafka_bootstrap
        self._conn: psycopg.Connection | None = None
        self._reader: SlotReader | None = None
        self._producer: Producer | None = None
        self._partition: Partitioner | None = None
        self._encoders: dict[int, RowEncoder] = {}
        self._log_snapshots = True
        self._connected_before = False
        self._publication = '"' + config.slot.publication.replace('"', '""') + '"'
        self._lock_key = f"crdblab-cdc-relay:{config.slot.slot}"

        self.lag = Histogram()
        self._acked = 0
        self._delivery_failures = 0
        self._last_kafka_error: str | None = None
        self._kafka_state_error: str | None = None
        self._broker_lost: str | None = None

        self.started_at = datetime.now(UTC)
        self.state = "starting"
        self.changes_published = 0
        self.transactions = 0
        self.batches = 0
        self.resolved_messages = 0
        self.skipped: dict[str, int] = {}
        self.reconnects = {"database": 0, "kafka": 0}
        self.last_error: str | None = None
        self.confirmed_lsn: int | None = None
        # ns: every later transaction's "updated" is above it; resolved never goes past it
        self._floor = read_floor(config.status_path, config.slot.slot)
        self._resolved = self._floor
        self._caught_up_at: int | None = None  # server time (ns) the slot was last drained to
        # The read in progress (it may come in several batches): the floor at its start, to
        # give its transactions the same timestamps if it must be read again; its last
        # transaction's end; how many messages it had so far.
        self._read_floor = self._floor
        self._read_last_end: int | None = None
        self._read_rows = 0
        self._updated = b""  # the HLC text of the transaction being produced
        self._transaction: _Transaction | None = None
        self._last_status = 0.0
        self._last_resolved_at = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self.rate = 0.0
        self._metrics_lock = threading.Lock()

    # -- connections ----------------------------------------------------------------------

    def _open(self, url: str, role: str = "") -> psycopg.Connection:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=5,
            application_name="crdblab-cdc-relay" + role,
            # pgoutput writes values with the session's output settings; the encoder expects
            # UTC timestamps in ISO form.
            options="-c TimeZone=UTC -c DateStyle=ISO,MDY -c statement_timeout=0",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )

    def _connect_database(self) -> None:
        url = self._database_url()
        try:
            conn = self._open(url)
        except psycopg.OperationalError as exc:
            raise DatabaseDown(f"cannot connect to {redact_url(url)}: {_first_line(exc)}") from None
        try:
            check_server(conn)
            locked = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (self._lock_key,))
            if not locked.fetchone()[0]:
                message = (
                    f"another relay is reading replication slot {self.config.slot.slot!r}; "
                    "stop it first (`python -m workload cdc stop`)"
                )
                if self._connected_before:
                    # Our previous session may still be on its way out, holding the lock.
                    raise DatabaseDown(message)
                raise LabError(message)
            reader = SlotReader(
                lambda: self._open(url, "-reader"),
                slot=self.config.slot.slot,
                publication=self.config.slot.publication,
                limit=self.options.batch_changes,
                idle_poll=self.options.idle_poll,
            )
            reader.start()
        except SlotGone:
            conn.close()
            raise LabError(
                f"replication slot {self.config.slot.slot!r} does not exist; create it with "
                "`python -m workload cdc start`"
            ) from None
        except TRANSIENT_ERRORS as exc:
            conn.close()
            raise DatabaseDown(_first_line(exc)) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._reader = reader
        self._connected_before = True

    def _connect_kafka(self) -> None:
        bootstrap = self._kafka_bootstrap()
        try:
            # Created again if missing: a broker that keeps topics in memory (Tansu) comes
            # back from a restart without them.
            topic, _ = topics.ensure_topics(
                bootstrap, self.config.topics, timeout=min(5.0, self.options.ack_timeout)
            )
        except LabError as exc:
            raise BrokerDown(str(exc)) from None
        self._partition = Partitioner(topic.partitions)
        self._delivery_failures = 0
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "crdblab-cdc-relay",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self.options.linger_ms,
                "batch.num.messages": 10_000,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 500_000,
                "message.timeout.ms": int(self.options.ack_timeout * 1000),
                "socket.connection.setup.timeout.ms": 5000,
                # A broker restarted empty (Tansu keeps topics in memory) must not get the
                # topic back with its default partition count from a produce request.
                "allow.auto.create.topics": False,
                "error_cb": self._on_kafka_error,
                "log_level": 0,  # failures are reported through error_cb and delivery reports
            }
        )
        self._kafka_state_error = None
        self._broker_lost = None

    def _on_kafka_error(self, error: KafkaError) -> None:
        text = error.str()
        if text != self._kafka_state_error:
            log.warning("Kafka: %s", text)
            self._kafka_state_error = text
        if error.fatal():
            self._delivery_failures += 1
            self._last_kafka_error = text
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            # The broker may come back empty (Tansu keeps topics in memory): the producer's
            # queued messages would then wait for a topic nobody creates until they time out.
            # Start over instead: purge, look the broker up, create the topics, read the slot
            # again (duplicates at most; the slot never moved past what was unacknowledged).
            self._broker_lost = text

    def _close_database(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._read_last_end, self._read_rows = None, 0
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _close_kafka(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.purge()
                self._producer.flush(0)
            self._producer = None

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, then finish the read in hand and return.

        Fails (LabError) only if the first connection cannot be made or the slot is gone;
        after that, outages are waited out.
        """
        try:
            self._connect_database()
            self._connect_kafka()
        except BaseException as exc:
            self._close_database()
            if isinstance(exc, DatabaseDown | BrokerDown):
                raise LabError(str(exc)) from None
            raise
        backoff = _Backoff(self.options.max_backoff)
        self._set_state("running")
        try:
            # A read of the slot in progress is finished first, so that a clean stop leaves
            # nothing produced and unacknowledged behind.
            while not stop.is_set() or self._read_rows:
                try:
                    if self._conn is None:
                        self._connect_database()
                    if self._producer is None:
                        self._connect_kafka()
                    if self.state != "running":
                        log.info("reconnected; relaying again")
                        self._set_state("running")
                    self._relay_batch(stop)
                    self._maybe_send_resolved(stop)
                    self._maybe_write_status()
                    backoff.reset()
                except DatabaseDown as exc:
                    self._close_database()
                    self._outage("database", str(exc), backoff, stop)
                except BrokerDown as exc:
                    self._close_kafka()
                    self._outage("kafka", str(exc), backoff, stop)
        finally:
            self._close_kafka()
            self._close_database()
            self._set_state("stopped")

    def _outage(self, what: str, reason: str, backoff: _Backoff, stop: threading.Event) -> None:
        delay = backoff.next()
        self.reconnects[what] += 1
        self.last_error = f"{what}: {reason}"
        log.warning("%s unavailable (%s); retrying in %.1f s", what, reason, delay)
        self._set_state("reconnecting")
        stop.wait(delay)

    def _relay_batch(self, stop: threading.Event) -> int:
        """Relay the next batch the reader has ready; the number of messages in it.

        A read of the slot may come in several batches; the acknowledgements are awaited and
        the slot advanced at its last one, which ends with a whole transaction.
        """
        conn, reader = self._conn, self._reader
        assert conn is not None and reader is not None and self._producer is not None
        try:
            batch = reader.next(timeout=0.2)
        except SlotGone as exc:
            raise LabError(f"the relay's slot is gone: {exc}") from None
        except TRANSIENT_ERRORS as exc:
            self._read_again()
            raise DatabaseDown(_first_line(exc)) from None
        self._producer.poll(0)  # serves error_cb while the slot is quiet
        if batch is None:
            if self._broker_lost and not self._read_rows:
                raise BrokerDown(f"lost the broker ({self._broker_lost})")
            return 0
        rows = len(batch.messages)
        try:
            if self._broker_lost:
                raise BrokerDown(f"lost the broker ({self._broker_lost})")
            last_end = self._produce_batch(batch.messages)
            self._read_last_end = last_end or self._read_last_end
            if batch.last and self._read_rows + rows:
                self._await_acks(stop)
        except BrokerDown:
            self._read_again()
            self._close_database()
            raise
        self._read_rows += rows
        if not batch.last:
            return rows
        # A complete read holds everything committed before wal_end, so the slot can skip to
        # there, past WAL of tables it does not publish.
        target = max(self._read_last_end or 0, batch.wal_end if batch.complete else 0)
        if target and (self.confirmed_lsn is None or target > self.confirmed_lsn):
            try:
                conn.execute(_ADVANCE, (self.config.slot.slot, pgoutput.lsn_text(target)))
                if self._read_rows:
                    self._log_running_transactions(conn)
            except errors.UndefinedObject as exc:
                raise LabError(f"the relay's slot is gone: {_first_line(exc)}") from None
            except TRANSIENT_ERRORS as exc:
                self._read_again()
                raise DatabaseDown(_first_line(exc)) from None
            self.confirmed_lsn = target
        with self._metrics_lock:
            self.changes_published += self._acked
            self._acked = 0
        self.batches += 1 if self._read_rows else 0
        self._caught_up_at = batch.server_time_ns if batch.complete else None
        # the next read starts here
        self._read_floor, self._read_last_end, self._read_rows = self._floor, None, 0
        return rows

    def _read_again(self) -> None:
        """The read in progress will be read again from the slot: give its transactions the
        same timestamps as before, unless a resolved timestamp was sent since (then above)."""
        self._floor = max(self._read_floor, self._resolved)

    def _log_running_transactions(self, conn: psycopg.Connection) -> None:
        """Let the slot's restart point follow it closely.

        Every read and advance decodes the WAL from the slot's restart_lsn, which moves only
        when decoding meets a record of the running transactions; the server writes one every
        15 s, so without this each read decodes up to 15 s of WAL again, growing slower the
        faster the table is written. ``pg_log_standby_snapshot()`` (PostgreSQL 16+, superuser
        or granted) writes such a record now.
        """
        if not self._log_snapshots:
            return
        try:
            conn.execute("SELECT pg_log_standby_snapshot()")
        except (errors.InsufficientPrivilege, errors.UndefinedFunction) as exc:
            self._log_snapshots = False
            log.info(
                "cannot call pg_log_standby_snapshot() (%s); the slot's restart point will "
                "move only every 15 s, which slows reading at high write rates",
                _first_line(exc),
            )
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise DatabaseDown(_first_line(exc)) from None

    def _produce_batch(self, messages: list[bytes]) -> int | None:
        """Produce every change of the batch; the end LSN of its last transaction."""
        producer = self._producer
        produce = producer.produce
        topic = self.config.topics.name
        partition_of = self._partition
        encoders = self._encoders
        parse = pgoutput.parse
        insert, update, begin, commit = (
            pgoutput.Insert, pgoutput.Update, pgoutput.Begin, pgoutput.Commit
        )  # fmt: skip
        last_end = None
        # A transaction may continue from the previous batch of the same read.
        updated, transaction = self._updated, self._transaction
        for rows, data in enumerate(messages, 1):
            message = parse(data)
            kind = type(message)
            if kind is insert or kind is update:
                encoder = encoders.get(message.relation_id)
                if encoder is None:
                    self._skip("unknown_relation")
                    continue
                try:
                    key, value = encoder.encode(message.new, updated)
                except UnrepresentableChange as exc:
                    self._skip("unrepresentable")
                    log.warning("skipping a change: %s", exc)
                    continue
                while True:
                    try:
                        produce(
                            topic, value, key, partition=partition_of(key),
                            on_delivery=transaction.delivered,
                        )  # fmt: skip
                        break
                    except BufferError:
                        producer.poll(0.05)  # the local queue is full: let acks drain it
                    except KafkaException as exc:
                        raise BrokerDown(exc.args[0].str()) from None
            elif kind is begin:
                commit_ns = pgoutput.pg_time_to_unix_micros(message.commit_time) * 1000
                self._floor = max(commit_ns, self._floor + 1)
                updated = str(self._floor).encode() + LOGICAL_ZERO
                transaction = _Transaction(self, commit_ns / 1e9)
            elif kind is commit:
                last_end = message.end_lsn
                self.transactions += 1
            elif kind is pgoutput.Relation:
                try:
                    encoders[message.relation_id] = RowEncoder(message, self.config.key_columns)
                except UnrepresentableChange as exc:
                    raise LabError(f"cannot relay {message.qualified}: {exc}") from None
            elif kind is pgoutput.Delete or kind is pgoutput.Truncate:
                self._skip(kind.__name__.lower())  # not published; see workload.cdc.slot
            # Origin, Type and logical messages say nothing the topic carries.
            if rows % 5000 == 0:
                producer.poll(0)
        producer.poll(0)
        self._updated, self._transaction = updated, transaction
        return last_end

    def _await_acks(self, stop: threading.Event) -> None:
        """Wait until Kafka acknowledged (or failed) every message produced so far."""
        producer = self._producer
        started = time.monotonic()
        last_note = started
        while True:
            pending = producer.flush(0.5)
            if pending and self._broker_lost:
                raise BrokerDown(f"lost the broker with {pending} messages unacknowledged")
            if self._delivery_failures:
                raise BrokerDown(
                    f"{self._delivery_failures} messages not acknowledged "
                    f"({self._last_kafka_error})"
                )
            if pending == 0:
                return
            now = time.monotonic()
            if stop.is_set() and now - started > self.options.shutdown_grace:
                raise BrokerDown(f"stopping with {pending} messages unacknowledged")
            if now - last_note > 5:
                log.warning("waiting for Kafka to acknowledge %d messages", pending)
                last_note = now

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    # -- resolved timestamps ------------------------------------------------------------------

    def _maybe_send_resolved(self, stop: threading.Event) -> None:
        interval = self.options.resolved_interval
        if not interval or time.monotonic() - self._last_resolved_at < interval:
            return
        if self._read_rows:
            return  # mid-way through a read: its end has not been acknowledged yet
        # Everything produced so far is acknowledged and behind the slot. If the slot was
        # drained, nothing that committed before the server time of that read can still come,
        # except a commit racing the read: its "updated" is raised above this anyway.
        resolved = max(self._floor, self._caught_up_at or 0)
        if resolved <= self._resolved:
            self._last_resolved_at = time.monotonic()
            return
        self._floor = resolved
        self._resolved = resolved
        # Written down before it is sent: a restarted relay must never go below it.
        self._write_status()
        payload = encode_resolved(HLC(resolved))
        producer = self._producer
        for partition in range(self._partition.partitions):
            producer.produce(
                self.config.topics.name, payload, None, partition=partition,
                on_delivery=self._resolved_delivered,
            )  # fmt: skip
        self._await_acks(stop)
        with self._metrics_lock:
            self.resolved_messages += self._partition.partitions
        self._last_resolved_at = time.monotonic()

    def _resolved_delivered(self, error: KafkaError | None, _message) -> None:
        if error is not None:
            self._delivery_failures += 1
            self._last_kafka_error = error.str()

    # -- reporting ------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        self._write_status()

    def _maybe_write_status(self) -> None:
        if time.monotonic() - self._last_status >= self.options.status_interval:
            self._write_status()

    def _write_status(self) -> None:
        now = time.monotonic()
        mark_time, mark_count = self._rate_mark
        if now - mark_time >= 0.5:
            self.rate = (self.changes_published - mark_count) / (now - mark_time)
            self._rate_mark = (now, self.changes_published)
        self._last_status = now
        if self.config.status_path is not None:
            write_json_atomically(self.config.status_path, self.metrics())

    def metrics(self) -> dict:
        """Counters, lag percentiles and position: what the status file holds."""
        with self._metrics_lock:
            published, resolved_messages = self.changes_published, self.resolved_messages
        return {
            "source": "postgresql-relay",
            "pid": os.getpid(),
            "state": self.state,
            "slot": self.config.slot.slot,
            "publication": self.config.slot.publication,
            "topic": self.config.topics.name,
            "partitions": self._partition.partitions if self._partition else None,
            "started_at": self.started_at.isoformat(),
            "written_at": datetime.now(UTC).isoformat(),
            "changes_published": published,
            "transactions": self.transactions,
            "batches": self.batches,
            "resolved_messages": resolved_messages,
            "changes_per_second": round(self.rate, 1),
            "skipped": dict(self.skipped),
            "reconnects": dict(self.reconnects),
            "last_error": self.last_error,
            "confirmed_lsn": pgoutput.lsn_text(self.confirmed_lsn) if self.confirmed_lsn else None,
            "resolved": str(HLC(self._resolved)) if self._resolved else None,
            "lag_ms": self.lag.summary(),
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

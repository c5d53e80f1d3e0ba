"""Change data capture: trades.executions into a partitioned Kafka topic, from either server.

One message format on the topic, whatever the source (:mod:`workload.envelope`): CockroachDB
publishes with a changefeed (:mod:`workload.cdc.changefeed`, SQL in :mod:`workload.dialect`),
PostgreSQL through the log-based relay (:mod:`workload.cdc.relay`) that runs as a background
process of the stack. Both key messages by block order id and pick its partition the same
way, so every execution of a block order lands on one partition.

The library API, for the CLI (``python -m workload cdc ...``) and the demo::

    from workload import cdc
    report = cdc.start(endpoints, settings)        # topics, then changefeed or slot + relay
    info = cdc.status(endpoints, settings)         # messages published, lag percentiles, ...
    cdc.stop(endpoints, settings, drop_slot=True)  # cancel the changefeed / stop the relay
    metrics = cdc.relay_metrics(settings.run_dir)  # the relay's counters, for run records

Each takes an optional :class:`CdcOptions` (topic, partitions, slot, relay tuning, ...).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from workload import topics
from workload.cdc import changefeed, process
from workload.cdc import slot as slots
from workload.cdc.options import CdcOptions, relay_arguments
from workload.cdc.relay import BrokerDown, DatabaseDown, Relay, RelayConfig, RelayOptions
from workload.db import connect
from workload.dialect import ChangefeedSpec, detect
from workload.embedded import StackState
from workload.endpoints import Endpoints
from workload.errors import LabError
from workload.settings import Settings

__all__ = [
    "CdcOptions",
    "Relay",
    "RelayOptions",
    "relay_metrics",
    "run_relay",
    "start",
    "status",
    "stop",
]


def relay_metrics(run_dir: Path) -> dict | None:
    """What the relay last wrote to ``<run_dir>/cdc/relay.json``: changes published, lag
    percentiles in ms (``lag_ms``: count, mean, max, p50 ... p99.9), reconnects, position;
    None if no relay ever ran there."""
    return process.read_status(run_dir)


def _bootstrap(endpoints: Endpoints) -> str:
    if not endpoints.kafka_bootstrap:
        raise LabError("CDC needs a Kafka bootstrap; pass --kafka-bootstrap (LAB_KAFKA_BOOTSTRAP)")
    return endpoints.kafka_bootstrap


def changefeed_spec(options: CdcOptions, settings: Settings, kafka_bootstrap: str):
    return ChangefeedSpec(
        sink_bootstrap=options.sink_bootstrap_for(settings, kafka_bootstrap),
        topic=options.topics.name,
        min_checkpoint_frequency=options.min_checkpoint_frequency,
        sink=options.sink,
    )


def start(endpoints: Endpoints, settings: Settings, options: CdcOptions | None = None) -> dict:
    """Make sure executions flow into the topic; safe to call again.

    Creates the topic and its dead-letter topic, then on CockroachDB the changefeed, on
    PostgreSQL the publication, the slot and the background relay (or finds them running).
    Returns ``source`` ("cockroachdb" | "postgresql") and ``topics`` (TopicState of the topic
    and its dead-letter topic); CRDB adds ``job_id`` and ``created``; PostgreSQL adds
    ``created`` ({"publication": bool, "slot": bool}), ``relay_pid``, ``relay_started``, ``log``
    and ``unpublished_existing_rows`` (the table held rows before the slot existed).
    """
    options = options or CdcOptions()
    bootstrap = _bootstrap(endpoints)
    created_topics = topics.ensure_topics(bootstrap, options.topics, timeout=options.kafka_timeout)
    with connect(endpoints.dsn) as conn:
        dialect = detect(conn)
        if dialect.is_cockroachdb:
            spec = changefeed_spec(options, settings, bootstrap)
            job = changefeed.start(conn, dialect, spec)
            return {"source": "cockroachdb", "topics": created_topics, **job}
        created = slots.setup(conn, options.slot)
        had_rows = created["slot"] and slots.has_rows(conn, options.slot)
    record = process.running_relay(settings.run_dir)
    if record is not None:
        running = relay_metrics(settings.run_dir) or {}
        wanted = {"slot": options.slot.slot, "topic": options.topics.name}
        if running.get("pid") == record.pid and any(
            running.get(name) != value for name, value in wanted.items()
        ):
            raise LabError(
                f"a relay already runs (pid {record.pid}) from slot {running.get('slot')} to "
                f"topic {running.get('topic')}; stop it first (`python -m workload cdc stop`)"
            )
    started = record is None
    if started:
        env = {
            "LAB_DSN": settings.dsn,
            "LAB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "LAB_STACK_OUTPUTS": None,
            "LAB_SERVICE_ROLES": "on" if settings.service_roles else "off",
        }
        record = process.spawn(settings.run_dir, relay_arguments(options), env)
    return {
        "source": "postgresql",
        "topics": created_topics,
        "created": created,
        "relay_pid": record.pid,
        "relay_started": started,
        "log": str(process.log_path(settings.run_dir)),
        # A new slot publishes only what commits from now on.
        "unpublished_existing_rows": bool(had_rows),
    }


def _topic_messages(bootstrap: str, topic: str, timeout: float) -> dict:
    """Partitions and the number of messages the topic holds (resolved ones included)."""
    try:
        partitions = topics.partition_count(bootstrap, topic, timeout=timeout)
    except LabError as exc:
        return {"partitions": None, "messages": None, "error": str(exc)}
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "crdblab-cdc-status", "log_level": 0}
    )
    try:
        total = 0
        for partition in range(partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            total += high - low
    except KafkaException as exc:
        return {"partitions": partitions, "messages": None, "error": exc.args[0].str()}
    finally:
        consumer.close()
    return {"partitions": partitions, "messages": total}


def status(endpoints: Endpoints, settings: Settings, options: CdcOptions | None = None) -> dict:
    """Where CDC stands: the job or the relay, what it published, and its lag.

    Always: ``source``, ``topic`` ({"name", "partitions", "messages"}: what the broker holds,
    resolved messages and duplicates included), ``messages_published`` and ``lag_ms``.
    PostgreSQL: ``messages_published`` and ``lag_ms`` (commit to Kafka acknowledgement: count,
    mean_ms, max_ms, p50_ms, p90_ms, p95_ms, p99_ms, p99_9_ms, over the relay process's life)
    come from the relay, with ``relay`` ({"state": running|stopped|crashed, "pid", "log"}),
    ``slot`` (position, WAL held back) and ``metrics`` (all of :func:`relay_metrics`).
    CockroachDB: those two are None; ``job`` (the active changefeed), ``jobs``,
    ``high_water`` (HLC) and ``high_water_lag_s`` (how far the high-water mark trails now).
    """
    options = options or CdcOptions()
    bootstrap = _bootstrap(endpoints)
    report: dict = {"topic": {"name": options.topics.name}}
    timeout = min(3.0, options.kafka_timeout)
    report["topic"].update(_topic_messages(bootstrap, options.topics.name, timeout=timeout))
    with connect(endpoints.dsn) as conn:
        dialect = detect(conn)
        if dialect.is_cockroachdb:
            found = changefeed.jobs(conn, dialect)
            active = next((job for job in found if job["active"]), None)
            report.update(
                source="cockroachdb",
                jobs=found,
                job=active,
                high_water=active["high_water"] if active else None,
                high_water_lag_s=active["high_water_lag_s"] if active else None,
                messages_published=None,
                lag_ms=None,
            )
            return report
        slot_state = slots.slot_state(conn, options.slot.slot)
    record = process.relay_record(settings.run_dir)
    metrics = relay_metrics(settings.run_dir)
    if record is None:
        relay_process = {"state": "stopped"}
    else:
        state = "running" if record.is_running() else "crashed"
        relay_process = {"state": state, "pid": record.pid, "log": record.log}
    report.update(
        source="postgresql",
        slot=slot_state,
        relay=relay_process,
        metrics=metrics,
        messages_published=metrics["changes_published"] if metrics else 0,
        lag_ms=metrics["lag_ms"] if metrics else None,
    )
    return report


def stop(
    endpoints: Endpoints,
    settings: Settings,
    options: CdcOptions | None = None,
    *,
    drop_slot: bool = False,
) -> dict:
    """Stop publishing: cancel the changefeed, or stop the relay (cleanly: it finishes its
    batch and advances the slot). The slot stays, holding changes for the next start, unless
    ``drop_slot``, which also drops the publication. Returns ``source``, then ``cancelled``
    (job ids) on CRDB, or ``relay_stopped`` and ``dropped`` on PostgreSQL."""
    options = options or CdcOptions()
    report: dict = {}
    if endpoints.embedded or process.relay_record(settings.run_dir) is not None:
        report["relay_stopped"] = process.stop(settings.run_dir)
    with connect(endpoints.dsn) as conn:
        dialect = detect(conn)
        if dialect.is_cockroachdb:
            report.update(source="cockroachdb", cancelled=changefeed.stop(conn, dialect))
            return report
        report["source"] = "postgresql"
        report["dropped"] = slots.drop(conn, options.slot) if drop_slot else []
    return report


def _fixed(url: str) -> Callable[[], str]:
    return lambda: url


def _as_service(endpoints: Endpoints, admin_url: Callable[[], str], name: str):
    def current() -> str:
        return dataclasses.replace(endpoints, dsn=admin_url()).url_for(name)

    return current


def _stack_url(run_dir: Path, name: str, down: type[Exception]) -> Callable[[], str]:
    """The current URL of an embedded server, looked up at each call: ``up`` restarts a
    crashed server on a new port."""

    def current() -> str:
        record = StackState(Path(run_dir)).load().get(name)
        if record is None or not record.is_running() or not record.url:
            raise down(f"the embedded {name} in {run_dir} is not running")
        return record.url

    return current


def run_relay(
    endpoints: Endpoints,
    settings: Settings,
    options: CdcOptions | None = None,
    *,
    stop_event: threading.Event,
    status_file: Path | None = None,
) -> Relay:
    """Set up the slot and run the relay in this thread until ``stop_event`` is set.

    Returns the stopped relay (its :meth:`Relay.metrics`). Writes the status file (default
    ``<run_dir>/cdc/relay.json``) as it goes.
    """
    options = options or CdcOptions()
    bootstrap = _bootstrap(endpoints)
    with connect(endpoints.dsn) as conn:
        if detect(conn).is_cockroachdb:
            raise LabError(
                "CockroachDB publishes executions with a changefeed, not the relay; use "
                "`python -m workload cdc start`"
            )
        slots.setup(conn, options.slot)
    topics.ensure_topics(bootstrap, options.topics, timeout=options.kafka_timeout)
    # The slot and publication are set up above with the admin URL; the relay itself only
    # decodes, as the cdc_relay role (REPLICATION, SELECT on trades).
    database_url = _fixed(endpoints.url_for("cdc_relay"))
    kafka_bootstrap = _fixed(bootstrap)
    if endpoints.embedded and settings.dsn is None:
        database_url = _as_service(
            endpoints, _stack_url(settings.run_dir, "postgres", DatabaseDown), "cdc_relay"
        )
    if endpoints.embedded and settings.kafka_bootstrap is None:
        kafka_bootstrap = _stack_url(settings.run_dir, "kafka", BrokerDown)
    config = RelayConfig(
        slot=options.slot,
        topics=options.topics,
        status_path=status_file or process.status_path(settings.run_dir),
        options=options.relay,
    )
    relay = Relay(config, database_url=database_url, kafka_bootstrap=kafka_bootstrap)
    relay.run(stop_event)
    return relay

"""``cdc start|status|stop|relay``: executions into the Kafka topic by change data capture."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from workload import cdc
from workload.cdc import options as cdc_options
from workload.cdc import process
from workload.endpoints import resolve
from workload.settings import Settings, redact_url

ORDER = 60


def register(commands, common) -> None:
    parser = commands.add_parser(
        "cdc",
        help="publish trade executions into the partitioned Kafka topic (changefeed or relay)",
        description="Change data capture of trades.executions into the executions topic, "
        "keyed by block order id in CockroachDB's JSON changefeed envelope. On CockroachDB a "
        "changefeed publishes; on PostgreSQL a relay reads a logical replication slot and runs "
        "as a background process of the stack.",
    )
    actions = parser.add_subparsers(dest="cdc_action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    connection = common["connection"]

    start = actions.add_parser(
        "start",
        parents=[connection],
        help="create the topics, then the changefeed (CRDB) or slot + background relay (PG)",
        description="Create the executions topic and its dead-letter topic (idempotent). On "
        "CockroachDB enable rangefeeds and create the changefeed (unless one runs); on "
        "PostgreSQL create the publication and the replication slot and start the relay in "
        "the background (unless it runs). Only executions committed from then on are "
        "published, so start CDC before trading.",
    )
    cdc_options.add_arguments(start, creating=True)
    start.set_defaults(handler=run_start)

    status = actions.add_parser(
        "status",
        parents=[connection],
        help="the changefeed job or the relay: messages published, lag (exit 1 if not running)",
        description="Show the changefeed job and its high-water mark (CRDB), or the relay "
        "process, its slot, what it published and its commit-to-acknowledgement lag (PG).",
    )
    cdc_options.add_arguments(status, creating=False)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=run_status)

    stop = actions.add_parser(
        "stop",
        parents=[connection],
        help="cancel the changefeed (CRDB) or stop the relay (PG)",
        description="Cancel the changefeed on trades.executions, or stop the relay cleanly "
        "(it finishes its batch, waits for Kafka and advances the slot). The slot keeps "
        "collecting changes for the next start unless --drop-slot.",
    )
    cdc_options.add_arguments(stop, creating=False)
    stop.add_argument(
        "--drop-slot",
        action="store_true",
        help="PostgreSQL: also drop the replication slot and the publication (the slot "
        "otherwise keeps WAL on the server until the relay runs again)",
    )
    stop.set_defaults(handler=run_stop)

    relay = actions.add_parser(
        "relay",
        parents=[connection],
        help="run the PostgreSQL relay in the foreground until Ctrl-C / SIGTERM",
        description="Read trades.executions' changes from the logical replication slot and "
        "produce them to the topic; exits 0 after a clean shutdown (flush, advance the slot). "
        "Survives the database or the broker going away for a while.",
    )
    cdc_options.add_arguments(relay, creating=True)
    relay.set_defaults(handler=run_relay)


def _topics_line(states) -> str:
    return ", ".join(
        f"{s.name} ({s.partitions} partitions, {'created' if s.created else 'existed'})"
        for s in states
    )


def run_start(args, settings: Settings) -> int:
    endpoints = resolve(settings, need_kafka=True)
    options = cdc_options.from_arguments(args)
    report = cdc.start(endpoints, settings, options)
    print(f"topics: {_topics_line(report['topics'])}")
    if report["source"] == "cockroachdb":
        verb = "created" if report["created"] else "already running"
        print(
            f"changefeed job {report['job_id']} {verb}: trades.executions -> "
            f"{options.topics.name}, keyed by block_order_id (CockroachDB allows no resolved "
            "messages with key_column; `cdc status` shows the job's high-water mark)"
        )
        return 0
    made = [name for name, created in report["created"].items() if created]
    print(
        f"PostgreSQL: slot {options.slot.slot}, publication {options.slot.publication}"
        + (f" ({' and '.join(made)} created)" if made else " (existed)")
    )
    if report["unpublished_existing_rows"]:
        print(
            "note: trades.executions already held rows; a new slot publishes only what "
            "commits from now on"
        )
    verb = "started" if report["relay_started"] else "already running"
    print(f"relay {verb} (pid {report['relay_pid']}), log {report['log']}")
    print("`python -m workload cdc status` shows its progress; `cdc stop` stops it")
    return 0


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print_lag(lag: dict | None) -> None:
    if not lag or not lag.get("count"):
        print("  lag (commit -> Kafka ack): no changes yet")
        return
    print(
        f"  lag (commit -> Kafka ack) ms: p50 {_ms(lag.get('p50_ms'))}  "
        f"p90 {_ms(lag.get('p90_ms'))}  p99 {_ms(lag.get('p99_ms'))}  "
        f"max {_ms(lag.get('max_ms'))}  over {lag['count']:,} changes"
    )


def _print_topic(topic: dict) -> None:
    if topic.get("partitions") is None:
        print(f"  topic {topic['name']}: {topic.get('error', 'unknown')}")
        return
    messages = topic.get("messages")
    held = "?" if messages is None else f"{messages:,}"
    print(f"  topic {topic['name']}: {topic['partitions']} partitions, {held} messages")


def run_status(args, settings: Settings) -> int:
    endpoints = resolve(settings, need_kafka=True)
    options = cdc_options.from_arguments(args)
    report = cdc.status(endpoints, settings, options)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0 if _healthy(report) else 1
    if report["source"] == "cockroachdb":
        job = report["job"]
        if job is None:
            print("CDC on CockroachDB: no active changefeed on trades.executions")
        else:
            print(f"CDC on CockroachDB: changefeed job {job['job_id']} {job['status']}")
            print(f"  sink {redact_url(job['sink_uri'] or '')}")
            lag = job["high_water_lag_s"]
            behind = "" if lag is None else f" ({lag:,.1f} s behind now)"
            print(f"  high-water mark {job['high_water'] or 'not yet recorded'}{behind}")
            if job["error"]:
                print(f"  error: {job['error']}")
        _print_topic(report["topic"])
        return 0 if _healthy(report) else 1

    relay = report["relay"]
    where = f" (pid {relay['pid']})" if relay.get("pid") else ""
    print(f"CDC on PostgreSQL: relay {relay['state']}{where}")
    if relay["state"] == "crashed":
        print(f"  its log {relay['log']}; `python -m workload cdc start` starts it again")
    slot = report["slot"]
    if slot is None:
        print(f"  slot {options.slot.slot}: does not exist (`cdc start` creates it)")
    else:
        pending = slot["pending_wal_bytes"] or 0
        print(
            f"  slot {slot['slot']}: confirmed {slot['confirmed_flush_lsn']}, "
            f"{pending / 1e6:,.1f} MB of WAL not yet relayed"
        )
    _print_topic(report["topic"])
    metrics = report["metrics"]
    if metrics:
        print(
            f"  published {metrics['changes_published']:,} changes in "
            f"{metrics['transactions']:,} transactions and {metrics['resolved_messages']:,} "
            f"resolved messages; {metrics['changes_per_second']:,.0f} changes/s "
            f"(as of {metrics['written_at']})"
        )
        _print_lag(metrics["lag_ms"])
        reconnects = metrics["reconnects"]
        if any(reconnects.values()) or metrics["last_error"]:
            print(
                f"  reconnects: database {reconnects['database']}, kafka {reconnects['kafka']}; "
                f"last error: {metrics['last_error']}"
            )
        if metrics["skipped"]:
            print(f"  skipped: {metrics['skipped']}")
    return 0 if _healthy(report) else 1


def _healthy(report: dict) -> bool:
    if report["source"] == "cockroachdb":
        return report["job"] is not None
    return report["relay"]["state"] == "running"


def run_stop(args, settings: Settings) -> int:
    endpoints = resolve(settings, need_kafka=False)
    options = cdc_options.from_arguments(args)
    report = cdc.stop(endpoints, settings, options, drop_slot=args.drop_slot)
    if report["source"] == "cockroachdb":
        cancelled = report["cancelled"]
        print(
            f"cancelled changefeed job {', '.join(map(str, cancelled))}"
            if cancelled
            else "no active changefeed on trades.executions"
        )
        return 0
    print("relay stopped" if report.get("relay_stopped") else "no relay was running")
    if report["dropped"]:
        print(f"dropped {', '.join(report['dropped'])}")
    elif not args.drop_slot:
        print(
            f"slot {options.slot.slot} keeps collecting changes for the next `cdc start`; "
            "`cdc stop --drop-slot` removes it"
        )
    return 0


def run_relay(args, settings: Settings) -> int:
    endpoints = resolve(settings, need_kafka=True)
    options = cdc_options.from_arguments(args)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stop_event = threading.Event()

    def request_stop(signum, _frame) -> None:
        logging.getLogger("workload.cdc.relay").info("signal %d: stopping after this batch", signum)
        stop_event.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    process.register_self(settings.run_dir, options.slot.slot, options.topics.name)
    try:
        logging.getLogger("workload.cdc.relay").info(
            "relaying slot %s of %s to topic %s at %s",
            options.slot.slot,
            redact_url(endpoints.dsn),
            options.topics.name,
            endpoints.kafka_bootstrap,
        )
        relay = cdc.run_relay(endpoints, settings, options, stop_event=stop_event)
    finally:
        process.unregister_self(settings.run_dir)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    metrics = relay.metrics()
    print(
        f"relay stopped: {metrics['changes_published']:,} changes in "
        f"{metrics['transactions']:,} transactions published, slot at {metrics['confirmed_lsn']}"
    )
    return 0

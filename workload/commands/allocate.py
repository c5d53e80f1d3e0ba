"""``allocate``: the consumer group that allocates executions to accounts (phase ii)."""

from __future__ import annotations

import logging
from pathlib import Path

from workload.allocate import (
    STRATEGIES,
    AllocationReport,
    AllocatorOptions,
    RunOptions,
    run_allocation,
)
from workload.allocate.recording import record_allocation
from workload.allocate.runner import ISOLATION_LEVELS
from workload.endpoints import resolve
from workload.errors import LabError
from workload.records import DEFAULT_RESULTS_DIR
from workload.settings import Settings, parse_duration
from workload.topics import DEFAULT_TOPIC

ORDER = 70


def register(commands, common) -> None:
    defaults = AllocatorOptions()
    parser = commands.add_parser(
        "allocate",
        parents=[common["connection"]],
        help="run allocation consumers: executions from Kafka to fills, snapshots, accounts",
        description="Run K consumers in one Kafka consumer group. Each reads executions in "
        "CockroachDB's changefeed envelope and allocates them to the block order's accounts "
        "at the fair average price, with the chosen transaction strategy: block (one large "
        "transaction per completed block order, the legacy way), per-execution (one small "
        "transaction each) or micro-batch (up to --batch-size executions or --linger-ms per "
        "transaction). Offsets are committed after the database; bad messages go to the "
        "dead-letter topic. Runs until Ctrl-C / SIGTERM, or --until-idle.",
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default=defaults.strategy,
        help=f"transaction strategy (default {defaults.strategy})",
    )  # fmt: skip
    parser.add_argument(
        "--consumers", type=int, default=defaults.consumers, metavar="K",
        help="consumers in the group, at most the topic's partitions (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, metavar="N",
        help=f"micro-batch: executions per transaction at most (default {defaults.batch_size})",
    )  # fmt: skip
    parser.add_argument(
        "--linger-ms", type=float, default=defaults.linger_ms, metavar="MS",
        help="micro-batch: flush a partial batch after this long (default "
        f"{defaults.linger_ms:g})",
    )  # fmt: skip
    parser.add_argument(
        "--snapshot-every", type=int, default=defaults.snapshot_every, metavar="N",
        help="write a fair-price snapshot of a block order after every N applied executions "
        "(always on completion; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--until-idle", type=parse_duration, metavar="TIME",
        help="stop once every partition is drained and nothing arrived for TIME (e.g. 5s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-duration", type=parse_duration, metavar="TIME",
        help="stop after TIME whatever is left (e.g. 5m)",
    )  # fmt: skip
    parser.add_argument(
        "--isolation", choices=list(ISOLATION_LEVELS), default="default",
        help="transaction isolation (default: the server's; CockroachDB is serializable)",
    )  # fmt: skip
    parser.add_argument(
        "--topic", default=DEFAULT_TOPIC, help=f"executions topic (default {DEFAULT_TOPIC})"
    )
    parser.add_argument(
        "--group", default=defaults.group_id,
        help=f"consumer group id (default {defaults.group_id})",
    )  # fmt: skip
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS_DIR, metavar="DIR",
        help=f"where the run record goes, for `report` (default {DEFAULT_RESULTS_DIR})",
    )  # fmt: skip
    parser.add_argument("--no-record", action="store_true", help="do not write a run record")
    parser.set_defaults(handler=run)


def options_from(args) -> AllocatorOptions:
    return AllocatorOptions(
        strategy=args.strategy,
        consumers=args.consumers,
        batch_size=args.batch_size,
        linger_ms=args.linger_ms,
        snapshot_every=args.snapshot_every,
        topic=args.topic,
        group_id=args.group,
    )


def print_report(report: AllocationReport) -> None:
    d = report.as_dict()
    txn, e2e = d["txn_latency_ms"], d["e2e_latency_ms"]
    print(
        f"{d['strategy']}, {d['consumers']} consumer(s) on {d['partitions']} partitions: "
        f"{d['executions_allocated']:,} executions allocated in {d['active_seconds']:.2f} s = "
        f"{d['executions_per_s']:,.0f} executions/s"
    )
    print(
        f"  {d['transactions']:,} transactions, p50 {txn['p50_ms']} ms, p99 {txn['p99_ms']} ms; "
        f"retries {d['retries']['retries']}; end-to-end p99 {e2e['p99_ms']} ms; "
        f"{d['completed_blocks']:,} block orders completed; duplicates {d['duplicates']:,}"
    )
    if d["database_outages"]:
        print(
            f"  database outages survived: {d['database_outages']} "
            f"({d['outage_seconds']:.1f} s waiting for the database to come back)"
        )
    if d["dead_letters"]:
        letters = ", ".join(f"{k} {v}" for k, v in sorted(d["dead_letters"].items()))
        print(f"  dead letters: {letters}")


def run(args, settings: Settings) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The option checks run_allocation makes, before looking for servers: a bad value is
    # named as such, not reported as a missing stack.
    if min(args.consumers, args.batch_size, args.snapshot_every) < 1 or args.linger_ms < 0:
        raise LabError(
            "--consumers, --batch-size and --snapshot-every must be >= 1, --linger-ms >= 0"
        )
    endpoints = resolve(settings, need_kafka=True)
    report = run_allocation(
        endpoints.url_for("allocator"),
        endpoints.kafka_bootstrap,
        options_from(args),
        RunOptions(
            until_idle=args.until_idle, isolation=args.isolation, max_seconds=args.max_duration
        ),
    )
    print_report(report)
    if not args.no_record and report.total.allocated:
        path = record_allocation(
            report, endpoints, scale=settings.scale, seed=settings.seed,
            results_dir=args.results,
        )  # fmt: skip
        print(f"run record: {path}")
    return 0

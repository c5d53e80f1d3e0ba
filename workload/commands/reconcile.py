"""``reconcile``: re-drive executions that never reached allocations (after a broker loss)."""

from __future__ import annotations

from workload.commands.verify import print_results
from workload.endpoints import resolve
from workload.reconcile import ReconcileOptions, reconcile
from workload.settings import Settings, parse_duration
from workload.topics import DEFAULT_PARTITIONS, DEFAULT_TOPIC

ORDER = 87


def register(commands, common) -> None:
    defaults = ReconcileOptions()
    parser = commands.add_parser(
        "reconcile",
        parents=[common["connection"]],
        help="re-drive executions with no fill (lost by a broker) until verify's checks pass",
        description="Find the executions in trades.executions that have no fill in "
        "allocations.fills (and the pending fills waiting behind them), e.g. after a Kafka "
        "broker that keeps nothing was restarted, and re-drive them from the trades domain: "
        "re-publish them into the executions topic in the changefeed envelope, keyed by block "
        "order, for the running allocation consumers to allocate; or, with --apply, allocate "
        "them here through the same store. Fills are keyed by execution id, so an execution "
        "allocated twice over changes nothing. Repeats until verify's execution checks pass, "
        "up to --rounds. Exit 0 when they pass, 1 when they still fail, 2 on bad input.",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="only report what is missing (exit 1 if anything is)",
    )  # fmt: skip
    parser.add_argument(
        "--apply", action="store_true",
        help="allocate the missing executions directly instead of re-publishing them (when no "
        "allocation consumer group runs; safe next to one)",
    )  # fmt: skip
    parser.add_argument(
        "--topic", default=DEFAULT_TOPIC, help=f"executions topic (default {DEFAULT_TOPIC})"
    )
    parser.add_argument(
        "--partitions", type=int, default=DEFAULT_PARTITIONS, metavar="N",
        help="partitions if the topic must be created (an existing topic keeps its own; "
        f"default {DEFAULT_PARTITIONS})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, metavar="N",
        help="executions per produce flush, or per transaction with --apply (default "
        f"{defaults.batch_size})",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=defaults.rounds, metavar="N",
        help=f"re-drive at most N times (default {defaults.rounds})",
    )  # fmt: skip
    parser.add_argument(
        "--wait", type=parse_duration, default=defaults.wait, metavar="TIME",
        help="how long a round waits for the consumers to allocate what it published "
        f"(default {defaults.wait:g}s)",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def run(args, settings: Settings) -> int:
    options = ReconcileOptions(
        topic=args.topic,
        partitions=args.partitions,
        batch_size=args.batch_size,
        rounds=args.rounds,
        wait=args.wait,
        apply=args.apply,
        dry_run=args.dry_run,
    )
    endpoints = resolve(settings, need_kafka=not (args.apply or args.dry_run))
    report = reconcile(endpoints.dsn, endpoints.kafka_bootstrap, options)
    ok = print_results(report.checks)
    d = report.as_dict()
    print(
        f"reconcile: {'passed' if ok else 'FAILED'}: found {d['found']:,}, re-published "
        f"{d['published']:,}, applied here {d['applied']:,}, rejected {d['rejected']:,} in "
        f"{d['rounds']} round(s); {d['remaining']:,} execution(s) still with no fill"
    )
    return 0 if ok else 1

"""``sweep``: run every configuration on every topology, then compare them in one report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from workload import report as reports
from workload import sweep
from workload.allocate.consumer import STRATEGIES
from workload.records import DEFAULT_RESULTS_DIR
from workload.settings import Settings, parse_duration
from workload.topology import EMBEDDED, known_stacks, require_pulumi_cli

ORDER = 92


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give a comma-separated list")
    return names


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(n) for n in _names(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def register(commands, common) -> None:
    defaults = sweep.SweepOptions()
    parser = commands.add_parser(
        "sweep",
        parents=[common["connection"], common["data"]],
        help="run every configuration on every topology (Pulumi stacks or embedded), compare",
        description="For each topology in --stacks: bring it up (the embedded stack, or "
        "`pulumi up` of a Pulumi stack through the Automation API, then wait until SQL answers "
        "on every node and Kafka answers), create the schema and seed; then for each "
        "configuration (strategy x consumers x batch size; batch sizes apply to micro-batch "
        "only) reset the orders, trades and allocations domains, rebalance, start CDC, run "
        "Locust headless (allocation consumers plus market users streaming executions) for "
        "--duration and stop CDC; then tear the topology down (`pulumi destroy`). Each run "
        "writes a run record tagged with its topology; the sweep ends with the comparison "
        "report of its runs. A failed configuration is recorded and the sweep goes on; exit 1 "
        "if any failed. Ctrl-C tears down what is up and still reports what finished.",
    )
    parser.add_argument(
        "--stacks", type=_names, default=defaults.stacks, metavar="LIST",
        help=f"topologies, comma-separated: {EMBEDDED} or Pulumi stacks "
        f"({', '.join(known_stacks())}); default {EMBEDDED}",
    )  # fmt: skip
    parser.add_argument(
        "--strategies", type=_names, default=defaults.strategies, metavar="LIST",
        help=f"from {', '.join(STRATEGIES)} (default {','.join(defaults.strategies)})",
    )  # fmt: skip
    parser.add_argument(
        "--consumers", type=_counts, default=defaults.consumers, metavar="LIST",
        help="allocation consumer users, e.g. 1,2,4 (default "
        f"{','.join(map(str, defaults.consumers))})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-sizes", type=_counts, default=defaults.batch_sizes, metavar="LIST",
        help="micro-batch: executions per transaction at most, e.g. 10,100 (default "
        f"{','.join(map(str, defaults.batch_sizes))})",
    )  # fmt: skip
    parser.add_argument(
        "--users", type=int, default=defaults.users, metavar="N",
        help=f"market users streaming executions during each run (default {defaults.users})",
    )  # fmt: skip
    parser.add_argument(
        "--market-rate", type=float, default=defaults.market_rate, metavar="N",
        help=f"executions per second of each market user (default {defaults.market_rate:g})",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=parse_duration, default=defaults.duration, metavar="TIME",
        help="Locust run time of each configuration, e.g. 30s, 5m (default 5m)",
    )  # fmt: skip
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS_DIR, metavar="DIR",
        help=f"run records, the sweep's summary and the report (default {DEFAULT_RESULTS_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--keep-going", action=argparse.BooleanOptionalAction, default=True,
        help="after a failed configuration, run the rest (default); --no-keep-going stops "
        "at the first failure",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the plan (configurations and steps) and touch nothing",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def options_from(args) -> sweep.SweepOptions:
    return sweep.SweepOptions(
        stacks=args.stacks,
        strategies=args.strategies,
        consumers=args.consumers,
        batch_sizes=args.batch_sizes,
        users=args.users,
        market_rate=args.market_rate,
        duration=args.duration,
        results_dir=args.results,
        keep_going=args.keep_going,
    ).validate()


def run(args, settings: Settings) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = options_from(args)
    if args.dry_run:
        for line in sweep.plan(options, settings):
            print(line)
        if any(stack != EMBEDDED for stack in options.stacks):
            try:
                print(f"pulumi CLI: {require_pulumi_cli()}")
            except Exception as exc:  # a plan notes it; a real run refuses
                print(f"note: {exc}")
        return 0
    result = sweep.run_sweep(options, settings, progress=lambda line: print(line, flush=True))
    print()
    if result.report is not None:
        print(reports.render_tables(result.report, "text"), end="")
        written = ", ".join(p.name for p in [result.report.markdown, *result.report.charts] if p)
        print(f"report: {written} in {result.report.options.output_dir}")
    else:
        print(f"no report: {result.report_error}")
    print(f"sweep summary: {result.summary}")
    for outcome in result.failed:
        print(f"FAILED {outcome.configuration.label}: {outcome.detail}")
    done = sum(o.status == "done" for o in result.outcomes)
    print(f"== {done} of {len(result.outcomes)} configuration(s) done")
    return result.exit_code

"""``trade``: executions (execute, bust, replace) against open block orders."""

from __future__ import annotations

from datetime import date

from workload.db import connect
from workload.endpoints import resolve
from workload.errors import LabError
from workload.progress import TableProgress
from workload.settings import Settings, parse_duration
from workload.trade import MarketReport, TradeOptions, run_bulk, run_stream

ORDER = 50


def register(commands, common) -> None:
    defaults = TradeOptions()
    parser = commands.add_parser(
        "trade",
        parents=[common["connection"], common["data"]],
        help="write executions against open block orders (bulk, or a stream at a rate)",
        description="Execute open block orders in lots at prices inside the day's low-high "
        "range, with occasional busts (an earlier execution broken) and replaces (the order "
        "amended). Bulk mode (the default) fills every open block order as fast as the "
        "database allows; --rate streams executions for --duration, as a market feeds a live "
        "run. Executions go to trades.executions, the CDC source.",
    )
    parser.add_argument(
        "--rate",
        type=float,
        metavar="N",
        help="stream N executions per second instead of filling everything at once",
    )
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=60.0,
        metavar="TIME",
        help="how long to stream with --rate (e.g. 30s, 5m; default 60s)",
    )
    parser.add_argument(
        "--date",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="only block orders of this trading day (default: every open block order)",
    )
    parser.add_argument(
        "--lot-size", type=int, default=defaults.lot_size, metavar="SHARES",
        help=f"shares per lot (default {defaults.lot_size})",
    )  # fmt: skip
    parser.add_argument(
        "--max-lots", type=int, default=defaults.max_lots, metavar="N",
        help=f"an execution is 1..N lots (default {defaults.max_lots})",
    )  # fmt: skip
    parser.add_argument(
        "--bust-rate", type=float, default=defaults.bust_rate, metavar="FRACTION",
        help=f"share of events that bust an earlier execution (default {defaults.bust_rate})",
    )  # fmt: skip
    parser.add_argument(
        "--replace-rate", type=float, default=defaults.replace_rate, metavar="FRACTION",
        help=f"share of events that amend the order (default {defaults.replace_rate})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, metavar="N",
        help=f"executions per transaction in bulk mode (default {defaults.batch_size})",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def print_report(report: MarketReport) -> None:
    print(
        f"wrote {report.executions:,} executions in {report.seconds:.1f} s "
        f"({report.per_second:,.0f}/s): {report.executes:,} executes, {report.busts:,} busts, "
        f"{report.replaces:,} replaces; {report.blocks_filled:,} block orders filled"
    )


def run(args, settings: Settings) -> int:
    options = TradeOptions(
        lot_size=args.lot_size,
        max_lots=args.max_lots,
        bust_rate=args.bust_rate,
        replace_rate=args.replace_rate,
        batch_size=args.batch_size,
        trade_date=args.date,
        seed=settings.seed,
    ).validate()
    if args.rate is not None and args.rate <= 0:  # before looking for servers
        raise LabError("--rate and --duration must be positive")
    endpoints = resolve(settings)
    with connect(endpoints.url_for("trader")) as conn:
        if args.rate is None:
            with TableProgress(unit="shares") as progress:
                report = run_bulk(conn, options, progress=progress)
        else:
            report = run_stream(conn, options, rate=args.rate, duration=args.duration)
    print_report(report)
    if report.executions == 0:
        print("no open block orders: run `python -m workload rebalance` first")
    return 0

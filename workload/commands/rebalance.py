"""``rebalance``: phase i, customer and block orders from drift at a day's open."""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal, InvalidOperation

from workload.endpoints import resolve
from workload.rebalance import (
    DEFAULT_CASH_BUFFER,
    DEFAULT_TOLERANCE,
    RebalanceOptions,
    RebalanceReport,
    rebalance,
)
from workload.settings import Settings

ORDER = 40


def _decimal(text: str) -> Decimal:
    import argparse

    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def default_workers() -> int:
    # Rebalancing waits on the server's writes: two groups per core keeps the cores busy.
    return min(8, 2 * (os.cpu_count() or 1))


def register(commands, common) -> None:
    parser = commands.add_parser(
        "rebalance",
        parents=[common["connection"]],
        help="evaluate drift at a day's open and write customer and block orders",
        description="For every rebalance group (manager and model) and account, value the "
        "portfolio at the day's open, compare each holding with its model weight, and write a "
        "buy or sell for each line outside the tolerance band; customer orders aggregate into "
        "block orders per (request, security, side). Sells never exceed holdings; buys never "
        "spend more than cash plus sells. Re-running a day creates nothing twice.",
    )
    parser.add_argument(
        "--date",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="trading day whose open prices are used (default: the last seeded day)",
    )
    parser.add_argument(
        "--tolerance",
        type=_decimal,
        default=DEFAULT_TOLERANCE,
        metavar="FRACTION",
        help="drift band as a fraction of the portfolio: a line whose weight is within it of "
        f"the target is not traded (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--cash-buffer",
        type=_decimal,
        default=DEFAULT_CASH_BUFFER,
        metavar="FRACTION",
        help="budget buys this much above the open, so that fills later in the day still "
        f"find the cash (default {DEFAULT_CASH_BUFFER})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="rebalance groups written concurrently (default: two per core)",
    )
    parser.set_defaults(handler=run)


def print_report(report: RebalanceReport) -> None:
    print(
        f"rebalanced {report.accounts:,} accounts on {report.trade_date} in "
        f"{report.seconds:.1f} s ({report.accounts_per_second:,.0f} accounts/s): "
        f"{report.customer_orders:,} customer orders in {report.block_orders:,} block orders"
    )
    if report.groups_already_done:
        print(
            f"  {report.groups_already_done} of {report.groups} groups were already rebalanced "
            "on that day and were left as they are"
        )


def run(args, settings: Settings) -> int:
    endpoints = resolve(settings)
    options = RebalanceOptions(
        trade_date=args.date,
        tolerance=args.tolerance,
        cash_buffer=args.cash_buffer,
        workers=args.workers,
    )
    print_report(rebalance(endpoints.url_for("rebalancer"), options))
    return 0

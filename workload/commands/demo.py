"""``demo``: the main job on the embedded default, from nothing to a readable summary."""

from __future__ import annotations

import time

from workload import schema
from workload.commands.rebalance import default_workers
from workload.commands.rebalance import print_report as print_rebalance
from workload.commands.seed import add_scale_knobs, print_report, scale_from, seed_database
from workload.commands.trade import print_report as print_trade
from workload.db import connect
from workload.dialect import detect
from workload.embedded import EmbeddedStack
from workload.progress import TableProgress
from workload.rebalance import RebalanceOptions, rebalance
from workload.settings import Settings, redact_url
from workload.trade import TradeOptions, run_bulk

ORDER = 90


def register(commands, common) -> None:
    parser = commands.add_parser(
        "demo",
        parents=[common["connection"], common["data"]],
        help="run the whole flow on the embedded default and print a summary",
        description="Start the embedded stack (unless --dsn is given), create a fresh schema, "
        "seed at the chosen scale (default medium), rebalance on the last seeded day, trade "
        "every block order, and summarise what was created. Stops what it started unless "
        "--keep.",
    )
    add_scale_knobs(parser)
    parser.add_argument(
        "--keep", action="store_true", help="leave the embedded stack running to explore"
    )
    parser.set_defaults(handler=run)


def run(args, settings: Settings) -> int:
    scale = scale_from(args, settings)
    started = time.perf_counter()
    if settings.dsn:
        return _flow(settings.dsn, scale, settings, started)
    stack = EmbeddedStack(settings.run_dir, keep=args.keep)
    with stack as info:
        code = _flow(info.dsn, scale, settings, started)
        if args.keep:
            print(f"\nthe stack keeps running in {settings.run_dir}; stop it with "
                  "`python -m workload down`")  # fmt: skip
        return code


def _flow(dsn: str, scale, settings: Settings, started: float) -> int:
    print(f"== demo on {redact_url(dsn)} at scale {settings.scale}, seed {settings.seed}")
    with connect(dsn) as conn:
        dialect = detect(conn)
        dropped = schema.drop(conn, dialect)
        schema.create(conn, dialect)
    print(
        f"-- schema: {len(schema.TABLES)} tables in {len(schema.DOMAINS)} domains on "
        f"{dialect.server_name}" + (" (previous demo data dropped)" if dropped else "")
    )
    print("-- seed")
    print_report(seed_database(dsn, scale, settings.seed))
    print("-- rebalance (phase i): drift at the open -> customer and block orders")
    print_rebalance(rebalance(dsn, RebalanceOptions(workers=default_workers())))
    print("-- trade: executions against the block orders (execute, bust, replace)")
    with connect(dsn) as conn, TableProgress(unit="shares") as progress:
        print_trade(run_bulk(conn, TradeOptions(seed=settings.seed), progress=progress))
    print(f"== demo finished in {time.perf_counter() - started:.1f} s")
    return 0

"""Rebalancing and trading speed at a scale (default large) on the embedded default.

Prints accounts rebalanced per second (phase i: drift -> customer and block orders) and
executions generated per second in bulk mode (the market filling every block order).

    .venv/bin/python bench/rebalance_trade.py [--scale large] [--workers N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from workload import schema, seed
from workload.commands.rebalance import default_workers
from workload.dialect import detect
from workload.embedded import EmbeddedStack
from workload.rebalance import RebalanceOptions, rebalance
from workload.trade import TradeOptions, run_bulk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="large", choices=list(seed.PRESETS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--batch-size", type=int, default=TradeOptions().batch_size)
    args = parser.parse_args()
    scale = seed.scale_for(args.scale)

    with (
        tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            schema.create(conn, detect(conn))
            seed.seed(conn, scale, args.seed)
            conn.execute("CHECKPOINT")
        r = rebalance(info.dsn, RebalanceOptions(workers=args.workers))
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            t = run_bulk(conn, TradeOptions(seed=args.seed, batch_size=args.batch_size))

    cores = os.cpu_count()
    print(f"machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(f"scale {args.scale}, seed {args.seed}, {args.workers} rebalance workers")
    print(
        f"rebalance: {r.accounts:,} accounts in {r.seconds:.2f} s = "
        f"{r.accounts_per_second:,.0f} accounts/s (goal >= 20,000); "
        f"{r.customer_orders:,} customer orders "
        f"({r.customer_orders / r.seconds:,.0f}/s), {r.block_orders:,} block orders"
    )
    print(
        f"trade (bulk, {args.batch_size}/transaction): {t.executions:,} executions in "
        f"{t.seconds:.2f} s = {t.per_second:,.0f} executions/s "
        f"({t.busts:,} busts, {t.replaces:,} replaces, {t.blocks_filled:,} blocks filled)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

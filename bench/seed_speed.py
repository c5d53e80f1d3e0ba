"""Seeding speed at a scale (default large), side by side with a plain COPY of the same rows.

Prints rows/s for `seed` (generation + COPY of all three domains) and for a plain
``COPY holdings.positions FROM STDIN`` of positions rows that were generated beforehand (no
generation in the timed part), into the same table with the same constraints. The ratio of
the two is the figure: how close the seeder runs to the server's own COPY speed.

    .venv/bin/python bench/seed_speed.py [--scale large] [--seed 42] [--repeat 1]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from workload import schema, seed
from workload.dialect import detect
from workload.embedded import EmbeddedStack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="large", choices=list(seed.PRESETS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="alternate runs of each")
    args = parser.parse_args()
    scale = seed.scale_for(args.scale)

    with (
        tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        securities = seed.generate_securities(scale, args.seed)
        prices = seed.generate_prices(scale, args.seed)
        holdings = seed.generate_holdings(scale, args.seed, prices.close[:, 0])
        positions_text = list(seed.position_rows(holdings, securities))
        positions = len(holdings.position_account)

        seed_rates, copy_rates, seed_seconds = [], [], []
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            dialect = detect(conn)
            schema.create(conn, dialect)
            for _ in range(args.repeat):
                seed.reset(conn)
                conn.execute("CHECKPOINT")
                report = seed.seed(conn, scale, args.seed)
                seed_rates.append(report.total_rows / report.seconds)
                seed_seconds.append(report.seconds)

                conn.execute("TRUNCATE holdings.positions")
                conn.execute("CHECKPOINT")
                started = time.perf_counter()
                seed.copy_rows(conn, seed.TARGETS["positions"], positions_text)
                copy_rates.append(positions / (time.perf_counter() - started))

    best_seed, best_copy = max(seed_rates), max(copy_rates)
    print(f"machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    rows = f"{report.total_rows:,} rows ({positions:,} positions)"
    print(f"scale {args.scale}: {rows}, seed {args.seed}")
    print(f"{'what':<44}{'rows/s':>12}")
    print(f"{'seed (generate + COPY, all domains)':<44}{best_seed:>12,.0f}")
    print(f"{'plain COPY of pre-generated positions rows':<44}{best_copy:>12,.0f}")
    print(f"ratio seed / plain COPY: {best_seed / best_copy:.2f}  (goal >= 0.5)")
    print(f"seed wall time: {min(seed_seconds):.1f} s  (goal < 60 s for large)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

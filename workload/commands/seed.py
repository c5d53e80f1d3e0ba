"""``seed``: the reference, market and holdings domains at a chosen scale."""

from __future__ import annotations

from datetime import date

from workload import seed as seeding
from workload.db import connect
from workload.dialect import Dialect, detect
from workload.endpoints import resolve
from workload.errors import LabError
from workload.progress import TableProgress
from workload.settings import Settings

KNOB_HELP = {
    "securities": "number of securities",
    "days": "business days of daily prices",
    "managers": "number of managers",
    "models_per_manager": "models (target portfolios) per manager",
    "accounts": "number of accounts",
    "positions_per_account": "securities per model, so about the positions per account",
}


def add_scale_knobs(parser) -> None:
    """Per-knob overrides of the scale preset, shared by every command that seeds."""
    group = parser.add_argument_group("scale overrides (default: the preset's value)")
    for name in seeding.SCALE_FIELDS:
        group.add_argument(
            "--" + name.replace("_", "-"), type=int, metavar="N", help=KNOB_HELP[name]
        )
    group.add_argument(
        "--start-date",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help=f"first business day of prices (default {seeding.DEFAULT_START})",
    )


def scale_from(args, settings: Settings) -> seeding.Scale:
    overrides = {name: getattr(args, name, None) for name in seeding.SCALE_FIELDS}
    overrides["start_date"] = getattr(args, "start_date", None)
    return seeding.scale_for(settings.scale, **overrides)


ORDER = 30


def register(commands, common) -> None:
    parser = commands.add_parser(
        "seed",
        parents=[common["connection"], common["data"]],
        help="seed reference, market and holdings data (deterministic per --seed)",
        description="Generate securities, daily prices (geometric Brownian motion), managers, "
        "models, accounts and drifted positions, and write them with COPY. The same --seed "
        "and scale give the same rows.",
    )
    add_scale_knobs(parser)
    parser.add_argument(
        "--reset", action="store_true", help="delete all existing data of the kit first"
    )
    parser.set_defaults(handler=run)


def copy_batch_bytes(dialect: Dialect) -> int | None:
    # CockroachDB commits each COPY as one transaction: keep each one well below its limits.
    return 4 * 1024 * 1024 if dialect.is_cockroachdb else None


def seed_database(
    dsn: str,
    scale: seeding.Scale,
    seed: int,
    *,
    reset: bool = False,
    reset_dsn: str | None = None,
):
    """Seed through ``dsn``; ``reset`` first empties every domain through ``reset_dsn`` (the
    admin URL: the seeder's role may not truncate other services' domains)."""
    if reset:
        with connect(reset_dsn or dsn) as conn:
            try:
                seeding.reset(conn)
            except Exception as exc:
                raise LabError(
                    f"cannot reset the data ({exc}); run `schema create` first"
                ) from None
    with connect(dsn) as conn:
        dialect = detect(conn)
        with TableProgress() as progress:
            return seeding.seed(
                conn, scale, seed, batch_bytes=copy_batch_bytes(dialect), progress=progress
            )


def print_report(report: seeding.SeedReport) -> None:
    print(
        f"seeded {report.total_rows:,} rows in {report.seconds:.1f} s "
        f"({report.total_rows / max(report.seconds, 1e-9):,.0f} rows/s), seed {report.seed}"
    )
    for table, rows in report.rows.items():
        print(f"  {table:<28} {rows:>12,}")


def run(args, settings: Settings) -> int:
    scale = scale_from(args, settings)
    endpoints = resolve(settings)
    report = seed_database(
        endpoints.url_for("seeder"), scale, settings.seed, reset=args.reset,
        reset_dsn=endpoints.dsn,
    )  # fmt: skip
    print_report(report)
    return 0

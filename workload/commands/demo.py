"""``demo``: the main job on the embedded default, from nothing to a readable summary."""

from __future__ import annotations

import logging
import time
import uuid

from workload import cdc, schema
from workload.allocate import STRATEGIES, AllocatorOptions, RunOptions, run_allocation
from workload.allocate.recording import record_allocation
from workload.allocate.store import reset_allocations
from workload.booking import BookingOptions, run_booking
from workload.booking import print_report as print_booking
from workload.commands.allocate import print_report as print_allocation
from workload.commands.rebalance import default_workers
from workload.commands.rebalance import print_report as print_rebalance
from workload.commands.seed import add_scale_knobs, print_report, scale_from, seed_database
from workload.commands.trade import print_report as print_trade
from workload.db import connect
from workload.dialect import detect
from workload.embedded import EmbeddedStack
from workload.endpoints import EMBEDDED_TOPOLOGY, Endpoints, resolve
from workload.errors import LabError
from workload.progress import TableProgress
from workload.rebalance import RebalanceOptions, rebalance
from workload.settings import Settings, redact_url
from workload.trade import TradeOptions, run_bulk
from workload.verify import run_checks

ORDER = 90


def register(commands, common) -> None:
    parser = commands.add_parser(
        "demo",
        parents=[common["connection"], common["data"]],
        help="run the whole flow on the embedded default and print a summary",
        description="Start the embedded stack (unless --dsn is given), create a fresh schema, "
        "seed at the chosen scale (default medium), rebalance on the last seeded day, start "
        "CDC, trade every block order, then allocate the same executions with each strategy "
        "(block, per-execution, micro-batch), verify each, book the last run's allocations "
        "into holdings with settlements, and end with a table comparing the strategies. "
        "Stops what it started unless --keep.",
    )
    add_scale_knobs(parser)
    parser.add_argument(
        "--consumers", type=int, default=4, metavar="K",
        help="allocation consumers per strategy (default 4)",
    )  # fmt: skip
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), metavar="LIST",
        help=f"strategies to compare, comma-separated (default {','.join(STRATEGIES)})",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="leave the embedded stack running to explore"
    )
    parser.set_defaults(handler=run)


def run(args, settings: Settings) -> int:
    scale = scale_from(args, settings)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise LabError(f"--strategies: choose from {', '.join(STRATEGIES)} (got {args.strategies})")
    if args.consumers < 1:  # before the stack starts, not after
        raise LabError("--consumers must be at least 1")
    started = time.perf_counter()
    if settings.dsn:
        return _flow(resolve(settings, need_kafka=True), scale, settings, args, strategies, started)
    with EmbeddedStack(settings.run_dir, keep=args.keep) as info:
        endpoints = Endpoints(
            dsn=info.dsn,
            kafka_bootstrap=info.kafka_bootstrap,
            topology=settings.topology or EMBEDDED_TOPOLOGY,
            embedded=True,
            service_roles=settings.service_roles,
        )
        code = _flow(endpoints, scale, settings, args, strategies, started)
        if args.keep:
            print(f"\nthe stack keeps running in {settings.run_dir}; stop it with "
                  "`python -m workload down`")  # fmt: skip
        return code


def _flow(endpoints: Endpoints, scale, settings: Settings, args, strategies, started) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dsn = endpoints.dsn
    print(f"== demo on {redact_url(dsn)} at scale {settings.scale}, seed {settings.seed}")
    with connect(dsn) as conn:
        dialect = detect(conn)
        cdc.stop(endpoints, settings, drop_slot=True)  # a previous demo's relay and slot
        dropped = schema.drop(conn, dialect)
        schema.create(conn, dialect, service_roles=settings.service_roles)
    print(
        f"-- schema: {len(schema.TABLES)} tables in {len(schema.DOMAINS)} domains on "
        f"{dialect.server_name}" + (" (previous demo data dropped)" if dropped else "")
    )
    print("-- seed")
    print_report(seed_database(endpoints.url_for("seeder"), scale, settings.seed))
    print("-- rebalance (phase i): drift at the open -> customer and block orders")
    print_rebalance(
        rebalance(endpoints.url_for("rebalancer"), RebalanceOptions(workers=default_workers()))
    )

    print("-- CDC: executions -> Kafka topic, partitioned by block order")
    cdc.start(endpoints, settings)
    try:
        print("-- trade: executions against the block orders (execute, bust, replace)")
        with connect(endpoints.url_for("trader")) as conn, TableProgress(unit="shares") as progress:
            traded = run_bulk(conn, TradeOptions(seed=settings.seed), progress=progress)
        print_trade(traded)
        published = _wait_for_cdc(endpoints, settings, traded.executions)
        lag = cdc.status(endpoints, settings).get("lag_ms") or {}
        print(f"   {published:,} changes published; commit-to-Kafka lag p50 "
              f"{lag.get('p50_ms')} ms, p99 {lag.get('p99_ms')} ms")  # fmt: skip

        rows = []
        for strategy in strategies:
            print(f"-- allocate (phase ii), strategy {strategy}, {args.consumers} consumers")
            with connect(dsn) as conn:
                reset_allocations(conn)
            options = AllocatorOptions(
                strategy=strategy,
                consumers=args.consumers,
                group_id=f"demo-{strategy}-{uuid.uuid4().hex[:6]}",
            )
            report = run_allocation(
                endpoints.url_for("allocator"),
                endpoints.kafka_bootstrap,
                options,
                RunOptions(until_idle=2.0),
            )
            print_allocation(report)
            with connect(dsn) as conn:
                failed = [r for r in run_checks(conn) if not r.passed]
            verdict = (
                "passed" if not failed else "FAILED: " + ", ".join(r.check.name for r in failed)
            )
            print(f"   verify {verdict}")
            record_allocation(
                report, endpoints, source="demo", scale=settings.scale, seed=settings.seed,
                verify="passed" if not failed else "failed", cdc_lag_ms=lag or None,
            )  # fmt: skip
            rows.append((report.as_dict(), verdict))

        print("-- book (phase iii): the last run's allocations -> holdings, settlements")
        booking = run_booking(
            endpoints.url_for("booker"),
            endpoints.kafka_bootstrap,
            BookingOptions(until_idle=1.0, workers=2),
        )
        print_booking(booking)
        with connect(dsn) as conn:
            failed = [r for r in run_checks(conn) if not r.passed]
        booked_verdict = (
            "passed" if not failed else "FAILED: " + ", ".join(r.check.name for r in failed)
        )
        print(f"   verify after booking {booked_verdict}")
    finally:
        cdc.stop(endpoints, settings, drop_slot=True)

    print()
    print(f"{'strategy':<14}{'consumers':>10}{'allocated':>11}{'exec/s':>9}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'retries':>9}{'e2e p99 ms':>12}  verify")  # fmt: skip
    for d, verdict in rows:
        t, e2e = d["txn_latency_ms"], d["e2e_latency_ms"]
        print(
            f"{d['strategy']:<14}{d['consumers']:>10}{d['executions_allocated']:>11,}"
            f"{d['executions_per_s']:>9,.0f}{_ms(t['p50_ms']):>9}{_ms(t['p99_ms']):>9}"
            f"{d['retries']['retries']:>9}{_ms(e2e['p99_ms']):>12}  {verdict}"
        )
    print(f"== demo finished in {time.perf_counter() - started:.1f} s; run records in "
          "results/ (compare them with `python -m workload report`)")  # fmt: skip
    letters = sum(booking.dead_letters.values())
    print(f"booking: {booking.bookings:,} bookings of {booking.blocks_booked:,} block orders, "
          f"{booking.settlements_published:,} settlements published, {letters:,} dead letters; "
          f"verify {booked_verdict}")  # fmt: skip
    passed = [v for _, v in rows] + [booked_verdict]
    return 0 if all(v == "passed" for v in passed) else 1


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _wait_for_cdc(endpoints: Endpoints, settings: Settings, expected: int, timeout=120.0) -> int:
    """Until the relay has published every execution written (or the changefeed caught up)."""
    if cdc.status(endpoints, settings).get("messages_published") is None:
        return expected  # a changefeed: its high-water mark passes the trades by itself
    deadline = time.monotonic() + timeout
    published = 0
    while time.monotonic() < deadline:
        # The relay's own counters: a file read, where status() opens Kafka and SQL clients.
        published = (cdc.relay_metrics(settings.run_dir) or {}).get("changes_published", 0)
        if published >= expected:
            return published
        time.sleep(0.5)
    raise LabError(
        f"CDC published {published:,} of {expected:,} executions within {timeout:.0f} s; "
        "see `python -m workload cdc status`"
    )

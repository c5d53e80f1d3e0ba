"""Micro-batch allocation: throughput against consumers and batch size, and one consumer's
memory (RSS) after 10,000 and after 100,000 executions.

One embedded stack in a throwaway run directory. Seeds the holdings domain, rebalances on the
last two seeded days, starts the CDC relay into a topic of ``--partitions`` partitions, then:

(a) grid: trades the earlier day's block orders into about ``--grid-executions`` executions
    (the lot size is chosen for that count) and, for every batch size x consumer count,
    empties the allocations domain, allocates everything with the micro-batch strategy and a
    fresh consumer group until idle, and verifies the invariants. Executions/s counts from
    the first message read to the last offset committed. Prints the executions/s table with
    ratios to the 1-consumer cell of the row and to the batch-1 cell of the column.
(b) memory: trades the last day's block orders into at least ``--executions`` more, empties
    the allocations domain and runs ONE consumer as a process of its own
    (``python -m workload allocate --consumers 1 --until-idle ...``) over the whole topic.
    Its resident set size (RSS, psutil) is sampled each time it has allocated another
    ``--first-sample`` executions; prints the series and the growth from the first sample
    (10,000 by default) to ``--executions`` (100,000). Goal: < 10%.

    .venv/bin/python bench/allocate_scaling.py [--consumers 1,2,4,8] [--batch-sizes 1,10,100,1000]
        [--grid-executions 2000] [--executions 100000] [--skip-grid] [--skip-memory]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import date
from pathlib import Path

import psutil
import psycopg
from _common import allocate_verified, machine, seeded, verified

from workload import cdc, seed
from workload.allocate import AllocationReport, AllocatorOptions
from workload.allocate.store import reset_allocations
from workload.cdc.options import CdcOptions
from workload.embedded import EmbeddedStack
from workload.endpoints import EMBEDDED_TOPOLOGY, Endpoints
from workload.errors import LabError
from workload.rebalance import RebalanceOptions, rebalance
from workload.settings import Settings
from workload.topics import TopicSpec
from workload.trade import TradeOptions, run_bulk

REPO = Path(__file__).resolve().parent.parent
ALLOCATED = "SELECT coalesce(sum(executions_applied), 0) FROM allocations.block_fills"

# With --tracemalloc the consumer runs under this wrapper: `python -X tracemalloc=1 -c
# TRACEMALLOC_CHILD SNAPSHOT_DIR allocate ...` writes a snapshot of Python's heap on SIGUSR1.
TRACEMALLOC_CHILD = """
import runpy, signal, sys, tracemalloc
from pathlib import Path
out = Path(sys.argv.pop(1))
def dump(signum, frame):
    tracemalloc.take_snapshot().dump(str(out / f"{len(list(out.glob('*.snap'))):03d}.snap"))
signal.signal(signal.SIGUSR1, dump)
sys.argv[0] = "workload"
runpy.run_module("workload", run_name="__main__", alter_sys=True)
"""


def counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Figures and their reading: docs/benchmarks.md.",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=1000,
        help="accounts seeded at the small scale (default %(default)s)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="partitions of the executions topic (default %(default)s)",
    )
    grid = parser.add_argument_group("(a) throughput grid")
    grid.add_argument(
        "--consumers",
        type=counts,
        default=[1, 2, 4, 8],
        metavar="LIST",
        help="consumer counts, comma-separated (default 1,2,4,8)",
    )
    grid.add_argument(
        "--batch-sizes",
        type=counts,
        default=[1, 10, 100, 1000],
        metavar="LIST",
        help="micro-batch sizes, comma-separated (default 1,10,100,1000)",
    )
    grid.add_argument(
        "--grid-executions",
        type=int,
        default=2000,
        metavar="N",
        help="about this many executions allocated in every cell (default "
        "%(default)s; batch size 1 runs ~100 executions/s here)",
    )
    grid.add_argument("--skip-grid", action="store_true", help="only the memory part")
    memory = parser.add_argument_group("(b) consumer memory")
    memory.add_argument(
        "--executions",
        type=int,
        default=100_000,
        metavar="N",
        help="the last RSS sample, in executions allocated (default %(default)s)",
    )
    memory.add_argument(
        "--first-sample",
        type=int,
        default=10_000,
        metavar="N",
        help="the first RSS sample, and the step between samples (default %(default)s)",
    )
    memory.add_argument(
        "--memory-batch-size",
        type=int,
        default=100,
        metavar="N",
        help="micro-batch size of the memory run (default %(default)s)",
    )
    memory.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace the consumer's Python allocations and print what grew from the "
        "first sample to the last (slows the consumer; for finding leaks, not for figures)",
    )
    memory.add_argument("--skip-memory", action="store_true", help="only the grid")
    parser.add_argument(
        "--until-idle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="a run ends once drained and idle this long (default %(default)s)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.accounts < 1 or args.partitions < 1 or args.grid_executions < 1:
        parser.error("--accounts, --partitions and --grid-executions must be at least 1")
    if max(args.consumers) > args.partitions:
        parser.error(f"--consumers: at most --partitions ({args.partitions}) consumers")
    if not 1 <= args.first_sample < args.executions:
        parser.error("--first-sample must be at least 1 and below --executions")
    if args.memory_batch_size < 1 or args.until_idle <= 0:
        parser.error("--memory-batch-size must be at least 1 and --until-idle above 0")
    return args


def last_two_days(dsn: str) -> tuple[date, date]:
    with psycopg.connect(dsn) as conn:
        days = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT trade_date FROM market.daily_prices "
                "ORDER BY trade_date DESC LIMIT 2"
            )
        ]
    return days[1], days[0]


def trade_day(dsn: str, day: date, executions: int) -> int:
    """Trade the day's block orders in equal lots sized for about ``executions``
    executions; returns how many were written."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (shares,) = conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM orders.block_orders WHERE trade_date = %s",
            (day,),
        ).fetchone()
        lot = max(1, shares // executions)
        # A seed per day: the trade generator's ids come from it, and each day starts afresh.
        options = TradeOptions(lot_size=lot, max_lots=1, trade_date=day, seed=day.toordinal())
        report = run_bulk(conn, options)
    print(f"   {day}: {shares:,} shares in lots of {lot:,}: {report.executions:,} executions "
          f"({report.busts:,} busts, {report.replaces:,} replaces)", flush=True)  # fmt: skip
    return report.executions


def wait_published(run_dir: Path, expected: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    published = 0
    while time.monotonic() < deadline:
        published = (cdc.relay_metrics(run_dir) or {}).get("changes_published", 0)
        if published >= expected:
            return
        time.sleep(0.25)
    raise LabError(f"the relay published {published:,} of {expected:,} changes in {timeout} s")


# -- (a) the grid ----------------------------------------------------------------------------


def run_grid(args, dsn: str, bootstrap: str, topic: str) -> dict[tuple[int, int], tuple]:
    cells: dict[tuple[int, int], tuple[AllocationReport, bool]] = {}
    for batch in args.batch_sizes:
        for consumers in args.consumers:
            options = AllocatorOptions(
                strategy="micro-batch",
                consumers=consumers,
                batch_size=batch,
                topic=topic,
                group_id=f"scaling-{uuid.uuid4().hex[:8]}",
            )
            report, ok = allocate_verified(dsn, bootstrap, options, args.until_idle)
            cells[batch, consumers] = (report, ok)
            d = report.as_dict()
            print(f"   batch {batch:>4}, {consumers} consumer(s): {d['executions_per_s']:>7,.0f} "
                  f"executions/s, {d['transactions']:,} transactions, "
                  f"p99 {d['txn_latency_ms']['p99_ms']} ms, "
                  f"verify {'passed' if ok else 'FAILED'}", flush=True)  # fmt: skip
    return cells


def print_grid(args, cells) -> None:
    def rate(batch, consumers):
        return cells[batch, consumers][0].executions_per_second

    head = " | ".join(f"{c} consumer{'s' if c > 1 else ''}" for c in args.consumers)
    rule = " | ".join("---:" for _ in args.consumers)
    base_c, base_b = args.consumers[0], args.batch_sizes[0]
    print(f"\nexecutions/s (x ratio to {base_c} consumer(s), same batch size)")
    print(f"| batch size | {head} |\n| ---: | {rule} |")
    for b in args.batch_sizes:
        row = " | ".join(
            f"{rate(b, c):,.0f} (x{rate(b, c) / max(rate(b, base_c), 1e-9):.2f})"
            for c in args.consumers
        )
        print(f"| {b:,} | {row} |")
    print(f"\nratio to batch size {base_b}, same consumers")
    print(f"| batch size | {head} |\n| ---: | {rule} |")
    for b in args.batch_sizes:
        row = " | ".join(f"x{rate(b, c) / max(rate(base_b, c), 1e-9):.1f}" for c in args.consumers)
        print(f"| {b:,} | {row} |")
    print("\n| batch size | consumers | executions/s | transactions | executions per txn "
          "| p50 ms | p99 ms | retries | verify |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for (b, c), (report, ok) in cells.items():
        d = report.as_dict()
        t = d["txn_latency_ms"]
        per_txn = d["executions_allocated"] / max(d["transactions"], 1)
        print(f"| {b:,} | {c} | {d['executions_per_s']:,.0f} | {d['transactions']:,} | "
              f"{per_txn:,.1f} | {t['p50_ms']} | {t['p99_ms']} | {d['retries']['retries']} | "
              f"{'passed' if ok else 'FAILED'} |")  # fmt: skip


# -- (b) memory ------------------------------------------------------------------------------


def run_memory(args, dsn: str, bootstrap: str, run_dir: Path, topic: str) -> list[tuple]:
    """One consumer process over the whole topic; (allocated, RSS bytes, seconds) samples."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        reset_allocations(conn)
        conn.execute("CHECKPOINT")
    snapshots = run_dir / "tracemalloc"
    snapshots.mkdir(exist_ok=True)
    python = [sys.executable, "-m", "workload"]
    if args.tracemalloc:
        python = [sys.executable, "-X", "tracemalloc=1", "-c", TRACEMALLOC_CHILD, str(snapshots)]
    command = [
        *python, "allocate", "--dsn", dsn,
        "--kafka-bootstrap", bootstrap, "--run-dir", str(run_dir), "--topic", topic,
        "--group", f"memory-{uuid.uuid4().hex[:8]}", "--strategy", "micro-batch",
        "--consumers", "1", "--batch-size", str(args.memory_batch_size),
        "--until-idle", f"{args.until_idle}s", "--no-record",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    thresholds = list(range(args.first_sample, args.executions + 1, args.first_sample))
    if thresholds[-1] != args.executions:
        thresholds.append(args.executions)
    samples: list[tuple[int, int, float]] = []
    log_path = run_dir / "allocate-memory.log"
    with open(log_path, "wb") as log, psycopg.connect(dsn, autocommit=True) as conn:
        consumer = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=log)
        process = psutil.Process(consumer.pid)
        started = time.monotonic()
        try:
            while consumer.poll() is None:
                (allocated,) = conn.execute(ALLOCATED).fetchone()
                while thresholds and allocated >= thresholds[0]:
                    rss = process.memory_info().rss
                    samples.append((allocated, rss, time.monotonic() - started))
                    print(f"   {allocated:>8,} allocated: RSS {rss / 2**20:,.1f} MiB "
                          f"({time.monotonic() - started:,.0f} s)", flush=True)  # fmt: skip
                    thresholds.pop(0)
                    if args.tracemalloc and (not samples[:-1] or not thresholds):
                        consumer.send_signal(signal.SIGUSR1)  # the first and the last
                time.sleep(0.1)
        finally:
            if consumer.poll() is None:
                consumer.terminate()
                consumer.wait(60)
    if consumer.returncode != 0 or thresholds:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise LabError(f"the consumer exited with {consumer.returncode} before reaching "
                       f"{thresholds[:1] or 'the end'}; its output:\n{tail}")  # fmt: skip
    print("   " + "\n   ".join(log_path.read_text(errors="replace").strip().splitlines()[-12:]))
    if args.tracemalloc:
        print_heap_growth(sorted(snapshots.glob("*.snap")))
    return samples


def print_heap_growth(files: list[Path], top: int = 12) -> None:
    """What grew in Python's heap from the first snapshot to the last, by source line."""
    if len(files) < 2:
        print(f"   tracemalloc: {len(files)} snapshot(s) written, two needed")
        return
    first, last = (tracemalloc.Snapshot.load(str(f)) for f in (files[0], files[-1]))
    noise = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<*>")]
    diff = last.filter_traces(noise).compare_to(first.filter_traces(noise), "lineno")
    grown = sum(d.size_diff for d in diff)
    total = sum(t.size for t in last.filter_traces(noise).traces)
    print(f"\n   Python heap (tracemalloc): {total / 2**20:,.1f} MiB traced at the last "
          f"sample, {grown / 2**20:+,.2f} MiB since the first; largest changes:")  # fmt: skip
    for d in sorted(diff, key=lambda d: abs(d.size_diff), reverse=True)[:top]:
        frame = d.traceback[0]
        print(
            f"   {d.size_diff / 2**10:+10,.1f} KiB {d.count_diff:+8,} blocks  "
            f"{frame.filename.removeprefix(str(REPO) + '/')}:{frame.lineno}"
        )


def print_memory(args, samples, ok: bool) -> None:
    first, last = samples[0], samples[-1]
    growth = (last[1] - first[1]) / first[1] * 100
    print("\n| executions allocated | RSS MiB | growth from the first sample | seconds |")
    print("| ---: | ---: | ---: | ---: |")
    for allocated, rss, seconds in samples:
        print(f"| {allocated:,} | {rss / 2**20:,.1f} | {(rss - first[1]) / first[1] * 100:+.1f}% "
              f"| {seconds:,.0f} |")  # fmt: skip
    verdict = "met" if growth < 10 else "MISSED"
    print(f"\nconsumer RSS {first[1] / 2**20:,.1f} MiB after {first[0]:,} executions, "
          f"{last[1] / 2**20:,.1f} MiB after {last[0]:,}: growth {growth:+.1f}% "
          f"(goal < 10%: {verdict}); verify {'passed' if ok else 'FAILED'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    scale = seed.scale_for("small", accounts=args.accounts)
    topic = f"scaling-{uuid.uuid4().hex[:6]}"
    print(f"machine: {machine()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="lab-scaling-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        run_dir = Path(tmp) / ".lab"
        settings = Settings(dsn=info.dsn, kafka_bootstrap=info.kafka_bootstrap, run_dir=run_dir)
        endpoints = Endpoints(dsn=info.dsn, kafka_bootstrap=info.kafka_bootstrap,
                              topology=EMBEDDED_TOPOLOGY, embedded=True)  # fmt: skip
        print(f"-- seed (small scale, {args.accounts:,} accounts), rebalance two days", flush=True)
        seeded(info.dsn, scale)
        grid_day, memory_day = last_two_days(info.dsn)
        for day in (grid_day, memory_day):
            rebalance(info.dsn, RebalanceOptions(trade_date=day))
        cdc_options = CdcOptions(topics=TopicSpec(name=topic, partitions=args.partitions))
        cdc.start(endpoints, settings, cdc_options)
        try:
            published, passed = 0, True
            if not args.skip_grid:
                print(f"-- (a) grid: trade {grid_day}, relay into {args.partitions} partitions",
                      flush=True)  # fmt: skip
                published += trade_day(info.dsn, grid_day, args.grid_executions)
                wait_published(run_dir, published)
                cells = run_grid(args, info.dsn, info.kafka_bootstrap, topic)
                print_grid(args, cells)
                passed = all(ok for _, ok in cells.values())
            if not args.skip_memory:
                print(f"-- (b) memory: trade {memory_day}, one consumer process", flush=True)
                published += trade_day(info.dsn, memory_day, int(args.executions * 1.05))
                if published < args.executions:
                    raise LabError(f"only {published:,} executions on the topic; raise --accounts")
                wait_published(run_dir, published)
                samples = run_memory(args, info.dsn, info.kafka_bootstrap, run_dir, topic)
                ok = verified(info.dsn)
                print_memory(args, samples, ok)
                passed = passed and ok
        finally:
            cdc.stop(endpoints, settings, cdc_options, drop_slot=True)
    print(f"\nmachine: {machine()}; finished in {time.perf_counter() - started:,.0f} s")
    return 0 if passed else 1  # a run that broke an invariant measured nothing


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""Soak: a headless Locust run of allocation consumers and market users at a steady rate for
a long time (default 10 minutes), watched for errors, memory growth and throughput drift.

On an embedded stack of its own (a temporary run directory): seed, rebalance as many trading
days as the market needs to keep ``--rate`` executions/s for the whole run (with a margin),
start the CDC relay, then run ``locust -f locustfiles/allocation.py --headless`` with
``--consumers`` consumer users and ``--markets`` market users trading ``--rate`` in total.
Every ``--sample`` seconds it records the executions allocated (applied fills in the
database), the executions the market wrote, the Locust process tree's RSS (psutil) and
Locust's failures. When Locust stops: wait for CDC, drain the topic with the same consumer
group, run ``verify``, and print per-window (minute) throughput, the first/last window ratio,
RSS after warm-up and at the end, errors and failures, and PASS/MISS for each goal:

- no errors: no Locust failure, no failed transaction, no dead letter, no traceback, verify
  passed after the drain;
- stable throughput: the last window's allocations within 10% of the first's;
- flat memory: RSS at the end within 10% of RSS after the first window (the warm-up).

    .venv/bin/python bench/soak.py [--duration 10m] [--rate 200] [--consumers 4]
        [--markets 2] [--strategy micro-batch] [--scale medium] [--strict]

Exit status: 0 when the run completed (1 with ``--strict`` if a goal was missed), 1 when
Locust or the drain failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import psycopg  # noqa: E402

from bench._common import failed_checks, machine  # noqa: E402
from workload import cdc, schema, seed  # noqa: E402
from workload.allocate import STRATEGIES, AllocatorOptions, RunOptions, run_allocation  # noqa: E402
from workload.cdc.options import CdcOptions  # noqa: E402
from workload.dialect import detect  # noqa: E402
from workload.embedded import EmbeddedStack, install_signal_handlers  # noqa: E402
from workload.endpoints import Endpoints  # noqa: E402
from workload.rebalance import RebalanceOptions, rebalance  # noqa: E402
from workload.settings import load_settings, parse_duration  # noqa: E402
from workload.topics import TopicSpec  # noqa: E402
from workload.trade import Market, TradeOptions  # noqa: E402

GOAL = 0.10  # throughput drift and memory growth allowed
SUPPLY_MARGIN = 1.5  # block orders for this many times the executions the run needs
ALLOCATED = "SELECT count(*) FROM allocations.fills WHERE status = 'applied'"
WRITTEN = "SELECT count(*) FROM trades.executions"
DRAIN_TIMEOUT = 300.0  # seconds the drain may take at most; verify then says what is left
START_TIMEOUT = 120.0  # seconds for Locust to start and its market to write a first execution
DAYS = "SELECT DISTINCT trade_date FROM market.daily_prices ORDER BY trade_date DESC"


@dataclass
class Sample:
    at: float  # seconds since Locust started
    allocated: int
    written: int
    rss: int  # bytes, the Locust process and its children
    failures: int


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=parse_duration, default=600.0,
                        help="how long Locust runs (30s, 10m, ...)")  # fmt: skip
    parser.add_argument("--rate", type=positive_float, default=200.0,
                        help="executions/s the market users write in total; keep it well "
                        "below what the machine allocates")  # fmt: skip
    parser.add_argument("--consumers", type=positive_int, default=4,
                        help="allocation consumer users (one per partition)")  # fmt: skip
    parser.add_argument(
        "--markets",
        type=positive_int,
        default=2,
        help="market users, each on a shard of its own at RATE/MARKETS",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="micro-batch",
                        help="allocation strategy of the consumers")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=AllocatorOptions().batch_size,
                        help="micro-batch: executions per transaction at most")  # fmt: skip
    parser.add_argument(
        "--scale",
        choices=list(seed.PRESETS),
        default="medium",
        help="data scale seeded; more trading days if the run needs them",
    )
    parser.add_argument("--sample", type=parse_duration, default=10.0,
                        help="seconds between samples")  # fmt: skip
    parser.add_argument(
        "--window",
        type=parse_duration,
        default=60.0,
        help="throughput window (a minute); at most half the duration",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    args.window = min(args.window, args.duration / 2)
    args.sample = min(args.sample, args.window)
    return args


# -- data ---------------------------------------------------------------------------------------


def executions_until_dry(conn: psycopg.Connection, day, seed_value: int) -> int:
    """How many executions the market writes before every block order of ``day`` is filled:
    the market itself, run in memory without writing."""
    market = Market.load(conn, TradeOptions(seed=seed_value, trade_date=day))
    count = 0
    while market.open:
        count += len(market.take(5000))
    return count


def prepare(dsn: str, args: argparse.Namespace) -> tuple[int, int]:
    """Schema, seed, and rebalanced days until the market can keep the rate for the run.
    Returns (trading days rebalanced, executions the block orders take)."""
    needed = math.ceil(args.rate * args.duration * SUPPLY_MARGIN)
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn))
        seed.seed(conn, seed.scale_for(args.scale), 42)
        days = [row[0] for row in conn.execute(DAYS).fetchall()]
    supply = 0
    for n, day in enumerate(days, 1):
        rebalance(dsn, RebalanceOptions(trade_date=day, workers=2))
        with psycopg.connect(dsn, autocommit=True) as conn:
            supply += executions_until_dry(conn, day, 42)
        if supply >= needed:
            return n, supply
    raise SystemExit(
        f"scale {args.scale} has block orders for {supply:,} executions over {len(days)} days; "
        f"{args.rate:g}/s for {args.duration:g} s needs {needed:,}: lower --rate or --duration, "
        "or raise --scale"
    )


# -- Locust -------------------------------------------------------------------------------------


def locust_command(info, run_dir: Path, out: Path, args, group: str) -> list[str]:
    users = [
        {"user_class_name": "AllocationConsumerUser", "fixed_count": args.consumers},
        {"user_class_name": "MarketUser", "fixed_count": args.markets},
    ]
    return [
        sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "allocation.py"),
        "--headless", "-u", str(args.consumers + args.markets), "-r", "100",
        "--config-users", json.dumps(users),
        # A safety net: the soak stops Locust itself once it has sampled the duration.
        "--run-time", f"{round(args.duration + START_TIMEOUT)}s",
        "--stop-timeout", "60", "--only-summary",
        "--dsn", info.dsn, "--bootstrap", info.kafka_bootstrap, "--run-dir", str(run_dir),
        "--group", group, "--strategy", args.strategy, "--batch-size", str(args.batch_size),
        "--market-rate", f"{args.rate / args.markets:g}", "--market-shards", str(args.markets),
        "--results-dir", str(out / "results"), "--csv", str(out / "stats"),
        "--exit-code-on-error", "1",
    ]  # fmt: skip


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def locust_failures(out: Path) -> int:
    """Failures so far, from the stats CSV Locust rewrites every second."""
    path = out / "stats_stats.csv"
    with contextlib.suppress(OSError, ValueError, KeyError):
        for row in csv.DictReader(path.open()):
            if row["Name"] == "Aggregated":
                return int(row["Failure Count"])
    return 0


def stop_locust(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def soak(info, run_dir: Path, out: Path, args, group: str) -> tuple[list[Sample], int]:
    """Run Locust, sampling every ``args.sample`` seconds for ``args.duration`` from the
    market's first execution (Locust's own start-up is not the run), then stop it as Ctrl-C
    would; returns the samples and Locust's exit status."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    log = (out / "locust.log").open("wb")
    proc = subprocess.Popen(locust_command(info, run_dir, out, args, group), cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    watched = psutil.Process(proc.pid)
    samples: list[Sample] = []
    code = None
    try:
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + START_TIMEOUT
            while conn.execute(WRITTEN).fetchone()[0] == 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the market wrote nothing within {START_TIMEOUT:.0f} s; "
                                     f"see {out / 'locust.log'}")  # fmt: skip
                time.sleep(0.2)
            started = time.monotonic()
            for tick in range(1, math.floor(args.duration / args.sample + 1e-9) + 1):
                time.sleep(max(0.0, started + tick * args.sample - time.monotonic()))
                if proc.poll() is not None:
                    break
                (allocated,) = conn.execute(ALLOCATED).fetchone()
                (written,) = conn.execute(WRITTEN).fetchone()
                s = Sample(time.monotonic() - started, allocated, written, tree_rss(watched),
                           locust_failures(out))  # fmt: skip
                before = samples[-1].allocated if samples else 0
                samples.append(s)
                print(f"  {s.at:6.0f} s  allocated {s.allocated:>9,} (+{s.allocated - before:,})"
                      f"  written {s.written:>9,}  behind {s.written - s.allocated:>6,}"
                      f"  rss {s.rss / 2**20:7.1f} MiB  failures {s.failures}",
                      flush=True)  # fmt: skip
        if proc.poll() is None:
            code = stop_locust(proc)  # SIGTERM: users stop, consumers flush and leave
    finally:
        stopped = stop_locust(proc)
        code = stopped if code is None else code
        log.close()
    return samples, code


# -- after Locust ---------------------------------------------------------------------------


def drain(info, settings, group: str, args) -> int:
    """Wait for CDC to publish every execution, then allocate what is left with the same
    consumer group until the database holds a fill for every execution; returns the
    executions the drain allocated.

    Stopped by the count, not by ``until_idle``: the embedded broker's end offsets cannot
    tell a drained partition from a rebalance pause (see bench/locust_overhead.py), and an
    idle wait that never ends would hang the benchmark.
    """
    with psycopg.connect(info.dsn, autocommit=True) as conn:
        (written,) = conn.execute(WRITTEN).fetchone()
        (allocated,) = conn.execute(ALLOCATED).fetchone()
    deadline = time.monotonic() + 120
    while (cdc.relay_metrics(settings.run_dir) or {}).get("changes_published", 0) < written:
        if time.monotonic() > deadline:
            raise SystemExit("CDC did not publish every execution within 120 s")
        time.sleep(0.5)
    left = written - allocated
    if left <= 0:
        return 0
    stop = threading.Event()

    def stop_when_done(total) -> None:
        if total.allocated >= left:
            stop.set()

    options = AllocatorOptions(strategy=args.strategy, consumers=args.consumers,
                               batch_size=args.batch_size, group_id=group)  # fmt: skip
    report = run_allocation(info.dsn, info.kafka_bootstrap, options,
                            RunOptions(max_seconds=DRAIN_TIMEOUT), stop=stop,
                            on_progress=stop_when_done)  # fmt: skip
    return report.total.allocated


def log_errors(out: Path) -> int:
    """Tracebacks and ERROR lines in Locust's log."""
    text = (out / "locust.log").read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "Traceback" in line or " ERROR " in line)


def windows(samples: list[Sample], window: float) -> list[int]:
    """Executions allocated in each full window, from the samples at its edges."""
    edges = [0]
    counts = []
    for s in samples:
        if s.at + 0.5 >= window * len(edges):
            counts.append(s.allocated - edges[-1])
            edges.append(s.allocated)
    return counts


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarize(samples, args, *, code, drained, totals, record, errors_in_log,
              failed_checks) -> bool:  # fmt: skip
    per_window = windows(samples, args.window)
    label = "minute" if args.window == 60 else f"{args.window:g} s window"
    print(f"\nmachine: {machine()}")
    print(f"run: {args.duration:g} s at {args.rate:g} executions/s ({args.markets} market users), "
          f"{args.consumers} consumers, {args.strategy}, scale {args.scale}")  # fmt: skip
    print(f"throughput per {label} (executions allocated/s):")
    for i, n in enumerate(per_window, 1):
        print(f"  {label} {i:>2}: {n:>8,}  ({n / args.window:,.1f}/s)")
    first, last = (per_window[0], per_window[-1]) if per_window else (0, 0)
    ratio = last / first if first else float("nan")
    print(f"first vs last {label}: {first:,} vs {last:,}, ratio {ratio:.3f}")
    warm = next((s for s in samples if s.at + 0.5 >= args.window), None)
    end = samples[-1] if samples else None
    growth = (end.rss - warm.rss) / warm.rss if warm and end else float("nan")
    if warm and end:
        print(f"rss after warm-up ({warm.at:.0f} s): {warm.rss / 2**20:.1f} MiB; at the end "
              f"({end.at:.0f} s): {end.rss / 2**20:.1f} MiB; growth {growth:+.1%}")  # fmt: skip
    results = (record or {}).get("results", {})
    failures = samples[-1].failures if samples else 0
    errors = results.get("errors", 0) + results.get("dead_letters", 0) + errors_in_log
    print(f"locust exit {code}; failures {failures}; failed transactions "
          f"{results.get('errors', 'n/a')}; dead letters {results.get('dead_letters', 'n/a')}; "
          f"errors in the log {errors_in_log}")  # fmt: skip
    if results:
        print(f"locust run record: {results['executions_allocated']:,} executions allocated, "
              f"{results['executions_per_s']:,.1f}/s while active, txn p99 "
              f"{results['txn_latency_ms'].get('p99_ms')} ms")  # fmt: skip
    written, allocated = totals
    print(f"drained after the run: {drained:,}; in all {written:,} executions written, "
          f"{allocated:,} allocated; verify: "
          f"{'passed' if not failed_checks else 'FAILED ' + ', '.join(failed_checks)}")  # fmt: skip
    goals = [
        ("no errors", code == 0 and failures == 0 and errors == 0 and not failed_checks),
        (f"throughput within {GOAL:.0%}", abs(1 - ratio) <= GOAL),
        (f"memory flat (growth < {GOAL:.0%})", growth < GOAL),
    ]
    for name, ok in goals:
        print(f"goal {name}: {verdict(ok)}")
    return all(ok for _, ok in goals)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind, so the stack stops, also when started in the background
    # (where a shell ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_signal_handlers()
    group = f"soak-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="lab-soak-") as tmp:
        run_dir, out = Path(tmp) / ".lab", Path(tmp) / "out"
        out.mkdir()
        with EmbeddedStack(run_dir) as info:
            settings = load_settings({"run_dir": str(run_dir), "dsn": info.dsn,
                                      "kafka_bootstrap": info.kafka_bootstrap}, env={})  # fmt: skip
            endpoints = Endpoints(dsn=info.dsn, kafka_bootstrap=info.kafka_bootstrap,
                                  topology="embedded-postgres", embedded=True)  # fmt: skip
            days, supply = prepare(info.dsn, args)
            print(f"data: scale {args.scale}, {days} trading day(s) rebalanced, block orders "
                  f"for {supply:,} executions", flush=True)  # fmt: skip
            cdc.start(endpoints, settings, CdcOptions(topics=TopicSpec(partitions=args.consumers)))
            try:
                print(
                    f"locust: {args.consumers} consumers, {args.markets} market users at "
                    f"{args.rate:g} executions/s for {args.duration:g} s",
                    flush=True,
                )
                samples, code = soak(info, run_dir, out, args, group)
                drained = drain(info, settings, group, args)
                failed = failed_checks(info.dsn)
                with psycopg.connect(info.dsn) as conn:
                    totals = (conn.execute(WRITTEN).fetchone()[0],
                              conn.execute(ALLOCATED).fetchone()[0])  # fmt: skip
            finally:
                cdc.stop(endpoints, settings, drop_slot=True)
            records = sorted((out / "results").glob("*.json"))
            record = json.loads(records[-1].read_text()) if records else None
            ok = summarize(samples, args, code=code, drained=drained, totals=totals, record=record,
                           errors_in_log=log_errors(out), failed_checks=failed)  # fmt: skip
            if code != 0 or failed:
                print((out / "locust.log").read_text(errors="replace")[-3000:], file=sys.stderr)
                return 1
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())

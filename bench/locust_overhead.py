"""What driving the allocation consumers from Locust costs: executions/s under Locust against
``run_allocation`` alone, with equal consumers on the same data, side by side in one run.

Each trial allocates the same executions from a fresh topic into freshly emptied allocation
tables, alternating the two drivers so that a drift of the shared machine hits both alike:

- runner: ``run_allocation`` with K consumer threads, until the topic is drained;
- locust: ``locust -f locustfiles/allocation.py --headless -u K`` (one process, K consumer
  users), until the topic is drained (``--until-idle``); its run record gives the rate.

Both measure executions allocated over the time from the first message (Locust: the first
transaction) to the last commit. Goal: Locust within 10% of the runner.

    .venv/bin/python bench/locust_overhead.py [--strategy micro-batch] [--consumers 2]
        [--executions 6000] [--repeat 3] [--scale medium]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from workload import schema, seed  # noqa: E402
from workload.allocate import STRATEGIES, AllocatorOptions, RunOptions, run_allocation  # noqa: E402
from workload.allocate.store import reset_allocations  # noqa: E402
from workload.dialect import detect  # noqa: E402
from workload.embedded import EmbeddedStack  # noqa: E402
from workload.envelope import HLC, Execution, encode_change  # noqa: E402
from workload.rebalance import rebalance  # noqa: E402
from workload.topics import TopicSpec, ensure_topics  # noqa: E402
from workload.trade import TradeOptions, run_bulk  # noqa: E402

EXECUTIONS = (
    "SELECT execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id, "
    "order_type, destination, executed_at FROM trades.executions ORDER BY executed_at, seq "
    "LIMIT %s"
)
# Locust quits once nothing was allocated for this long; longer than a consumer group's
# rebalance, because the embedded broker (Tansu 0.6) reports a partition's end offset as the
# start of its last record batch, so "no lag" cannot tell a drained topic from a rebalance
# pause. The rates count from the first message to the last commit: the wait does not
# dilute them.
IDLE = 5.0


def prepare(dsn: str, scale: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn))
        seed.seed(conn, seed.scale_for(scale), 42)
    rebalance(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_bulk(conn, TradeOptions(seed=42))


def first_executions(dsn: str, limit: int) -> list[Execution]:
    """The earliest ``limit`` executions: every block order's first seqs, so no gap waits."""
    with psycopg.connect(dsn) as conn:
        return [Execution(*row) for row in conn.execute(EXECUTIONS, (limit,)).fetchall()]


def fresh_topic(bootstrap: str, partitions: int, items: list[Execution]) -> str:
    """A new topic holding ``items`` as the changefeed would publish them."""
    name = f"bench-{uuid.uuid4().hex[:10]}"
    ensure_topics(bootstrap, TopicSpec(name=name, partitions=partitions))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for e in items:
        key, value = encode_change(e, HLC.from_datetime(e.executed_at))
        producer.produce(name, key=key, value=value)
    if producer.flush(60):
        raise SystemExit("the broker did not take every execution")
    return name


def empty_allocations(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        reset_allocations(conn)
        conn.execute("VACUUM ANALYZE allocations.fills")


def with_runner(dsn, bootstrap, topic, args, expected: int) -> tuple[float, int]:
    options = AllocatorOptions(strategy=args.strategy, consumers=args.consumers,
                               batch_size=args.batch_size, topic=topic,
                               group_id=f"bench-{uuid.uuid4().hex[:8]}")  # fmt: skip
    stop = threading.Event()

    def stop_when_done(total) -> None:
        # Not until_idle: it takes a consumer working through its fetched messages for idle.
        if total.allocated >= expected:
            stop.set()

    report = run_allocation(dsn, bootstrap, options, RunOptions(max_seconds=600), stop=stop,
                            on_progress=stop_when_done)  # fmt: skip
    return report.executions_per_second, report.total.allocated


def with_locust(dsn, bootstrap, topic, args, results: Path) -> tuple[float, int]:
    results.mkdir(parents=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "allocation.py"),
        "--headless", "-u", str(args.consumers), "-r", "100",  # all at once, as the runner
        "--run-time", "600s", "--until-idle", str(IDLE), "--only-summary",
        "--dsn", dsn, "--bootstrap", bootstrap, "--topic", topic,
        "--group", f"bench-{uuid.uuid4().hex[:8]}",
        "--strategy", args.strategy, "--batch-size", str(args.batch_size),
        "--results-dir", str(results), "AllocationConsumerUser",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    records = sorted(results.glob("*.json"))
    if done.returncode != 0 or len(records) != 1:
        raise SystemExit(f"locust failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    measured = json.loads(records[0].read_text())["results"]
    return measured["executions_per_s"], measured["executions_allocated"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, default="micro-batch")
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=AllocatorOptions().batch_size)
    parser.add_argument("--executions", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", default="medium", choices=list(seed.PRESETS))
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        prepare(info.dsn, args.scale)
        items = first_executions(info.dsn, args.executions)
        trials: dict[str, list[float]] = {"runner": [], "locust": []}
        for trial in range(args.repeat):
            order = ("runner", "locust") if trial % 2 == 0 else ("locust", "runner")
            for driver in order:
                empty_allocations(info.dsn)
                topic = fresh_topic(info.kafka_bootstrap, args.partitions, items)
                if driver == "runner":
                    rate, allocated = with_runner(info.dsn, info.kafka_bootstrap, topic, args,
                                                  len(items))  # fmt: skip
                else:
                    results = Path(tmp) / f"results-{trial}"
                    rate, allocated = with_locust(info.dsn, info.kafka_bootstrap, topic, args,
                                                  results)  # fmt: skip
                if allocated != len(items):
                    raise SystemExit(f"{driver} allocated {allocated} of {len(items)}")
                trials[driver].append(rate)
                print(f"trial {trial + 1} {driver:>6}: {rate:10,.1f} executions/s", flush=True)

    runner, locust = (statistics.median(trials[d]) for d in ("runner", "locust"))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"{args.strategy}, {args.consumers} consumers on {args.partitions} partitions, "
          f"{len(items):,} executions (scale {args.scale}), {args.repeat} trials each")  # fmt: skip
    print(f"{'driver':<10}{'median executions/s':>22}{'trials':>40}")
    for name, value in (("runner", runner), ("locust", locust)):
        shown = ", ".join(f"{r:,.0f}" for r in trials[name])
        print(f"{name:<10}{value:>22,.1f}{shown:>40}")
    ratio = locust / runner if runner else float("nan")
    verdict = "within" if abs(1 - ratio) <= 0.10 else "NOT within"
    print(f"ratio locust/runner: {ratio:.3f} ({verdict} the 10% goal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

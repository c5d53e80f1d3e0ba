"""Allocation throughput per strategy and consumer count, side by side on the same data.

Seeds, rebalances and trades once; publishes every execution to a topic with 8 partitions
exactly as the CDC does (the changefeed envelope, keyed by block order); then, for each
strategy and consumer count, clears the allocations domain and allocates everything with a
fresh consumer group, until idle. Prints executions/s (first message to last commit, so the
group join and idle wait are not counted), p50/p99 transaction latency and retries.

    .venv/bin/python bench/allocate_strategies.py [--accounts 1000] [--consumers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import uuid
from pathlib import Path

import psycopg
from _common import allocate_verified, machine, seeded
from confluent_kafka import Producer

from workload import seed
from workload.allocate import STRATEGIES, AllocatorOptions
from workload.embedded import EmbeddedStack
from workload.envelope import HLC, Execution, encode_change
from workload.rebalance import rebalance
from workload.topics import TopicSpec, ensure_topics
from workload.trade import TradeOptions, run_bulk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--consumers", default="1,2,4,8")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    counts = [int(c) for c in args.consumers.split(",")]
    scale = seed.scale_for("small", accounts=args.accounts)

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp,
        EmbeddedStack(Path(tmp) / ".lab") as info,
    ):
        seeded(info.dsn, scale)
        rebalance(info.dsn)
        topic = f"bench-executions-{uuid.uuid4().hex[:6]}"
        ensure_topics(info.kafka_bootstrap, TopicSpec(name=topic, partitions=args.partitions))
        with psycopg.connect(info.dsn, autocommit=True) as conn:
            run_bulk(conn, TradeOptions())
            executions = [
                Execution(*r)
                for r in conn.execute(
                    "SELECT execution_id, block_order_id, seq, activity, quantity, price, "
                    "ref_execution_id, order_type, destination, executed_at "
                    "FROM trades.executions ORDER BY executed_at, seq"
                ).fetchall()
            ]
        producer = Producer({"bootstrap.servers": info.kafka_bootstrap, "linger.ms": 20})
        for e in executions:
            key, value = encode_change(e, HLC.from_datetime(e.executed_at))
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
        producer.flush(60)

        for strategy in args.strategies.split(","):
            for consumers in counts:
                options = AllocatorOptions(
                    strategy=strategy,
                    consumers=consumers,
                    batch_size=args.batch_size,
                    topic=topic,
                    group_id=f"bench-{uuid.uuid4().hex[:8]}",
                )
                report, ok = allocate_verified(info.dsn, info.kafka_bootstrap, options)
                d = report.as_dict()
                rows.append((strategy, consumers, d, ok))
                print(
                    f"{strategy:<14} {consumers:>2} consumers: {d['executions_per_s']:>9,.0f} "
                    f"executions/s  p99 {d['txn_latency_ms']['p99_ms']} ms  "
                    f"verify {'passed' if ok else 'FAILED'}",
                    flush=True,
                )

    print()
    print(f"machine: {machine()}; {len(executions):,} "
          f"executions, {args.accounts:,} accounts, {args.partitions} partitions")  # fmt: skip
    print("| strategy | consumers | executions/s | transactions | p50 ms | p99 ms | retries "
          "| e2e p99 ms | verify |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for strategy, consumers, d, ok in rows:
        t = d["txn_latency_ms"]
        print(
            f"| {strategy} | {consumers} | {d['executions_per_s']:,.0f} | "
            f"{d['transactions']:,} | {t['p50_ms']} | {t['p99_ms']} | "
            f"{d['retries']['retries']} | {d['e2e_latency_ms']['p99_ms']} | "
            f"{'passed' if ok else 'FAILED'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

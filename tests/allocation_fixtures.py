"""Helpers for allocation tests: a traded database, publishing executions as CDC would."""

from __future__ import annotations

import itertools
import os
import time

import psycopg
import pytest
from confluent_kafka import Producer

from workload.allocate import store
from workload.envelope import HLC, Execution, encode_change
from workload.rebalance import rebalance
from workload.topics import TopicSpec, ensure_topics
from workload.trade import TradeOptions, run_bulk

EXECUTION_QUERY = (
    "SELECT execution_id, block_order_id, seq, activity, quantity, price, ref_execution_id, "
    "order_type, destination, executed_at FROM trades.executions ORDER BY executed_at, seq"
)
_topics = itertools.count(1)


def executions(dsn: str) -> list[Execution]:
    with psycopg.connect(dsn) as conn:
        return [Execution(*row) for row in conn.execute(EXECUTION_QUERY).fetchall()]


def new_topic(bootstrap: str, partitions: int = 4) -> str:
    name = f"executions-{os.getpid()}-{next(_topics)}-{time.time_ns() % 10**6}"
    ensure_topics(bootstrap, TopicSpec(name=name, partitions=partitions))
    return name


def publish(bootstrap: str, topic: str, items: list[Execution], raw: list = ()) -> None:
    """Executions in the changefeed envelope (keyed by block order), then raw (key, value)s."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for e in items:
        key, value = encode_change(e, HLC.from_datetime(e.executed_at))
        producer.produce(topic, key=key, value=value)
    for key, value in raw:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def state_digest(dsn: str) -> tuple:
    """The allocation end state, independent of how it was batched (no snapshot numbers)."""
    with psycopg.connect(dsn) as conn:
        return (
            conn.execute(
                "SELECT md5(string_agg(block_order_id::text || account_id::text || quantity "
                "|| coalesce(price::text, '-'), ',' ORDER BY block_order_id, account_id)) "
                "FROM allocations.account_allocations"
            ).fetchone()[0],
            conn.execute(
                "SELECT md5(string_agg(block_order_id::text || filled_quantity || notional "
                "|| coalesce(avg_price::text, '-') || status || order_quantity, ',' "
                "ORDER BY block_order_id)) FROM allocations.block_fills"
            ).fetchone()[0],
            conn.execute("SELECT count(*) FROM allocations.oms_outbox").fetchone()[0],
        )


def reset_allocations(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        store.reset_allocations(conn)


@pytest.fixture
def traded_dsn(seeded_dsn) -> str:
    """Small scale: seeded, rebalanced and fully traded (about 1,500 executions)."""
    rebalance(seeded_dsn)
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        run_bulk(conn, TradeOptions(seed=11))
    return seeded_dsn

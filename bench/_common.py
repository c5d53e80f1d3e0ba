"""What the allocation benchmarks share: the machine line, data set-up, one verified run."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import psycopg

from workload import schema, seed
from workload.allocate import AllocationReport, AllocatorOptions, RunOptions, run_allocation
from workload.allocate.store import reset_allocations
from workload.dialect import detect
from workload.verify import run_checks


def machine() -> str:
    """Cores, memory, load, Python and kernel: what a reader needs to weigh the figures."""
    load = " ".join(f"{x:.1f}" for x in psutil.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} cores (nproc), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, load average {load}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def seeded(dsn: str, scale: seed.Scale, seed_value: int = 42) -> None:
    """A fresh schema with the reference, market and holdings domains seeded."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn))
        seed.seed(conn, scale, seed_value)


def failed_checks(dsn: str) -> list[str]:
    """The names of the verify checks that fail (none: every invariant holds)."""
    with psycopg.connect(dsn) as conn:
        return [r.check.name for r in run_checks(conn) if not r.passed]


def verified(dsn: str) -> bool:
    """Whether every verify check passes; the failing ones are named on stdout."""
    failed = failed_checks(dsn)
    if failed:
        print(f"  verify FAILED: {', '.join(failed)}", flush=True)
    return not failed


def allocate_verified(
    dsn: str, bootstrap: str, options: AllocatorOptions, until_idle: float = 2.0
) -> tuple[AllocationReport, bool]:
    """Empty the allocations domain, allocate everything on the topic with ``options`` (a
    fresh consumer group), until idle; the report and whether every invariant holds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        reset_allocations(conn)
        conn.execute("CHECKPOINT")  # so that no run pays for the previous one's dirty pages
    report = run_allocation(dsn, bootstrap, options, RunOptions(until_idle=until_idle))
    return report, verified(dsn)

"""bench/allocate_scaling.py runs end to end with tiny arguments, so that it cannot rot.

It prints numbers for docs/benchmarks.md; nothing here checks them, only that every cell was
verified and the memory part reached its samples.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "allocate_scaling.py"


def test_the_scaling_benchmark_runs_with_tiny_arguments():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--accounts", "50", "--consumers", "1",
         "--batch-sizes", "10", "--grid-executions", "100", "--executions", "400",
         "--first-sample", "200", "--until-idle", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 10 | 1 |" in result.stdout and "FAILED" not in result.stdout
    assert "growth" in result.stdout and "verify passed" in result.stdout


def test_bad_arguments_are_one_error_line():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--consumers", "16"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: --consumers: at most --partitions (8) consumers" in result.stderr

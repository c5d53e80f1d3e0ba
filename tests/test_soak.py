"""bench/soak.py end to end, shortened: a 20 s Locust run on a small dataset.

Only that it runs and reports: the goals' verdicts are numbers of a real (10-minute) run and
depend on the machine, so they are shown, not asserted (no timing assertions in tests).
"""

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_runs_clean_and_prints_its_summary():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "20s",
         "--scale", "small", "--rate", "40", "--consumers", "2", "--markets", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr
    for line in (
        "throughput per 10 s window",
        "first vs last 10 s window:",
        "rss after warm-up",
        "locust exit 0; failures 0; failed transactions 0; dead letters 0; errors in the log 0",
        "verify: passed",
        "goal no errors: PASS",
        "goal throughput within 10%:",
        "goal memory flat (growth < 10%):",
    ):
        assert line in out, out

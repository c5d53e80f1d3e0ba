"""bench/soak.py end to end, shortened: a 20 s Locust run on a small dataset.

Only that it runs and reports: the goals' verdicts are numbers of a real (10-minute) run and
depend on the machine, so they are shown, not asserted (no timing assertions in tests).
"""

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_runs_clean_and_prints_its_summary(tmp_path):
    # Output to a file, not a pipe: a server of the soak's stack that outlived it would hold
    # a pipe open. Ended with SIGTERM on a timeout, so that the soak stops its stack itself.
    log = tmp_path / "soak.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "20s",
             "--scale", "small", "--rate", "40", "--consumers", "2", "--markets", "1"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=400)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=60)
            raise AssertionError(f"soak did not finish:\n{log.read_text()}") from None
    out = log.read_text()
    assert code == 0, out
    assert "Traceback" not in out
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

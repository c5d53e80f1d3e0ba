"""The main job, as the README runs it, at the small scale."""

import pytest

from tests.conftest import run_cli
from tests.test_embedded import processes_under

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_prints_its_summary_and_stops_what_it_started(stack_dir):
    run_dir = stack_dir
    result = run_cli("demo", "--scale", "small", "--run-dir", str(run_dir), cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "== demo on postgresql://" in out
    assert "holdings.positions" in out and "== demo finished" in out
    assert processes_under(run_dir) == []


def test_demo_keep_leaves_the_stack_up(stack_dir):
    run_dir = stack_dir
    try:
        result = run_cli(
            "demo", "--scale", "small", "--keep", "--run-dir", str(run_dir), cwd=run_dir.parent
        )
        assert result.returncode == 0, result.stderr
        assert "python -m workload down" in result.stdout
        status = run_cli("status", "--run-dir", str(run_dir))
        assert status.returncode == 0
    finally:
        run_cli("down", "--run-dir", str(run_dir))
    assert processes_under(run_dir) == []

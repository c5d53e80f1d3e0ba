"""The sweep on the embedded topology, end to end, as a user runs it."""

import json

import psutil
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def processes_under(path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def test_sweep_runs_two_configurations_and_compares_them(stack_dir, tmp_path):
    results = tmp_path / "results"
    done = run_cli(
        "sweep", "--stacks", "embedded", "--strategies", "micro-batch,block",
        "--consumers", "1", "--batch-sizes", "10", "--duration", "8s",
        "--scale", "small", "--seed", "7",
        "--run-dir", str(stack_dir), "--results", str(results),
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in ("schema created", "seed: scale small", "rebalance", "cdc start", "locust",
                 "cdc stop", "stopping what the sweep started"):  # fmt: skip
        assert step in out, step
    assert "== 2 of 2 configuration(s) done" in out

    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    assert sorted(r["strategy"] for r in records) == ["block", "micro-batch"]
    for record in records:
        assert record["topology"]["name"] == "embedded-postgres"
        assert record["data"]["scale"] == "small" and record["data"]["seed"] == 7
        assert record["results"]["executions_allocated"] > 0
    # Each configuration starts from the same data: the same block orders, rebalanced again.
    assert len({r["data"]["block_orders"] for r in records}) == 1

    [summary_path] = (results / "sweeps").glob("*.json")
    summary = json.loads(summary_path.read_text())
    assert [o["status"] for o in summary["outcomes"]] == ["done", "done"]

    table = out.split("configuration", 1)[1]
    assert "micro-batch, 1 consumer, batch_size=10" in table and "block, 1 consumer" in table
    assert "best on embedded-postgres" in out
    for chart in ("throughput.png", "latency.png", "report.md"):
        assert (results / "report" / chart).stat().st_size > 0

    # The sweep started the stack, so it stopped it: nothing of it is left running.
    assert processes_under(stack_dir.parent) == []

"""``python -m workload cdc ...`` as a user runs it, against the embedded servers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from tests.cdc_fixtures import (
    cdc_target_fixture,  # noqa: F401 (registers the cdc_target fixture)
    insert,
    make_executions,
    wait_until,
)
from tests.conftest import REPO, run_cli
from workload import cdc
from workload.cdc import process
from workload.embedded import StackState, free_port

pytestmark = pytest.mark.integration


def where(target) -> list[str]:
    return [
        "--dsn", target.dsn, "--kafka-bootstrap", target.bootstrap,
        "--run-dir", str(target.run_dir),
        "--topic", target.topic, "--slot", target.slot.slot,
        "--publication", target.slot.publication,
    ]  # fmt: skip


def published(target) -> int:
    return (cdc.relay_metrics(target.run_dir) or {}).get("changes_published", 0)


def test_start_status_down_and_stop(cdc_target):
    args = where(cdc_target)
    started = run_cli("cdc", "start", *args, "--partitions", "4", "--status-interval", "0.1")
    assert started.returncode == 0, started.stderr
    assert f"topics: {cdc_target.topic} (4 partitions, existed)" in started.stdout
    assert "relay started (pid " in started.stdout

    executions = make_executions(50, block_orders=5, rng=random.Random(21))
    insert(cdc_target.dsn, executions, per_transaction=10)
    wait_until(lambda: published(cdc_target) >= 50, what="the background relay to publish")

    shown = run_cli("cdc", "status", *args)
    assert shown.returncode == 0, shown.stderr
    assert "CDC on PostgreSQL: relay running (pid " in shown.stdout
    assert "published 50 changes in 5 transactions" in shown.stdout
    assert "lag (commit -> Kafka ack) ms: p50 " in shown.stdout
    as_json = run_cli("cdc", "status", *args, "--json")
    report = json.loads(as_json.stdout)
    assert report["source"] == "postgresql" and report["messages_published"] == 50
    assert report["lag_ms"]["count"] == 50 and report["topic"]["partitions"] == 4

    assert process.relay_record(cdc_target.run_dir).is_running()  # what `status` lists

    # `down` stops the relay with the rest of the stack (here, nothing else runs)
    down = run_cli("down", "--run-dir", str(cdc_target.run_dir))
    assert down.returncode == 0 and "stopped cdc-relay" in down.stdout
    assert "cdc-relay" not in StackState(cdc_target.run_dir).load()

    stopped = run_cli("cdc", "stop", *args, "--drop-slot")
    assert stopped.returncode == 0, stopped.stderr
    assert "no relay was running" in stopped.stdout
    assert f"dropped slot {cdc_target.slot.slot}, publication" in stopped.stdout


def test_the_foreground_relay_stops_cleanly_on_sigterm(cdc_target):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["PYTHONPATH"] = str(REPO)
    relay = subprocess.Popen(
        [sys.executable, "-m", "workload", "cdc", "relay", *where(cdc_target),
         "--status-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (cdc.relay_metrics(cdc_target.run_dir) or {}).get("pid") == relay.pid,
            what="the relay to report",
        )
        record = process.relay_record(cdc_target.run_dir)
        assert record is not None and record.pid == relay.pid  # listed by `status`, `down`
        executions = make_executions(30, block_orders=3, rng=random.Random(22))
        insert(cdc_target.dsn, executions, per_transaction=10)
        wait_until(lambda: published(cdc_target) >= 30, what="the relay to publish")
        relay.send_signal(signal.SIGTERM)
        stdout, stderr = relay.communicate(timeout=60)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    assert relay.returncode == 0, stderr
    assert "relay stopped: 30 changes in 3 transactions published, slot at " in stdout
    assert "signal 15: stopping after this batch" in stderr
    assert cdc.relay_metrics(cdc_target.run_dir)["state"] == "stopped"
    assert process.relay_record(cdc_target.run_dir) is None


def assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_mistakes_are_one_line_errors(cdc_target):
    args = where(cdc_target)
    assert_one_line_error(
        run_cli("cdc", "start", *args, "--topic", "no spaces"), "is not a Kafka topic name"
    )
    nowhere = ["--kafka-bootstrap", f"127.0.0.1:{free_port()}", "--kafka-timeout", "1"]
    assert_one_line_error(
        run_cli("cdc", "start", *args, *nowhere), "cannot reach the Kafka broker at 127.0.0.1:"
    )

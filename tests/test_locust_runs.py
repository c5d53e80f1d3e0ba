"""Each locustfile run headless by Locust itself against the embedded stack.

The helpers here run Locust as a user would: a subprocess in a session of its own (its
--processes children belong to it), always ended, never left behind.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.allocation_fixtures import executions, new_topic, publish, traded_dsn
from tests.conftest import REPO, run_cli
from workload.rebalance import rebalance
from workload.verify import run_checks

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["traded_dsn"]

LOCUSTFILES = REPO / "locustfiles"


def locust_env() -> dict[str, str]:
    """The environment without LAB_* variables, so only the options given count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}


def start_locust(locustfile: str, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILES / locustfile), *args],
            cwd=REPO,
            env=locust_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_locust(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM (Locust shuts down cleanly on it), then SIGKILL to whatever of its session
    is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def run_locust(locustfile: str, *args: str, log: Path, timeout: float = 120) -> int:
    proc = start_locust(locustfile, *args, log=log)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"locust did not finish in {timeout} s:\n{log.read_text()}") from None
    finally:
        stop_locust(proc)


def request_stats(json_file: Path) -> dict[tuple[str, str], dict]:
    """Locust's --json-file statistics by (request type, name)."""
    entries = json.loads(json_file.with_suffix(".json").read_text())
    return {(e["method"], e["name"]): e for e in entries}


def run_records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


def failed_checks(dsn):
    with psycopg.connect(dsn) as conn:
        results = run_checks(conn)
    return [r.check.name for r in results if not r.passed]


def test_consumer_users_over_two_processes_allocate_everything_once(lab_stack, traded_dsn,
                                                                    tmp_path):  # fmt: skip
    """--processes 2: a master and two workers, one consumer group, one run record."""
    items = executions(traded_dsn)
    topic = new_topic(lab_stack.kafka_bootstrap, partitions=4)
    publish(lab_stack.kafka_bootstrap, topic, items)
    results, stats = tmp_path / "results", tmp_path / "stats"
    code = run_locust(
        "allocation.py",
        "--headless", "-u", "4", "-r", "4", "--run-time", "60s", "--until-idle", "4",
        "--processes", "2",
        "--dsn", traded_dsn, "--bootstrap", lab_stack.kafka_bootstrap,
        "--topic", topic, "--group", f"g-{uuid.uuid4().hex[:8]}",
        "--strategy", "micro-batch", "--batch-size", "40",
        "--results-dir", str(results), "--json-file", str(stats), "--only-summary",
        "AllocationConsumerUser",
        log=tmp_path / "locust.log",
    )  # fmt: skip
    log = (tmp_path / "locust.log").read_text()
    assert code == 0, log
    allocate = request_stats(stats)[("allocate", "micro-batch")]
    assert allocate["num_requests"] > 0 and allocate["num_failures"] == 0
    assert allocate["total_content_length"] == len(items)  # executions handed to transactions
    [record] = run_records(results)
    assert record["source"] == "locust" and record["strategy"] == "micro-batch"
    assert record["knobs"]["consumers"] == 4 and record["knobs"]["partitions"] == 4
    assert record["knobs"]["batch_size"] == 40
    assert record["results"]["executions_allocated"] == len(items)
    assert record["results"]["transactions"] == allocate["num_requests"]
    assert record["results"]["executions_per_s"] > 0
    assert record["results"]["e2e_latency_ms"]["count"] == len(items)  # every worker's final
    assert record["results"]["errors"] == 0
    assert record["results"]["verify"] == "passed"  # drained: the report may name it best
    assert failed_checks(traded_dsn) == []

    report = run_cli("report", "--results", str(results), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert f"best on {record['topology']['name']}: micro-batch" in report.stdout
    assert (tmp_path / "report" / "throughput.png").stat().st_size > 0
    assert (tmp_path / "report" / "latency.png").stat().st_size > 0


def test_transaction_users_run_the_domain_transactions(traded_dsn, tmp_path):
    results, stats = tmp_path / "results", tmp_path / "stats"
    code = run_locust(
        "transactions.py",
        "--headless", "-u", "4", "-r", "4", "--run-time", "4s",
        "--dsn", traded_dsn, "--topology", "test-pg",
        "--results-dir", str(results), "--json-file", str(stats), "--only-summary",
        log=tmp_path / "locust.log",
    )  # fmt: skip
    assert code == 0, (tmp_path / "locust.log").read_text()
    by_name = request_stats(stats)
    for name in ("allocate one execution", "rebalance one account", "positions"):
        entry = by_name[("transaction", name)]
        assert entry["num_requests"] > 0 and entry["num_failures"] == 0, name
    [record] = run_records(results)
    assert record["knobs"]["driver"] == "locust-transactions"
    assert record["knobs"]["users"] == 4
    assert record["topology"]["name"] == "test-pg"
    assert record["results"]["executions_allocated"] > 0
    # Stopping users mid-transaction leaves nothing half-done: only executions still waiting.
    assert set(failed_checks(traded_dsn)) <= {"execution_has_one_fill"}
    assert record["results"]["verify"] in ("passed", "skipped")

    report = run_cli("report", "--results", str(results), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "throughput.png").stat().st_size > 0


def test_market_users_each_trade_a_shard_of_their_own(seeded_dsn, tmp_path):
    rebalance(seeded_dsn)
    stats = tmp_path / "stats"
    code = run_locust(
        "allocation.py",
        "--headless", "-u", "3", "-r", "3", "--run-time", "4s",
        "--dsn", seeded_dsn, "--market-rate", "40", "--market-shards", "2",
        "--results-dir", str(tmp_path / "results"), "--json-file", str(stats), "--only-summary",
        "MarketUser",
        log=tmp_path / "locust.log",
    )  # fmt: skip
    log = (tmp_path / "locust.log").read_text()
    assert code == 0, log
    trade = request_stats(stats)[("trade", "market")]
    assert trade["num_requests"] > 0 and trade["num_failures"] == 0
    assert "all 2 market shards are taken" in log  # the third user found no shard
    assert "trades shard 0/2" in log and "trades shard 1/2" in log
    with psycopg.connect(seeded_dsn) as conn:
        written, blocks, gaps = conn.execute(
            "SELECT count(*), count(DISTINCT block_order_id), "
            "count(*) FILTER (WHERE seq <> rank) FROM (SELECT block_order_id, seq, "
            "rank() OVER (PARTITION BY block_order_id ORDER BY seq) FROM trades.executions) s"
        ).fetchone()
    # Stopped users write what they had taken before they go, outside a measured request.
    assert written >= trade["total_content_length"]
    assert blocks > 0 and gaps == 0  # every block order's seqs run 1, 2, 3, ... once
    assert not (tmp_path / "results").exists()  # no allocation, no run record

"""Run records: round trip, atomic writes, redaction, and reading past bad files."""

import json
import logging
import subprocess

import pytest

from workload.db import RetryStats
from workload.errors import LabError
from workload.metrics import Histogram
from workload.records import (
    SCHEMA,
    DataScale,
    RecordError,
    Results,
    RunRecord,
    Topology,
    git_revision,
    new_run_id,
    parse_timestamp,
    read_records,
    record_file_name,
    scan_records,
    write_record,
)


def make_record(**overrides) -> RunRecord:
    latency = Histogram()
    latency.record_many([0.002, 0.004, 0.010, 0.150])
    retries = RetryStats(transactions=40, retries=3, exhausted=0)
    retries.by_sqlstate["40001"] = 3
    results = Results(
        executions_allocated=400,
        executions_per_s=123.5,
        transactions=40,
        transactions_per_s=12.35,
        txn_latency_ms=latency.summary(),
        retries=retries.as_dict(),
        e2e_latency_ms=latency.summary(),
        consumer_lag=0,
        verify="passed",
    )
    fields = {
        "topology": Topology("docker-3n-2cpu", "docker", 3, "CockroachDB v25.2", "tansu 0.6.0"),
        "strategy": "micro-batch",
        "source": "allocate",
        "knobs": {"consumers": 4, "batch_size": 50, "linger_ms": 20, "isolation": "serializable"},
        "data": DataScale("small", 7, 200, 12, 400),
        "results": results,
        "run_id": "20260501T100000Z-000001",
        "started_at": "2026-05-01T10:00:00.000Z",
        "ended_at": "2026-05-01T10:00:03.239Z",
        "duration_s": 3.239,
        "git_revision": "abc1234",
        "git_dirty": False,
        "notes": "first try",
    }
    return RunRecord(**{**fields, **overrides})


def test_round_trip_through_json_keeps_every_field():
    record = make_record()
    text = record.to_json()
    assert json.loads(text)["schema"] == SCHEMA
    assert RunRecord.from_json(text) == record
    assert RunRecord.from_dict(record.as_dict()) == record


def test_latency_summary_and_retry_stats_are_accepted_as_their_producers_return_them():
    record = make_record()
    assert record.results.txn_latency_ms["count"] == 4
    assert set(record.results.txn_latency_ms) >= {"p50_ms", "p99_9_ms", "mean_ms", "max_ms"}
    back = RunRecord.from_json(record.to_json())
    assert back.results.retries["by_sqlstate"] == {"40001": 3}


def test_run_ids_are_unique_and_begin_finish_stamp_times_and_revision(tmp_path):
    assert len({new_run_id() for _ in range(200)}) == 200
    record = RunRecord.begin(Topology("embedded-postgres", "embedded"), "block", "demo")
    assert record.ended_at is None
    record.finish(Results(executions_per_s=1.0), duration_s=2.5)
    assert parse_timestamp(record.ended_at) >= parse_timestamp(record.started_at)
    assert record.duration_s == 2.5
    assert record.started_at.endswith("Z")
    assert record.git_revision != ""


def test_git_revision_outside_a_repository_is_unknown(tmp_path):
    assert git_revision(tmp_path).revision == "unknown"
    assert git_revision(tmp_path).dirty is None
    assert git_revision(tmp_path / "absent").revision == "unknown"


def test_git_revision_sees_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: S607

    git("init", "-q")
    (tmp_path / "f.txt").write_text("one")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "one")
    clean = git_revision(tmp_path)
    assert clean.revision != "unknown" and clean.dirty is False
    (tmp_path / "f.txt").write_text("two")
    assert git_revision(tmp_path) == type(clean)(clean.revision, True)


def test_write_is_atomic_and_named_by_time_topology_strategy_and_run(tmp_path):
    record = make_record(run_id="20260501T100000Z-a1b2c3")
    path = write_record(record, tmp_path / "results")
    assert path.name == ("20260501T100000Z-docker-3n-2cpu-micro-batch-20260501T100000Z-a1b2c3.json")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left over
    assert RunRecord.from_json(path.read_text()) == record
    # Writing the same run again replaces its file rather than adding a second one.
    record.notes = "finished"
    assert write_record(record, path.parent) == path
    assert len(list(path.parent.iterdir())) == 1
    assert read_records(path.parent)[0].notes == "finished"


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    record = make_record(knobs={"consumers": object()})
    with pytest.raises(RecordError):
        write_record(record, tmp_path)
    record = make_record(results=Results(executions_per_s=float("nan")))
    with pytest.raises(RecordError, match="executions_per_s"):
        write_record(record, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_topology_names_cannot_escape_the_results_directory(tmp_path):
    record = make_record(topology=Topology("../../etc/x y", "custom"))
    path = write_record(record, tmp_path)
    assert path.parent == tmp_path
    assert "/" not in record_file_name(record) and " " not in record_file_name(record)


def test_passwords_in_urls_are_redacted_in_the_file_not_in_the_callers_record(tmp_path):
    secret_knobs = {
        "consumers": 2,
        "dsn": "postgresql://lab:s3cret@db:26257/lab?sslmode=verify-full",
        "hosts": ["postgresql://root:hunter2@n1:26257/x"],
        "nested": {"url": "host=db password=swordfish user=lab"},
    }
    record = make_record(
        knobs=secret_knobs,
        notes="ran against postgres://admin:topsecret@10.0.0.5:5432/lab by hand",
    )
    text = write_record(record, tmp_path).read_text()
    for secret in ("s3cret", "hunter2", "swordfish", "topsecret"):
        assert secret not in text
    written = RunRecord.from_json(text)
    assert written.knobs["dsn"] == "postgresql://lab:***@db:26257/lab?sslmode=verify-full"
    assert "admin:***@10.0.0.5" in written.notes
    assert record.knobs["dsn"].count("s3cret") == 1  # the caller's object is untouched


def test_a_record_has_no_place_for_a_database_url():
    assert not {"dsn", "url", "database_url"} & set(make_record().as_dict())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema=2), "schema 2 is newer"),
        (lambda d: d.pop("run_id"), "run_id is missing"),
        (lambda d: d.update(strategy="giant"), "strategy is 'giant', not one of"),
        (lambda d: d.update(source="cron"), "source is 'cron'"),
        (lambda d: d["topology"].update(platform="mainframe"), "topology.platform"),
        (lambda d: d["topology"].update(nodes=-1), "topology.nodes"),
        (lambda d: d["results"].update(executions_per_s="fast"), "results.executions_per_s"),
        (lambda d: d["results"].update(verify="maybe"), "results.verify"),
        (lambda d: d["results"]["txn_latency_ms"].update(p99_ms="x"), "txn_latency_ms.p99_ms"),
        (lambda d: d["results"]["retries"].update(retries=True), "results.retries.retries"),
        (lambda d: d.update(started_at="yesterday"), "started_at"),
        (lambda d: d.update(knobs=[1, 2]), "knobs is list"),
    ],
)
def test_invalid_records_name_the_field(change, message):
    raw = make_record().as_dict()
    change(raw)
    with pytest.raises(RecordError, match=message):
        RunRecord.from_dict(raw)


def test_unknown_keys_from_a_later_kit_are_ignored():
    raw = make_record().as_dict()
    raw["cpu_seconds"] = 12.5
    raw["results"]["p99_9_e2e_ms"] = 3.0
    assert RunRecord.from_dict(raw) == make_record()


def test_reading_skips_and_reports_what_is_not_a_record(tmp_path, caplog):
    good_old = write_record(make_record(run_id="r1", started_at="2026-05-01T09:00:00Z"), tmp_path)
    good_new = write_record(make_record(run_id="r2", started_at="2026-05-01T11:00:00Z"), tmp_path)
    (tmp_path / "broken.json").write_text('{"schema": 1, "run_id": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "future.json").write_text(json.dumps({**make_record().as_dict(), "schema": 9}))
    (tmp_path / "copy.json").write_text(good_old.read_text())
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    (tmp_path / ".half-written.json.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("not a record, not a .json either")

    scan = scan_records(tmp_path)
    assert [r.run_id for r in scan.records] == ["r1", "r2"]
    reasons = {p.path.name: p.reason for p in scan.problems}
    assert set(reasons) == {"broken.json", "list.json", "future.json", "copy.json", "binary.json"}
    assert "not JSON" in reasons["broken.json"]
    assert "newer than this kit reads" in reasons["future.json"]
    assert good_old.name in reasons["copy.json"]
    assert good_new.exists()

    with caplog.at_level(logging.WARNING, logger="workload.records"):
        assert len(read_records(tmp_path)) == 2
    assert sum("skipped" in m for m in caplog.messages) == 5


def test_a_missing_results_directory_is_a_user_error(tmp_path):
    with pytest.raises(LabError, match="no results directory"):
        scan_records(tmp_path / "absent")

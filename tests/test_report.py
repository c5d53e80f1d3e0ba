"""The report over synthetic runs: table numbers, the best configuration, charts, the CLI."""

import re
import struct
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import run_cli
from workload.cli import build_parser
from workload.errors import LabError
from workload.records import DataScale, Results, RunRecord, Topology, write_record
from workload.report import (
    HEADERS,
    ReportOptions,
    build,
    format_table,
    group_configurations,
    render_tables,
    table_rows,
    write,
)

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
TOPOLOGIES = {
    "embedded-postgres": Topology("embedded-postgres", "embedded", 1, "PostgreSQL 18.6", "tansu"),
    "docker-3n-2cpu": Topology("docker-3n-2cpu", "docker", 3, "CockroachDB v25.2", "tansu"),
    "docker-5n-2cpu": Topology("docker-5n-2cpu", "docker", 5, "CockroachDB v25.2", "tansu"),
}
KNOBS = {
    "block": {"consumers": 1, "batch_size": 500, "isolation": "serializable"},
    "per-execution": {"consumers": 8, "batch_size": 1, "isolation": "serializable"},
    "micro-batch": {"consumers": 8, "batch_size": 50, "isolation": "serializable"},
}
# (topology, strategy) -> per run: (executions/s, txn p99 ms, verify)
RUNS = {
    ("embedded-postgres", "block"): [(900, 400, "passed"), (1100, 420, "passed")],
    ("embedded-postgres", "per-execution"): [(1500, 9, "passed"), (1700, 11, "passed")],
    ("embedded-postgres", "micro-batch"): [(2000, 40, "passed"), (2400, 44, "passed")],
    # A tie on executions/s: per-execution wins on its lower p99.
    ("docker-3n-2cpu", "block"): [(1000, 900, "passed"), (1000, 950, "passed")],
    ("docker-3n-2cpu", "per-execution"): [(3000, 20, "passed"), (3200, 22, "passed")],
    ("docker-3n-2cpu", "micro-batch"): [(3100, 60, "passed"), (3100, 64, "passed")],
    # The fastest configuration failed verification once: it must not win, even though its
    # verified run alone is faster than anything else.
    ("docker-5n-2cpu", "block"): [(9000, 800, "passed"), (9500, 820, "failed")],
    ("docker-5n-2cpu", "per-execution"): [(4000, 25, "passed"), (4400, 27, "skipped")],
    ("docker-5n-2cpu", "micro-batch"): [(5000, 70, "passed"), (6000, 66, "passed")],
}


def latency(p50: float, p99: float) -> dict:
    return {
        "count": 1000,
        "mean_ms": p50 * 1.2,
        "max_ms": p99 * 2,
        "p50_ms": p50,
        "p90_ms": (p50 + p99) / 2,
        "p95_ms": p99 * 0.9,
        "p99_ms": p99,
        "p99_9_ms": p99 * 1.5,
    }


def run_record(topology, strategy, rate, p99, verify, *, index=0, knobs=None, **results):
    started = T0 + timedelta(minutes=index)
    transactions = results.pop("transactions", 1000)
    return RunRecord(
        topology=TOPOLOGIES[topology],
        strategy=strategy,
        source="sweep",
        knobs=dict(knobs or KNOBS[strategy]),
        data=DataScale("small", 7, 200, 40, 3000),
        results=Results(
            executions_allocated=3000,
            executions_per_s=float(rate),
            transactions=transactions,
            transactions_per_s=rate / 3,
            txn_latency_ms=latency(p99 / 4, p99),
            retries={
                "transactions": transactions,
                "retries": results.pop("retries", 0),
                "exhausted": 0,
                "by_sqlstate": {},
            },
            e2e_latency_ms=latency(p99, p99 * 3),
            verify=verify,
            **results,
        ),
        run_id=f"{topology}-{strategy}-{index}",
        started_at=started.isoformat().replace("+00:00", "Z"),
        ended_at=(started + timedelta(seconds=30)).isoformat().replace("+00:00", "Z"),
        duration_s=30.0,
        git_revision="abc1234",
        git_dirty=False,
    )


def synthetic_records() -> list[RunRecord]:
    records = []
    for (topology, strategy), runs in RUNS.items():
        for rate, p99, verify in runs:
            records.append(run_record(topology, strategy, rate, p99, verify, index=len(records)))
    return records


@pytest.fixture
def results_dir(tmp_path):
    directory = tmp_path / "results"
    for record in synthetic_records():
        write_record(record, directory)
    return directory


def by_topology():
    return {t.name: t for t in group_configurations(synthetic_records())}


def row_of(topology, strategy):
    rows = table_rows(topology)
    return dict(zip(HEADERS, next(r for r in rows if r[0].startswith(strategy)), strict=True))


def test_repeated_runs_are_one_configuration_with_means_and_best():
    topologies = by_topology()
    assert sorted(topologies) == sorted(TOPOLOGIES)
    embedded = topologies["embedded-postgres"]
    assert [c.strategy for c in embedded.configurations] == [
        "block",
        "per-execution",
        "micro-batch",
    ]
    row = row_of(embedded, "micro-batch")
    assert row["runs"] == "2"
    assert row["exec/s mean"] == "2,200.0"
    assert row["exec/s best"] == "2,400.0"
    assert row["txn p99 ms"] == "42.0"  # mean of 40 and 44
    assert row["txn p50 ms"] == "10.5"  # mean of 10 and 11
    assert row["e2e p99 ms"] == "126.0"
    assert row["retries /1k txn"] == "0.0"
    assert row["verify"] == "passed"
    assert row_of(topologies["docker-5n-2cpu"], "block")["verify"] == "1 passed, 1 failed"


def test_retries_are_pooled_per_thousand_transactions_and_dead_letters_summed():
    records = [
        run_record("docker-3n-2cpu", "micro-batch", 100, 5, "passed", index=0,
                   transactions=1000, retries=30, dead_letters=2),
        run_record("docker-3n-2cpu", "micro-batch", 100, 5, "passed", index=1,
                   transactions=3000, retries=10, dead_letters=1),
    ]  # fmt: skip
    (topology,) = group_configurations(records)
    row = row_of(topology, "micro-batch")
    assert row["retries /1k txn"] == "10.0"  # 40 retries over 4,000 transactions
    assert row["dead letters"] == "3"


def test_labels_name_consumers_and_only_the_knobs_that_differ():
    topology = by_topology()["docker-3n-2cpu"]
    labels = [c.label for c in topology.configurations]
    assert labels == [
        "block, 1 consumer, batch_size=500",
        "per-execution, 8 consumers, batch_size=1",
        "micro-batch, 8 consumers, batch_size=50",
    ]
    assert topology.common_knobs == "isolation=serializable"


def test_different_knobs_are_different_configurations():
    more_consumers = {**KNOBS["micro-batch"], "consumers": 16}
    records = [
        *synthetic_records(),
        run_record("embedded-postgres", "micro-batch", 2600, 30, "passed", index=99,
                   knobs=more_consumers),
    ]  # fmt: skip
    embedded = {t.name: t for t in group_configurations(records)}["embedded-postgres"]
    micro = [c for c in embedded.configurations if c.strategy == "micro-batch"]
    assert [(c.consumers, len(c.runs)) for c in micro] == [(8, 2), (16, 1)]


def test_best_is_the_highest_verified_mean():
    best = by_topology()["embedded-postgres"].best
    assert best.configuration.strategy == "micro-batch"
    assert best.configuration.verified_rate == 2200
    assert best.tied_with == []


def test_a_tie_on_throughput_goes_to_the_lower_p99():
    best = by_topology()["docker-3n-2cpu"].best
    assert best.configuration.strategy == "per-execution"  # 3,100/s at p99 21 ms
    assert [c.strategy for c in best.tied_with] == ["micro-batch"]  # 3,100/s at p99 62 ms


def test_a_configuration_that_failed_verification_never_wins():
    topology = by_topology()["docker-5n-2cpu"]
    assert topology.best.configuration.strategy == "micro-batch"
    # per-execution's skipped run does not count towards its verified mean either.
    per_execution = next(c for c in topology.configurations if c.strategy == "per-execution")
    assert per_execution.verified_rate == 4000


def test_no_best_when_nothing_was_verified():
    records = [run_record("docker-3n-2cpu", "block", 10_000, 5, "skipped", index=0)]
    records.append(run_record("docker-3n-2cpu", "micro-batch", 20_000, 5, "failed", index=1))
    (topology,) = group_configurations(records)
    assert topology.best is None
    assert "no best configuration on docker-3n-2cpu" in render_tables_for(records)


def render_tables_for(records):
    from workload.report import Report

    return render_tables(Report(ReportOptions(), group_configurations(records), []), "text")


def test_text_tables_name_the_best_per_topology(results_dir):
    text = render_tables(build(ReportOptions(results_dir)), "text")
    best_lines = [line for line in text.splitlines() if line.startswith("best on")]
    assert best_lines == [
        "best on docker-3n-2cpu: per-execution, 8 consumers, batch_size=1: 3,100.0 "
        "executions/s (mean of 2 verified runs), txn p99 21.0 ms; tied on executions/s with "
        "micro-batch, 8 consumers, batch_size=50, won on lower p99",
        "best on docker-5n-2cpu: micro-batch, 8 consumers, batch_size=50: 5,500.0 "
        "executions/s (mean of 2 verified runs), txn p99 68.0 ms",
        "best on embedded-postgres: micro-batch, 8 consumers, batch_size=50: 2,200.0 "
        "executions/s (mean of 2 verified runs), txn p99 42.0 ms",
    ]


def parse_markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table in the text, as rows of header -> cell, checking the shape."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|( *:?-{3,}:? *\|)+", lines[i + 1])
        ):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip("|"))]
                assert len(cells) == len(header), lines[i]
                rows.append(dict(zip(header, cells, strict=True)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def test_written_report_has_valid_charts_and_markdown(results_dir, tmp_path):
    out = tmp_path / "out"
    report = write(build(ReportOptions(results_dir, out)))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["latency.png", "report.md", "scaling.png", "throughput.png"]
    for chart in report.charts:
        data = chart.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 600 and height >= 400
        assert len(data) > 20_000  # drawn, not an empty canvas
    markdown = (out / "report.md").read_text()
    for chart in ("throughput.png", "latency.png", "scaling.png"):
        assert f"]({chart})" in markdown
    tables = parse_markdown_tables(markdown)
    assert len(tables) == 3 and all(len(t) == 3 for t in tables)
    assert "- best on embedded-postgres: micro-batch" in markdown


def test_no_scaling_chart_when_nothing_varied_and_a_stale_one_is_removed(results_dir, tmp_path):
    # A scaling chart from an earlier report would describe other runs than this one.
    (tmp_path / "scaling.png").write_bytes(b"old")
    one_topology = ReportOptions(results_dir, tmp_path, topologies=("embedded-postgres",))
    report = write(build(one_topology))
    assert [c.name for c in report.charts] == ["throughput.png", "latency.png"]
    assert not (tmp_path / "scaling.png").exists()
    assert "No scaling chart" in (tmp_path / "report.md").read_text()


def test_topology_and_since_filters(results_dir):
    report = build(ReportOptions(results_dir, topologies=("docker-3n-2cpu", "docker-5n-2cpu")))
    assert [t.name for t in report.topologies] == ["docker-3n-2cpu", "docker-5n-2cpu"]
    late = build(ReportOptions(results_dir, since=T0 + timedelta(minutes=12)))
    assert late.runs == len(synthetic_records()) - 12
    with pytest.raises(LabError, match="no runs of topology k8s-9n"):
        build(ReportOptions(results_dir, topologies=("k8s-9n",)))
    with pytest.raises(LabError, match="no runs started on or after"):
        build(ReportOptions(results_dir, since=T0 + timedelta(days=1)))


def test_bad_files_are_reported_not_fatal(results_dir):
    (results_dir / "garbage.json").write_text("{nope")
    report = build(ReportOptions(results_dir))
    assert report.runs == len(synthetic_records())
    assert [p.path.name for p in report.problems] == ["garbage.json"]


def test_format_table_aligns_text():
    rows = [["a", "1", "2.0", "3.0", "-", "-", "-", "-", "0", "passed"]]
    header, rule, row = format_table(rows, "text").splitlines()
    assert header.index("exec/s mean") + len("exec/s mean") == row.index("2.0") + len("2.0")
    assert set(rule.replace(" ", "")) == {"-"}


# --- the command line -------------------------------------------------------------------------


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]


def test_cli_markdown_output_parses_as_tables(results_dir):
    (results_dir / "garbage.json").write_text("[]")
    result = run_cli(
        "report", "--results", str(results_dir), "--format", "markdown",
        "--topology", "docker-5n-2cpu", "--since", "2026-05-01",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (table,) = parse_markdown_tables(result.stdout)
    assert [row["configuration"] for row in table] == [
        "block, 1 consumer, batch_size=500",
        "per-execution, 8 consumers, batch_size=1",
        "micro-batch, 8 consumers, batch_size=50 (best)",
    ]
    assert table[2]["exec/s mean"] == "5,500.0"
    assert "**best on docker-5n-2cpu: micro-batch" in result.stdout
    assert "warning: skipped" in result.stderr and "garbage.json" in result.stderr
    # Without --out, the report goes under the results directory.
    assert (results_dir / "report" / "report.md").exists()
    assert (results_dir / "report" / "throughput.png").exists()


def test_cli_user_errors_are_one_line_with_exit_2(tmp_path):
    assert_one_line_error(
        run_cli("report", "--results", str(tmp_path / "absent")), "no results directory"
    )
    (tmp_path / "bad.json").write_text("{}")
    assert_one_line_error(run_cli("report", "--results", str(tmp_path)), "no valid run records")


def test_an_empty_results_directory_is_a_user_error(tmp_path):
    with pytest.raises(LabError, match="no valid run records"):
        build(ReportOptions(tmp_path))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(LabError, match=r"\(1 file skipped, first .*bad.json"):
        build(ReportOptions(tmp_path))


def test_cli_rejects_a_since_that_is_not_a_date(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["report", "--since", "last tuesday"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "is not an ISO-8601 date" in line

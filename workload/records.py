"""Run records: one JSON file per measured run, the raw material of ``python -m workload report``.

Whatever drives a run (``allocate``, Locust, the demo, a sweep step, a benchmark) writes the
same record into ``results/``, so runs stay comparable across topologies, strategies and
months. The schema is versioned: a reader refuses a record newer than it understands rather
than misreading it, and ignores keys it does not know, so adding a field does not break an
older report.

A record never holds a database URL, and ``write_record`` redacts passwords from any URL a
caller put in the notes or knobs: results get shared, committed and pasted into tickets.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workload.errors import LabError
from workload.settings import redact_url

SCHEMA = 1
SOURCES = ("allocate", "locust", "demo", "sweep", "bench")
PLATFORMS = ("embedded", "docker", "kubernetes", "custom")
STRATEGIES = ("block", "per-execution", "micro-batch")
VERIFY_OUTCOMES = ("passed", "failed", "skipped")
# The keys of workload.metrics.Histogram.summary(); a latency summary is stored as given.
LATENCY_KEYS = ("count", "mean_ms", "max_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99_9_ms")
RETRY_KEYS = ("transactions", "retries", "exhausted", "by_sqlstate")

DEFAULT_RESULTS_DIR = Path("results")
_log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A dict or file that is not a valid run record; the message names the field."""


def utc_now() -> str:
    """An ISO-8601 UTC timestamp with a ``Z``, as every record stores time."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """A record's timestamp as an aware datetime; a naive one is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_run_id() -> str:
    """Unique without coordination: runs on several machines may share one results directory."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class GitRevision:
    revision: str = "unknown"
    dirty: bool | None = None  # None when unknown (no git, not a repository)


def git_revision(repo_dir: Path | str = ".") -> GitRevision:
    """The short commit the run's code came from, and whether the tree had uncommitted edits."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (git from PATH, as users run it)
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return GitRevision()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return GitRevision()
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return GitRevision(head.stdout.strip() or "unknown", dirty)


@dataclass
class Topology:
    name: str  # e.g. "embedded-postgres", "docker-3n-2cpu"
    platform: str  # one of PLATFORMS
    nodes: int | None = None
    database: str = ""  # e.g. "PostgreSQL 18.6", "CockroachDB v25.2"
    kafka: str = ""  # e.g. "tansu 0.6.0"


@dataclass
class DataScale:
    scale: str | None = None
    seed: int | None = None
    accounts: int | None = None
    block_orders: int | None = None
    executions: int | None = None


def empty_retries() -> dict[str, Any]:
    return {"transactions": 0, "retries": 0, "exhausted": 0, "by_sqlstate": {}}


@dataclass
class Results:
    """What a run measured. Latencies take ``Histogram.summary()`` as is; retries take
    ``RetryStats.as_dict()`` as is."""

    executions_allocated: int = 0
    executions_per_s: float = 0.0
    transactions: int = 0
    transactions_per_s: float = 0.0
    txn_latency_ms: dict[str, Any] | None = None
    retries: dict[str, Any] = field(default_factory=empty_retries)
    cdc_lag_ms: dict[str, Any] | None = None
    e2e_latency_ms: dict[str, Any] | None = None
    consumer_lag: int | None = None
    dead_letters: int = 0
    errors: int = 0
    verify: str = "skipped"  # one of VERIFY_OUTCOMES


@dataclass
class RunRecord:
    topology: Topology
    strategy: str  # one of STRATEGIES
    source: str  # one of SOURCES
    knobs: dict[str, Any] = field(default_factory=dict)
    data: DataScale = field(default_factory=DataScale)
    results: Results = field(default_factory=Results)
    run_id: str = field(default_factory=new_run_id)
    started_at: str = field(default_factory=utc_now)
    ended_at: str | None = None
    duration_s: float | None = None
    git_revision: str = "unknown"
    git_dirty: bool | None = None
    notes: str = ""
    schema: int = SCHEMA

    @classmethod
    def begin(
        cls,
        topology: Topology,
        strategy: str,
        source: str,
        *,
        knobs: Mapping[str, Any] | None = None,
        data: DataScale | None = None,
        repo_dir: Path | str | None = None,
        notes: str = "",
    ) -> RunRecord:
        """A record stamped now and with the code's git revision; ``finish`` completes it."""
        revision = git_revision(repo_dir or Path(__file__).resolve().parent.parent)
        return cls(
            topology=topology,
            strategy=strategy,
            source=source,
            knobs=dict(knobs or {}),
            data=data or DataScale(),
            git_revision=revision.revision,
            git_dirty=revision.dirty,
            notes=notes,
        )

    def finish(self, results: Results, *, duration_s: float | None = None) -> RunRecord:
        """Stamp the end. Pass ``duration_s`` from a monotonic clock when there is one: wall
        clocks jump, and the report divides by this."""
        self.ended_at = utc_now()
        self.results = results
        if duration_s is None:
            elapsed = parse_timestamp(self.ended_at) - parse_timestamp(self.started_at)
            duration_s = elapsed.total_seconds()
        self.duration_s = round(duration_s, 3)
        return self

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # What identifies the run first, for a human opening the file; then the measurements.
        return {key: out[key] for key in _KEY_ORDER}

    def to_json(self) -> str:
        try:
            return json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise RecordError(f"run {self.run_id} cannot be written as JSON: {exc}") from None

    @classmethod
    def from_dict(cls, raw: Any) -> RunRecord:
        """A validated record; ``RecordError`` names the first field that is wrong."""
        return _parse_record(raw)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not JSON (line {exc.lineno}: {exc.msg})") from None
        return _parse_record(raw)

    @property
    def started(self) -> datetime:
        return parse_timestamp(self.started_at)


_KEY_ORDER = (
    "schema", "run_id", "source", "started_at", "ended_at", "duration_s", "git_revision",
    "git_dirty", "topology", "strategy", "knobs", "data", "results", "notes",
)  # fmt: skip


# --- validation -------------------------------------------------------------------------------


def _require(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise RecordError(f"{where}{key} is missing")
    return raw[key]


def _is_number(value: Any) -> bool:
    # bool is an int to Python, never a measurement to us.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, name: str, *, optional: bool = False, integer: bool = False) -> Any:
    if value is None and optional:
        return None
    if not _is_number(value) or (integer and not isinstance(value, int)) or value < 0:
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise RecordError(f"{name} is {value!r}, not {kind}")
    return value


def _text(value: Any, name: str, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{name} is {value!r}, not a non-empty string")
    if choices and value not in choices:
        raise RecordError(f"{name} is {value!r}, not one of {', '.join(choices)}")
    return value


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{name} is {type(value).__name__}, not an object")
    return value


def _timestamp(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    try:
        parse_timestamp(_text(value, name))
    except ValueError:
        raise RecordError(f"{name} is {value!r}, not an ISO-8601 timestamp") from None
    return value


def _latency(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    summary = dict(_mapping(value, name))
    for key in LATENCY_KEYS:
        _number(summary.get(key), f"{name}.{key}", optional=True, integer=key == "count")
    return summary


def _retries(value: Any) -> dict[str, Any]:
    retries = {**empty_retries(), **_mapping(value, "results.retries")}
    for key in RETRY_KEYS[:3]:
        _number(retries[key], f"results.retries.{key}", integer=True)
    by_sqlstate = _mapping(retries["by_sqlstate"], "results.retries.by_sqlstate")
    for state, count in by_sqlstate.items():
        _number(count, f"results.retries.by_sqlstate.{state}", integer=True)
    retries["by_sqlstate"] = dict(by_sqlstate)
    return retries


def _parse_record(raw: Any) -> RunRecord:
    raw = _mapping(raw, "the record")
    schema = _require(raw, "schema", "")
    if schema != SCHEMA:
        if isinstance(schema, int) and schema > SCHEMA:
            raise RecordError(f"schema {schema} is newer than this kit reads ({SCHEMA})")
        raise RecordError(f"schema is {schema!r}, not {SCHEMA}")

    topo = _mapping(_require(raw, "topology", ""), "topology")
    topology = Topology(
        name=_text(_require(topo, "name", "topology."), "topology.name"),
        platform=_text(
            _require(topo, "platform", "topology."), "topology.platform", choices=PLATFORMS
        ),
        nodes=_number(topo.get("nodes"), "topology.nodes", optional=True, integer=True),
        database=str(topo.get("database") or ""),
        kafka=str(topo.get("kafka") or ""),
    )

    data_raw = _mapping(raw.get("data") or {}, "data")
    scale, seed = data_raw.get("scale"), data_raw.get("seed")
    if scale is not None:
        _text(scale, "data.scale")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RecordError(f"data.seed is {seed!r}, not an integer")
    data = DataScale(
        scale=scale,
        seed=seed,
        **{
            key: _number(data_raw.get(key), f"data.{key}", optional=True, integer=True)
            for key in ("accounts", "block_orders", "executions")
        },
    )

    res = _mapping(_require(raw, "results", ""), "results")
    results = Results(
        executions_allocated=_number(
            res.get("executions_allocated", 0), "results.executions_allocated", integer=True
        ),
        executions_per_s=_number(
            _require(res, "executions_per_s", "results."), "results.executions_per_s"
        ),
        transactions=_number(res.get("transactions", 0), "results.transactions", integer=True),
        transactions_per_s=_number(
            res.get("transactions_per_s", 0.0), "results.transactions_per_s"
        ),
        txn_latency_ms=_latency(res.get("txn_latency_ms"), "results.txn_latency_ms"),
        retries=_retries(res.get("retries") or {}),
        cdc_lag_ms=_latency(res.get("cdc_lag_ms"), "results.cdc_lag_ms"),
        e2e_latency_ms=_latency(res.get("e2e_latency_ms"), "results.e2e_latency_ms"),
        consumer_lag=_number(
            res.get("consumer_lag"), "results.consumer_lag", optional=True, integer=True
        ),
        dead_letters=_number(res.get("dead_letters", 0), "results.dead_letters", integer=True),
        errors=_number(res.get("errors", 0), "results.errors", integer=True),
        verify=_text(res.get("verify", "skipped"), "results.verify", choices=VERIFY_OUTCOMES),
    )

    git_dirty = raw.get("git_dirty")
    if git_dirty is not None and not isinstance(git_dirty, bool):
        raise RecordError(f"git_dirty is {git_dirty!r}, not true, false or null")
    notes = raw.get("notes") or ""
    if not isinstance(notes, str):
        raise RecordError("notes is not a string")
    return RunRecord(
        topology=topology,
        strategy=_text(_require(raw, "strategy", ""), "strategy", choices=STRATEGIES),
        source=_text(_require(raw, "source", ""), "source", choices=SOURCES),
        knobs=dict(_mapping(raw.get("knobs") or {}, "knobs")),
        data=data,
        results=results,
        run_id=_text(_require(raw, "run_id", ""), "run_id"),
        started_at=_timestamp(_require(raw, "started_at", ""), "started_at"),
        ended_at=_timestamp(raw.get("ended_at"), "ended_at", optional=True),
        duration_s=_number(raw.get("duration_s"), "duration_s", optional=True),
        git_revision=str(raw.get("git_revision") or "unknown"),
        git_dirty=git_dirty,
        notes=notes,
    )


# --- files ------------------------------------------------------------------------------------

_URL_HINT = re.compile(r"://|password=", re.IGNORECASE)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value) if _URL_HINT.search(value) else value
    if isinstance(value, Mapping):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"


def record_file_name(record: RunRecord) -> str:
    """``<start>-<topology>-<strategy>-<run id>.json``: sorts by time in a plain ``ls``."""
    started = f"{record.started:%Y%m%dT%H%M%SZ}"
    parts = (started, _slug(record.topology.name), record.strategy, _slug(record.run_id))
    return "-".join(parts) + ".json"


def write_record(record: RunRecord, results_dir: Path | str = DEFAULT_RESULTS_DIR) -> Path:
    """Write the record atomically (a reader never sees half a file) and return its path.

    Passwords in any URL-looking string are replaced by ``***`` in the file; the record object
    itself is left as the caller built it. Writing the same run again replaces its file.
    """
    # Validating our own output means a record that writes is a record that reads.
    clean = RunRecord.from_dict(_redacted(record.as_dict()))
    text = clean.to_json()
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    target = results_dir / record_file_name(clean)
    # The temp file sits in the same directory so the rename stays on one filesystem (atomic);
    # its dot prefix and .tmp suffix keep readers from ever picking it up.
    fd, temp = tempfile.mkstemp(dir=results_dir, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class Problem:
    """A file in the results directory that is not a valid run record, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Scan:
    records: list[RunRecord]
    problems: list[Problem]


def scan_records(results_dir: Path | str = DEFAULT_RESULTS_DIR) -> Scan:
    """Every valid record in the directory (oldest first) and a problem for each file that is
    not one. One bad file (a crash mid-edit, a newer schema) must not hide every other run."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise LabError(
            f"no results directory {results_dir}: runs write their records there "
            "(or name another with --results)"
        )
    records: list[RunRecord] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for path in sorted(results_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = RunRecord.from_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(path, f"cannot read: {exc}"))
            continue
        except RecordError as exc:
            problems.append(Problem(path, f"not a run record: {exc}"))
            continue
        if record.run_id in seen:
            # A copied file would count one run twice and skew every mean.
            problems.append(Problem(path, f"run {record.run_id} is also in {seen[record.run_id]}"))
            continue
        seen[record.run_id] = path
        records.append(record)
    records.sort(key=lambda r: (r.started, r.run_id))
    return Scan(records, problems)


def read_records(results_dir: Path | str = DEFAULT_RESULTS_DIR) -> list[RunRecord]:
    """The valid records; each skipped file is logged as a warning (``scan_records`` returns
    them instead)."""
    scan = scan_records(results_dir)
    for problem in scan.problems:
        _log.warning("skipped %s", problem)
    return scan.records

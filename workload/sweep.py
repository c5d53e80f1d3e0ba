"""A sweep: every configuration of the experiment, run in turn, then one comparison.

For each topology (``--stacks``): bring it up (:mod:`workload.topology`), create the schema
and seed once; then for each configuration (strategy x consumers x batch size) on that same
seeded data: reset the orders, trades and allocations domains, rebalance, start CDC into a
topic of the configuration's own, run Locust headless (allocation consumers plus market users
streaming executions) for the duration, stop CDC. Locust writes each run record, tagged with
the topology; the sweep writes a summary of what ran, failed or never ran to
``RESULTS/sweeps/<id>.json`` and ends with :mod:`workload.report` over its own runs.

A failed configuration is recorded and the sweep goes on (unless ``keep_going`` is off);
Ctrl-C tears down what is up and still writes the report of what finished.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from psycopg import sql

from workload import cdc, roles, schema
from workload import report as reports
from workload.allocate.consumer import STRATEGIES
from workload.cdc.options import CdcOptions
from workload.commands.rebalance import default_workers
from workload.commands.seed import seed_database
from workload.db import connect
from workload.dialect import detect
from workload.errors import LabError
from workload.rebalance import RebalanceOptions, rebalance
from workload.records import utc_now
from workload.seed import scale_for
from workload.settings import Settings
from workload.topics import DEFAULT_PARTITIONS, TopicSpec
from workload.topology import (
    EMBEDDED,
    REPO,
    Deployment,
    Progress,
    check_stack_config,
    check_stack_names,
    require_pulumi_cli,
    topology_for,
)

LOCUSTFILE = REPO / "locustfiles" / "allocation.py"
RESET_DOMAINS = ("orders", "trades", "allocations")
BATCHED = "micro-batch"  # the only strategy with a batch size
# Locust gets this long beyond --run-time to stop its users, flush and write the record.
LOCUST_GRACE_S = 180.0


@dataclass(frozen=True)
class Configuration:
    stack: str
    strategy: str
    consumers: int
    batch_size: int | None  # None: the strategy has no batch size

    @property
    def label(self) -> str:
        batch = f", batch {self.batch_size}" if self.batch_size is not None else ""
        return f"{self.stack}: {self.strategy}, {self.consumers} consumer(s){batch}"


@dataclass(frozen=True)
class SweepOptions:
    stacks: tuple[str, ...] = (EMBEDDED,)
    strategies: tuple[str, ...] = (BATCHED,)
    consumers: tuple[int, ...] = (2,)
    batch_sizes: tuple[int, ...] = (100,)
    users: int = 1  # market users, streaming executions at market_rate each
    market_rate: float = 20.0
    duration: float = 300.0
    results_dir: Path = Path("results")
    keep_going: bool = True

    def validate(self) -> SweepOptions:
        if not self.stacks:
            raise LabError("--stacks: name at least one stack")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise LabError(f"--strategies: choose from {', '.join(STRATEGIES)}")
        if not self.consumers or min(self.consumers) < 1:
            raise LabError("--consumers: give counts of at least 1")
        if max(self.consumers) > DEFAULT_PARTITIONS:
            raise LabError(
                f"--consumers: at most {DEFAULT_PARTITIONS}, the executions topic's partitions"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise LabError("--batch-sizes: give sizes of at least 1")
        if self.users < 1 or self.market_rate <= 0 or self.duration <= 0:
            raise LabError("--users, --market-rate and --duration must be positive")
        check_stack_names(list(self.stacks))
        for stack in self.stacks:  # every stack's config, before the first one comes up
            if stack != EMBEDDED:
                check_stack_config(stack)
        return self


def configurations(options: SweepOptions) -> list[Configuration]:
    """The cartesian product, except that a strategy without a batch size runs once per
    consumer count: its runs at different batch sizes would be the same run, counted twice."""
    out = []
    for stack, strategy, consumers in itertools.product(
        options.stacks, options.strategies, options.consumers
    ):
        sizes = options.batch_sizes if strategy == BATCHED else (None,)
        out += [Configuration(stack, strategy, consumers, size) for size in sizes]
    return out


@dataclass
class Outcome:
    configuration: Configuration
    status: str = "not run"  # done | failed | not run
    detail: str = ""
    record: str | None = None
    seconds: float = 0.0


@dataclass
class SweepResult:
    sweep_id: str
    started_at: str
    outcomes: list[Outcome]
    interrupted: bool = False
    summary: Path | None = None
    report: reports.Report | None = None
    report_error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 0 if all(o.status == "done" for o in self.outcomes) else 1


# -- the plan ---------------------------------------------------------------------------------


def plan(options: SweepOptions, settings: Settings) -> list[str]:
    """What a sweep would do, step by step, touching nothing."""
    lines = []
    configs = configurations(options)
    lines.append(
        f"sweep: {len(configs)} configuration(s) on {len(options.stacks)} topolog"
        f"{'y' if len(options.stacks) == 1 else 'ies'}, {options.duration:g} s of Locust each; "
        f"data: scale {settings.scale}, seed {settings.seed}; run records in "
        f"{options.results_dir}"
    )
    for stack in options.stacks:
        topology = topology_for(stack, settings)
        lines.append(f"[{stack}]")
        lines += [f"  - {step}" for step in topology.plan()]
        lines.append(f"  - drop and create the schema; seed (scale {settings.scale}, "
                     f"seed {settings.seed})")  # fmt: skip
        for n, config in enumerate(c for c in configs if c.stack == stack):
            batch = f" --batch-size {config.batch_size}" if config.batch_size else ""
            lines.append(f"  {n + 1}. {config.label}")
            lines.append(
                f"     reset {', '.join(RESET_DOMAINS)}; rebalance; cdc start; locust --headless "
                f"{config.consumers} AllocationConsumerUser + {options.users} MarketUser "
                f"--strategy {config.strategy}{batch} --run-time {options.duration:g}s; cdc stop"
            )
        if stack == EMBEDDED:
            lines.append("  - stop what the sweep started of the embedded stack")
        else:
            lines.append(f"  - pulumi destroy: stack {stack}")
    lines.append(f"report: compare the sweep's runs (tables and charts in "
                 f"{options.results_dir / 'report'})")  # fmt: skip
    return lines


# -- one configuration ------------------------------------------------------------------------


def reset_domains(dsn: str) -> None:
    """Empty what rebalancing and trading write; reference, market and holdings stay, so
    every configuration starts from the same seeded data."""
    tables = [t for t in schema.TABLES if t.domain in RESET_DOMAINS]
    names = sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(t.domain), sql.Identifier(t.name)) for t in tables
    )
    with connect(dsn) as conn:
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(names))


def locust_command(
    config: Configuration, options: SweepOptions, deployment: Deployment, topic: str, group: str
) -> tuple[list[str], dict[str, str]]:
    """Locust's command line and environment; the database URL goes by environment, never
    on a command line that every user of the machine can read."""
    users = config.consumers + options.users
    fixed = [
        {"user_class_name": "AllocationConsumerUser", "fixed_count": config.consumers},
        {"user_class_name": "MarketUser", "fixed_count": options.users},
    ]
    args = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "--run-time", f"{max(1, round(options.duration))}s",
        "--config-users", json.dumps(fixed),
        "--strategy", config.strategy, "--topic", topic, "--group", group,
        "--market-rate", f"{options.market_rate:g}",
        # One shard of the open block orders per market user: with more shards than users,
        # the other shards' block orders would never trade.
        "--market-shards", str(options.users),
        "--results-dir", str(options.results_dir), "--only-summary",
    ]  # fmt: skip
    if config.batch_size is not None:
        args += ["--batch-size", str(config.batch_size)]
    # The service-role passwords stay: `schema create` set them (from a secure stack's
    # outputs, see PulumiTopology, or the user's environment) and Locust's services log in.
    passwords = {service.env for service in roles.SERVICES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_") or k in passwords}
    settings, endpoints = deployment.settings, deployment.endpoints
    env.update(
        LAB_TOPOLOGY=endpoints.topology,
        LAB_RUN_DIR=str(settings.run_dir),
        # Named, so the record says which data the run measured.
        LAB_SCALE=settings.scale,
        LAB_SEED=str(settings.seed),
    )
    if not endpoints.embedded:
        env["LAB_DSN"] = endpoints.dsn
        env["LAB_KAFKA_BOOTSTRAP"] = endpoints.kafka_bootstrap or ""
    return args, env


def run_locust(args: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
    """Locust in a session of its own, so that its whole process group is ended whatever
    happens here (Ctrl-C included): nothing is left running."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"locust did not finish within {timeout:.0f} s; see {log}") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Locust stops its users and writes the record
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_configuration(
    config: Configuration,
    options: SweepOptions,
    deployment: Deployment,
    work: Path,
    index: int,
    progress: Progress,
) -> Outcome:
    outcome = Outcome(config)
    started = time.monotonic()
    endpoints, settings = deployment.endpoints, deployment.settings
    tag = f"{work.name}-{index}"
    # A topic per configuration: the previous one's executions, still on the broker, belong
    # to block orders the reset removed.
    cdc_options = CdcOptions(topics=TopicSpec(name=f"sweep-{tag}"))
    progress(f"   reset {', '.join(RESET_DOMAINS)}")
    reset_domains(endpoints.dsn)
    progress("   rebalance")
    balanced = rebalance(endpoints.dsn, RebalanceOptions(workers=default_workers()))
    progress(f"     {balanced.block_orders:,} block orders from {balanced.customer_orders:,} "
             "customer orders")  # fmt: skip
    progress(f"   cdc start (topic {cdc_options.topics.name})")
    cdc.start(endpoints, settings, cdc_options)
    try:
        before = set(options.results_dir.glob("*.json"))
        args, env = locust_command(config, options, deployment, cdc_options.topics.name, tag)
        log = work / f"{index}-locust.log"
        progress(f"   locust --headless for {options.duration:g} s (log {log})")
        code = run_locust(args, env, log, options.duration + LOCUST_GRACE_S)
    finally:
        progress("   cdc stop")
        cdc.stop(endpoints, settings, cdc_options, drop_slot=True)
    written = sorted(set(options.results_dir.glob("*.json")) - before)
    outcome.seconds = time.monotonic() - started
    if written:
        outcome.record = str(written[-1])
    if code != 0 or not written:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        why = f"locust exited {code}" if code != 0 else "locust wrote no run record"
        outcome.status, outcome.detail = "failed", f"{why}; {tail}"
    else:
        record = json.loads(Path(outcome.record).read_text())
        results = record["results"]
        outcome.status = "done"
        outcome.detail = (
            f"{results['executions_allocated']:,} executions allocated, "
            f"{results['executions_per_s']:,.1f}/s, verify {results.get('verify')}"
        )
    return outcome


# -- the sweep --------------------------------------------------------------------------------


def prepare_data(deployment: Deployment, progress: Progress) -> None:
    endpoints, settings = deployment.endpoints, deployment.settings
    cdc.stop(endpoints, settings, drop_slot=True)  # an earlier run's relay and slot
    with connect(endpoints.dsn) as conn:
        dialect = detect(conn)
        dropped = schema.drop(conn, dialect)
        schema.create(conn, dialect)
    progress(f"   schema created on {dialect.server_name}"
             + (" (previous data dropped)" if dropped else ""))  # fmt: skip
    progress(f"   seed: scale {settings.scale}, seed {settings.seed}")
    seeded = seed_database(endpoints.dsn, scale_for(settings.scale), settings.seed)
    progress(f"     {seeded.total_rows:,} rows in {seeded.seconds:.1f} s")


def run_sweep(
    options: SweepOptions,
    settings: Settings,
    progress: Progress = print,
    topology_factory: Callable = topology_for,
) -> SweepResult:
    options.validate()
    if any(stack != EMBEDDED for stack in options.stacks):
        require_pulumi_cli()  # before anything starts, not after the first stack's runs
    sweep_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    result = SweepResult(sweep_id, utc_now(), [Outcome(c) for c in configurations(options)])
    options.results_dir.mkdir(parents=True, exist_ok=True)
    work = options.results_dir / "sweeps" / sweep_id
    work.mkdir(parents=True, exist_ok=True)
    progress(f"== sweep {sweep_id}: {len(result.outcomes)} configuration(s)")
    stop_rest = False
    try:
        for stack in options.stacks:
            todo = [o for o in result.outcomes if o.configuration.stack == stack]
            if stop_rest:
                break
            progress(f"== [{stack}] up")
            try:
                with topology_factory(stack, settings, progress) as deployment:
                    prepare_data(deployment, progress)
                    for outcome in todo:
                        index = result.outcomes.index(outcome) + 1
                        progress(f"-- {index}/{len(result.outcomes)} {outcome.configuration.label}")
                        try:
                            done = run_configuration(
                                outcome.configuration, options, deployment, work, index, progress
                            )
                        except Exception as exc:
                            # Recorded, not raised: one bad configuration must not cost the
                            # runs of every other.
                            done = Outcome(outcome.configuration, "failed", _one_line(exc))
                        outcome.__dict__.update(done.__dict__)
                        progress(f"   {outcome.status}: {outcome.detail}")
                        if outcome.status == "failed" and not options.keep_going:
                            stop_rest = True
                            break
            except Exception as exc:
                # The topology (or its data) failed: its configurations did not run.
                for outcome in todo:
                    if outcome.status == "not run":
                        outcome.status, outcome.detail = "failed", f"[{stack}] {_one_line(exc)}"
                progress(f"   [{stack}] failed: {_one_line(exc)}")
                if not options.keep_going:
                    stop_rest = True
    except KeyboardInterrupt:
        result.interrupted = True
        progress("== interrupted: what was up is torn down; reporting what finished")
    finally:
        _write_summary(result, options, work)
        _write_report(result, options)
    if result.interrupted:
        if result.report is not None:
            progress(f"report of what finished: {result.report.markdown}")
        raise KeyboardInterrupt
    return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _write_summary(result: SweepResult, options: SweepOptions, work: Path) -> None:
    result.summary = work.parent / f"{result.sweep_id}.json"
    document = {
        "sweep_id": result.sweep_id,
        "started_at": result.started_at,
        "finished_at": utc_now(),
        "interrupted": result.interrupted,
        "options": {
            **asdict(options),
            "results_dir": str(options.results_dir),
        },
        "outcomes": [
            {
                **asdict(o.configuration),
                **{k: v for k, v in asdict(o).items() if k != "configuration"},
            }
            for o in result.outcomes
        ],
    }
    result.summary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _write_report(result: SweepResult, options: SweepOptions) -> None:
    if not any(o.status == "done" for o in result.outcomes):
        result.report_error = "no configuration finished, so there is nothing to compare"
        return
    try:
        report_options = reports.ReportOptions(
            results_dir=options.results_dir, since=reports.parse_since(result.started_at)
        )
        result.report = reports.write(reports.build(report_options))
    except LabError as exc:
        result.report_error = str(exc)

"""Compare recorded runs: a table per topology, PNG charts, the best configuration per topology.

Runs with the same topology, strategy and knobs are one *configuration*; repeated runs of it
are averaged (the count is always shown, so one lucky run does not pass for a trend).

The best configuration of a topology is the one with the highest mean executions/s over its
verified runs. A configuration qualifies only if at least one run passed verification and none
failed: throughput bought with a wrong allocation is not throughput. Means that print the same
(to 0.1 executions/s, the table's precision) are a tie, broken by the lower mean p99
transaction latency of the verified runs, then by name, so the answer never depends on file
order.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any

from workload.errors import LabError
from workload.records import (
    DEFAULT_RESULTS_DIR,
    STRATEGIES,
    Problem,
    RunRecord,
    parse_timestamp,
    scan_records,
)

TABLE_FORMATS = ("text", "markdown")
# Knobs in the order a reader thinks about them; any other knob follows alphabetically.
KNOB_ORDER = (
    "consumers", "batch_size", "linger_ms", "snapshot_every", "isolation", "pool_size",
    "partitions", "users",
)  # fmt: skip
TIE_PRECISION = 1  # decimals of executions/s, as the table shows them
# Okabe-Ito colours: told apart with the common colour-vision deficiencies and in greyscale.
STRATEGY_COLOURS = {"block": "#D55E00", "per-execution": "#0072B2", "micro-batch": "#009E73"}
CHART_FILES = ("throughput.png", "latency.png", "scaling.png")


def parse_since(text: str) -> datetime:
    """``--since``: a date or a date and time (ISO-8601); without a zone it means UTC."""
    import argparse

    try:
        return parse_timestamp(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 date or time (e.g. 2026-05-01 or 2026-05-01T14:00)"
        ) from None


@dataclass(frozen=True)
class ReportOptions:
    results_dir: Path = DEFAULT_RESULTS_DIR
    out_dir: Path | None = None  # None: RESULTS/report
    topologies: tuple[str, ...] = ()
    since: datetime | None = None
    table_format: str = "text"

    @property
    def output_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else self.results_dir / "report"


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def _latency(record: RunRecord, summary: str, key: str) -> float | None:
    latency = getattr(record.results, summary)
    return None if latency is None else latency.get(key)


def _knob_sort_key(name: str) -> tuple[int, str]:
    return (KNOB_ORDER.index(name) if name in KNOB_ORDER else len(KNOB_ORDER), name)


def _knob_text(name: str, value: Any) -> str:
    if name == "consumers" and isinstance(value, int):
        return f"{value} consumer" + ("" if value == 1 else "s")
    shown = value if isinstance(value, str | int | float) else json.dumps(value, sort_keys=True)
    return f"{name}={shown}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _canonical(knobs: dict[str, Any]) -> str:
    return json.dumps(knobs, sort_keys=True, default=str)


@dataclass
class Configuration:
    """Every run of one topology with one strategy and one set of knobs."""

    topology: str
    strategy: str
    knobs: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    shown_knobs: tuple[str, ...] = ()  # the knobs that tell it apart within its topology

    @property
    def knobs_text(self) -> str:
        return ", ".join(_knob_text(k, self.knobs[k]) for k in self.shown_knobs if k in self.knobs)

    @property
    def label(self) -> str:
        return ", ".join(part for part in (self.strategy, self.knobs_text) if part)

    @property
    def consumers(self) -> int | None:
        value = self.knobs.get("consumers")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def rates(self) -> list[float]:
        return [r.results.executions_per_s for r in self.runs]

    @property
    def mean_rate(self) -> float:
        return fmean(self.rates)

    @property
    def best_rate(self) -> float:
        return max(self.rates)

    def txn_ms(self, key: str, runs: Sequence[RunRecord] | None = None) -> float | None:
        """Mean across runs of one transaction-latency statistic (``p99_ms``, ...)."""
        return _mean(
            _latency(r, "txn_latency_ms", key) for r in (self.runs if runs is None else runs)
        )

    def e2e_ms(self, key: str) -> float | None:
        return _mean(_latency(r, "e2e_latency_ms", key) for r in self.runs)

    @property
    def retries_per_1000(self) -> float | None:
        # Pooled over runs, so a short run with two retries does not outweigh a long one.
        transactions = sum(
            r.results.retries["transactions"] or r.results.transactions for r in self.runs
        )
        retries = sum(r.results.retries["retries"] for r in self.runs)
        return 1000 * retries / transactions if transactions else None

    @property
    def dead_letters(self) -> int:
        return sum(r.results.dead_letters for r in self.runs)

    @property
    def verify(self) -> Counter:
        return Counter(r.results.verify for r in self.runs)

    @property
    def verify_text(self) -> str:
        counts = self.verify
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{counts[o]} {o}" for o in ("passed", "failed", "skipped") if counts[o])

    @property
    def verified_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.results.verify == "passed"]

    @property
    def qualifies(self) -> bool:
        return bool(self.verified_runs) and not self.verify["failed"]

    @property
    def verified_rate(self) -> float:
        return fmean(r.results.executions_per_s for r in self.verified_runs)

    @property
    def verified_p99(self) -> float | None:
        return self.txn_ms("p99_ms", self.verified_runs)

    def rank_key(self) -> tuple[float, float, str]:
        p99 = self.verified_p99
        return (
            -round(self.verified_rate, TIE_PRECISION),
            math.inf if p99 is None else p99,
            self.label,
        )

    @property
    def sort_key(self) -> tuple:
        order = STRATEGIES.index(self.strategy) if self.strategy in STRATEGIES else len(STRATEGIES)
        # Numbers in numeric order (4 consumers before 16), anything else by its text.
        knob_values = tuple(
            (_knob_sort_key(k), (0, v, "") if _is_number(v) else (1, 0, str(v)))
            for k, v in sorted(self.knobs.items(), key=lambda kv: _knob_sort_key(kv[0]))
        )
        return (order, knob_values, _canonical(self.knobs))


@dataclass
class Best:
    configuration: Configuration
    tied_with: list[Configuration]  # equal executions/s, lost on p99 (or name)


@dataclass
class TopologyReport:
    name: str
    configurations: list[Configuration]
    best: Best | None

    @property
    def runs(self) -> list[RunRecord]:
        return [r for c in self.configurations for r in c.runs]

    def _distinct(self, read: Callable[[RunRecord], Any]) -> list[Any]:
        values = []
        for run in self.runs:
            value = read(run)
            if value not in values and value not in (None, ""):
                values.append(value)
        return values

    @property
    def nodes(self) -> int | None:
        nodes = self._distinct(lambda r: r.topology.nodes)
        return nodes[0] if len(nodes) == 1 else None

    @property
    def platform(self) -> str:
        return " / ".join(self._distinct(lambda r: r.topology.platform))

    @property
    def description(self) -> str:
        parts = [self.platform]
        nodes = self._distinct(lambda r: r.topology.nodes)
        if nodes:
            parts.append(" / ".join(f"{n} node" + ("" if n == 1 else "s") for n in nodes))
        parts += [
            " / ".join(self._distinct(lambda r: r.topology.database)),
            " / ".join(
                self._distinct(lambda r: f"Kafka {r.topology.kafka}" if r.topology.kafka else None)
            ),
        ]
        runs = len(self.runs)
        parts.append(f"{runs} run" + ("" if runs == 1 else "s"))
        return ", ".join(p for p in parts if p)

    @property
    def common_knobs(self) -> str:
        """Knobs every configuration shares, said once instead of in every row."""
        shown = {k for c in self.configurations for k in c.shown_knobs}
        first = self.configurations[0].knobs
        common = [k for k in sorted(first, key=_knob_sort_key) if k not in shown]
        return ", ".join(_knob_text(k, first[k]) for k in common)

    @property
    def data_text(self) -> str:
        scales = Counter(
            " ".join(
                str(p)
                for p in (r.data.scale, None if r.data.seed is None else f"seed {r.data.seed}")
                if p
            )
            or "unknown"
            for r in self.runs
        )
        if len(scales) == 1:
            return next(iter(scales))
        # Different data makes the rows unequal; say so rather than average it away.
        return "mixed, compare with care: " + ", ".join(f"{s} ({n})" for s, n in scales.items())

    @property
    def revisions(self) -> str:
        return ", ".join(
            self._distinct(lambda r: r.git_revision + (" (dirty)" if r.git_dirty else ""))
        )


def group_configurations(records: Iterable[RunRecord]) -> list[TopologyReport]:
    by_topology: dict[str, dict[tuple[str, str], Configuration]] = {}
    for record in records:
        configs = by_topology.setdefault(record.topology.name, {})
        key = (record.strategy, _canonical(record.knobs))
        if key not in configs:
            configs[key] = Configuration(record.topology.name, record.strategy, dict(record.knobs))
        configs[key].runs.append(record)

    reports = []
    for name in sorted(by_topology):
        configs = sorted(by_topology[name].values(), key=lambda c: c.sort_key)
        all_knobs = {k for c in configs for k in c.knobs}
        # Consumers are always named (the chart labels promise them); other knobs only where
        # they differ, so a row says what sets it apart.
        varying = {
            k
            for k in all_knobs
            if k == "consumers" or len({_canonical({k: c.knobs.get(k)}) for c in configs}) > 1
        }
        for config in configs:
            config.shown_knobs = tuple(sorted(varying, key=_knob_sort_key))
        reports.append(TopologyReport(name, configs, best_configuration(configs)))
    return reports


def best_configuration(configurations: Iterable[Configuration]) -> Best | None:
    """The qualifying configuration with the highest mean verified executions/s (module doc)."""
    ranked = sorted((c for c in configurations if c.qualifies), key=Configuration.rank_key)
    if not ranked:
        return None
    top = ranked[0]
    tied = [c for c in ranked[1:] if c.rank_key()[0] == top.rank_key()[0]]
    return Best(top, tied)


def select(records: Sequence[RunRecord], options: ReportOptions) -> list[RunRecord]:
    chosen = list(records)
    if options.topologies:
        wanted = set(options.topologies)
        known = sorted({r.topology.name for r in chosen})
        missing = sorted(wanted - set(known))
        if missing:
            raise LabError(
                f"no runs of topology {', '.join(missing)} in {options.results_dir} "
                f"(recorded: {', '.join(known)})"
            )
        chosen = [r for r in chosen if r.topology.name in wanted]
    if options.since is not None:
        since = options.since if options.since.tzinfo else options.since.replace(tzinfo=UTC)
        chosen = [r for r in chosen if r.started >= since]
        if not chosen:
            raise LabError(
                f"no runs started on or after {since.isoformat()} in {options.results_dir}"
            )
    return chosen


# --- tables -----------------------------------------------------------------------------------

HEADERS = (
    "configuration", "runs", "exec/s mean", "exec/s best", "txn p50 ms", "txn p99 ms",
    "e2e p99 ms", "retries /1k txn", "dead letters", "verify",
)  # fmt: skip
NUMERIC = frozenset(HEADERS[1:-1])


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.{TIE_PRECISION}f}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def table_rows(topology: TopologyReport) -> list[list[str]]:
    best = topology.best.configuration if topology.best else None
    return [
        [
            c.label + (" (best)" if c is best else ""),
            str(len(c.runs)),
            _fmt_rate(c.mean_rate),
            _fmt_rate(c.best_rate),
            _fmt_ms(c.txn_ms("p50_ms")),
            _fmt_ms(c.txn_ms("p99_ms")),
            _fmt_ms(c.e2e_ms("p99_ms")),
            "-" if c.retries_per_1000 is None else f"{c.retries_per_1000:,.1f}",
            f"{c.dead_letters:,}",
            c.verify_text,
        ]
        for c in topology.configurations
    ]


def format_table(rows: list[list[str]], table_format: str) -> str:
    if table_format == "markdown":
        escape = [[cell.replace("|", "\\|") for cell in row] for row in rows]
        align = ["---:" if h in NUMERIC else "---" for h in HEADERS]
        lines = [HEADERS, align, *escape]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if h in NUMERIC else cell.ljust(w)
            for cell, w, h in zip(cells, widths, HEADERS, strict=True)
        ).rstrip()

    return "\n".join([line(HEADERS), line(["-" * w for w in widths]), *map(line, rows)])


def best_sentence(topology: TopologyReport) -> str:
    if topology.best is None:
        counts = Counter(r.results.verify for r in topology.runs)
        seen = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        return (
            f"no best configuration on {topology.name}: none has a run that passed "
            f"verification without one that failed (verify: {seen})"
        )
    best = topology.best.configuration
    verified = len(best.verified_runs)
    sentence = (
        f"best on {topology.name}: {best.label}: {_fmt_rate(best.verified_rate)} executions/s "
        f"(mean of {verified} verified run{'' if verified == 1 else 's'}), "
        f"txn p99 {_fmt_ms(best.verified_p99)} ms"
    )
    if topology.best.tied_with:
        others = "; ".join(c.label for c in topology.best.tied_with)
        sentence += f"; tied on executions/s with {others}, won on lower p99"
    return sentence


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    options: ReportOptions
    topologies: list[TopologyReport]
    problems: list[Problem]
    charts: list[Path] = field(default_factory=list)
    markdown: Path | None = None

    @property
    def runs(self) -> int:
        return sum(len(t.runs) for t in self.topologies)


def build(options: ReportOptions) -> Report:
    """Read, filter and group the runs; LabError when there is nothing to compare."""
    if options.table_format not in TABLE_FORMATS:
        raise LabError(f"--format {options.table_format!r} is not one of {TABLE_FORMATS}")
    scan = scan_records(options.results_dir)
    if not scan.records:
        skipped = ""
        if scan.problems:
            count = len(scan.problems)
            skipped = (
                f" ({count} file{'' if count == 1 else 's'} skipped, first {scan.problems[0]})"
            )
        raise LabError(
            f"no valid run records in {options.results_dir}{skipped}; "
            "a measured run (allocate, Locust, demo) writes one there"
        )
    records = select(scan.records, options)
    return Report(options, group_configurations(records), scan.problems)


def render_tables(report: Report, table_format: str) -> str:
    blocks = []
    for topology in report.topologies:
        rows = format_table(table_rows(topology), table_format)
        details = [f"data: {topology.data_text}", f"git: {topology.revisions}"]
        if topology.common_knobs:
            details.insert(0, f"all runs: {topology.common_knobs}")
        if table_format == "markdown":
            blocks.append(
                f"## {topology.name}\n\n{topology.description}; {'; '.join(details)}.\n\n"
                f"{rows}\n\n**{best_sentence(topology)}**"
            )
        else:
            blocks.append(
                f"{topology.name} ({topology.description})\n  {'; '.join(details)}\n\n"
                f"{rows}\n{best_sentence(topology)}"
            )
    return "\n\n".join(blocks) + "\n"


def render_markdown(report: Report) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    topologies = len(report.topologies)
    lines = [
        "# Allocation throughput report",
        "",
        f"{report.runs} runs on {topologies} topolog{'y' if topologies == 1 else 'ies'} "
        f"from `{report.options.results_dir}`, generated {now}. Runs with the same topology, "
        "strategy and knobs are averaged; *runs* counts them. The best configuration has the "
        "highest mean executions/s over runs that passed verification, among configurations "
        "with no failed verification; ties go to the lower p99 transaction latency.",
        "",
        "## Best configuration per topology",
        "",
        *(f"- {best_sentence(t)}" for t in report.topologies),
        "",
        render_tables(report, "markdown").rstrip(),
        "",
        "## Charts",
        "",
    ]
    for chart in report.charts:
        lines += [f"![{chart.stem}]({chart.name})", ""]
    if not any(c.name == "scaling.png" for c in report.charts):
        lines += [
            "No scaling chart: the node count did not vary across topologies, nor the consumer "
            "count within any topology and strategy.",
            "",
        ]
    if report.problems:
        lines += ["## Files skipped", ""]
        lines += [f"- `{p.path.name}`: {p.reason}" for p in report.problems]
        lines.append("")
    return "\n".join(lines)


def write(report: Report) -> Report:
    """Draw the charts and write report.md into the output directory."""
    out = report.options.output_dir
    out.mkdir(parents=True, exist_ok=True)
    report.charts = draw_charts(report.topologies, out)
    # A scaling chart left from an earlier report would describe other runs than this one.
    for name in CHART_FILES:
        stale = out / name
        if stale not in report.charts:
            stale.unlink(missing_ok=True)
    report.markdown = out / "report.md"
    report.markdown.write_text(render_markdown(report), encoding="utf-8")
    return report


# --- charts -----------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # The object API with an explicit Agg canvas: no pyplot, so no display is needed, no global
    # figure list grows, and nothing is left open to warn about.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained", dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _panel_heights(topologies: Sequence[TopologyReport]) -> list[float]:
    return [0.42 * len(t.configurations) + 0.75 for t in topologies]


def _panels(figure, topologies: Sequence[TopologyReport]):
    return figure.subplots(
        len(topologies), 1, sharex=True, squeeze=False, height_ratios=_panel_heights(topologies)
    )[:, 0]


def _row_labels(axis, topology: TopologyReport) -> None:
    configs = topology.configurations
    axis.set_yticks(range(len(configs)), [c.label for c in configs])
    axis.invert_yaxis()  # first configuration on top, as in the table
    best = topology.best.configuration if topology.best else None
    for tick, config in zip(axis.get_yticklabels(), configs, strict=True):
        if config is best:
            tick.set_fontweight("bold")
    axis.set_title(f"{topology.name}  ({topology.description})", loc="left", fontsize=10)


def _strategy_handles(topologies: Sequence[TopologyReport]):
    from matplotlib.patches import Patch

    used = {c.strategy for t in topologies for c in t.configurations}
    return [Patch(color=STRATEGY_COLOURS[s], label=s) for s in STRATEGIES if s in used]


def draw_throughput(topologies: Sequence[TopologyReport], path: Path) -> Path:
    from matplotlib.patches import Patch
    from matplotlib.ticker import StrMethodFormatter

    figure = _figure(11, sum(_panel_heights(topologies)) + 1.4)
    axes = _panels(figure, topologies)
    top = max(c.best_rate for t in topologies for c in t.configurations) or 1.0
    any_failed = False
    for axis, topology in zip(axes, topologies, strict=True):
        configs = topology.configurations
        means = [c.mean_rate for c in configs]
        spread = [
            [c.mean_rate - min(c.rates) for c in configs],
            [c.best_rate - c.mean_rate for c in configs],
        ]
        failed = [bool(c.verify["failed"]) for c in configs]
        any_failed = any_failed or any(failed)
        axis.barh(
            range(len(configs)),
            means,
            xerr=spread,
            color=[STRATEGY_COLOURS[c.strategy] for c in configs],
            hatch=["//" if f else None for f in failed],
            edgecolor="white",
            height=0.7,
            error_kw={"ecolor": "#333333", "capsize": 3, "elinewidth": 1},
        )
        for row, config in enumerate(configs):
            runs = len(config.runs)
            axis.text(
                config.best_rate + top * 0.01,
                row,
                f"{config.mean_rate:,.0f}/s  ({runs} run{'' if runs == 1 else 's'})",
                va="center",
                fontsize=8,
            )
        _row_labels(axis, topology)
        axis.grid(axis="x", color="#dddddd")
        axis.set_axisbelow(True)
    axes[-1].set_xlim(0, top * 1.18)  # room for the value labels right of the longest bar
    axes[-1].xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes[-1].set_xlabel(
        "executions allocated per second (bar: mean of runs; whisker: slowest to fastest run)"
    )
    handles = _strategy_handles(topologies)
    if any_failed:
        handles.append(Patch(facecolor="#999999", hatch="//", label="a run failed verification"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    figure.suptitle("Allocation throughput by topology and configuration (best in bold)")
    figure.savefig(path)
    return path


PERCENTILES = (("p50_ms", "p50", "o"), ("p90_ms", "p90", "s"), ("p99_ms", "p99", "^"))


def draw_latency(topologies: Sequence[TopologyReport], path: Path) -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, StrMethodFormatter

    figure = _figure(11, sum(_panel_heights(topologies)) + 1.4)
    axes = _panels(figure, topologies)
    for axis, topology in zip(axes, topologies, strict=True):
        for row, config in enumerate(topology.configurations):
            values = [(config.txn_ms(key), marker) for key, _, marker in PERCENTILES]
            present = [(v, m) for v, m in values if v]
            colour = STRATEGY_COLOURS[config.strategy]
            if not present:
                axis.text(0.01, row, "no latency recorded", transform=axis.get_yaxis_transform(),
                          va="center", fontsize=8, color="#666666")  # fmt: skip
                continue
            axis.plot([v for v, _ in present], [row] * len(present), color=colour, lw=1.5)
            for value, marker in present:
                axis.plot(value, row, marker=marker, color=colour, markersize=7, ls="none")
            p99 = values[-1][0]
            if p99:
                axis.annotate(f"{_fmt_ms(p99)} ms", (p99, row), xytext=(8, 0),
                              textcoords="offset points", va="center", fontsize=8)  # fmt: skip
        _row_labels(axis, topology)
        axis.set_ylim(len(topology.configurations) - 0.5, -0.5)
        axis.grid(axis="x", which="both", color="#eeeeee")
        axis.set_axisbelow(True)
    drawn = [
        value
        for t in topologies
        for c in t.configurations
        for key, _, _ in PERCENTILES
        if (value := c.txn_ms(key))
    ]
    if drawn:
        # Block transactions take hundreds of times longer than per-execution ones: only a log
        # axis shows both. The right margin leaves room for the p99 labels.
        axes[-1].set_xscale("log")
        axes[-1].set_xlim(min(drawn) / 1.6, max(drawn) * 2.4)
        axes[-1].xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[-1].xaxis.set_major_formatter(StrMethodFormatter("{x:,.4g}"))
    axes[-1].set_xlabel("transaction latency, ms (log scale; mean of each percentile over runs)")
    markers = [
        Line2D([], [], marker=m, color="#444444", ls="none", label=label)
        for _, label, m in PERCENTILES
    ]
    handles = markers + _strategy_handles(topologies)
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    figure.suptitle("Transaction latency percentiles by configuration (p99 labelled)")
    figure.savefig(path)
    return path


@dataclass
class Series:
    label: str
    strategy: str
    points: dict[int, Configuration]  # x (nodes or consumers) -> the fastest configuration


def _keep_fastest(points: dict[int, Configuration], x: int, config: Configuration) -> None:
    if x not in points or config.mean_rate > points[x].mean_rate:
        points[x] = config


def _scaling_series(topologies: Sequence[TopologyReport]) -> tuple[list[Series], list[Series]]:
    """Executions/s of each strategy's fastest configuration, against nodes and consumers.

    A configuration with a failed verification is left out: its speed is not a result.
    """
    by_nodes: dict[tuple[str, str], Series] = {}
    by_consumers: list[Series] = []
    for topology in topologies:
        trusted = [c for c in topology.configurations if not c.verify["failed"]]
        for strategy in STRATEGIES:
            mine = [c for c in trusted if c.strategy == strategy]
            if not mine:
                continue
            if topology.nodes is not None:
                # Platforms are separate lines: one embedded PostgreSQL node is no point on a
                # CockroachDB cluster's curve.
                key = (topology.platform, strategy)
                series = by_nodes.setdefault(key, Series(f"{key[0]}, {strategy}", strategy, {}))
                for config in mine:
                    _keep_fastest(series.points, topology.nodes, config)
            consumers = Series(f"{topology.name}, {strategy}", strategy, {})
            for config in mine:
                if config.consumers is not None:
                    _keep_fastest(consumers.points, config.consumers, config)
            by_consumers.append(consumers)
    nodes = list(by_nodes.values())
    if len({n for s in nodes for n in s.points}) < 2:
        nodes = []
    return nodes, [s for s in by_consumers if len(s.points) > 1]


def draw_scaling(topologies: Sequence[TopologyReport], path: Path) -> Path | None:
    """The scaling chart, or None when no run varied the node or consumer count."""
    from matplotlib.ticker import NullLocator, StrMethodFormatter

    by_nodes, by_consumers = _scaling_series(topologies)
    panels = [
        (series, what, legend_title)
        for series, what, legend_title in (
            (by_nodes, "nodes", "platform, strategy"),
            (by_consumers, "consumers", "topology, strategy"),
        )
        if series
    ]
    if not panels:
        return None
    figure = _figure(6.5 * len(panels) + 1, 5.4)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    line_styles = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
    for axis, (series_list, what, legend_title) in zip(axes, panels, strict=True):
        xs_seen: set[int] = set()
        for index, series in enumerate(series_list):
            xs = sorted(series.points)
            xs_seen.update(xs)
            style, marker = line_styles[index // len(STRATEGIES) % len(line_styles)]
            ys = [series.points[x].mean_rate for x in xs]
            axis.plot(xs, ys, label=series.label, color=STRATEGY_COLOURS[series.strategy],
                      ls=style, marker=marker)  # fmt: skip
            if what == "nodes":
                # The fastest configuration may differ from point to point: name its consumers.
                for x, y in zip(xs, ys, strict=True):
                    consumers = series.points[x].consumers
                    if consumers is not None:
                        axis.annotate(_knob_text("consumers", consumers), (x, y), xytext=(5, 4),
                                      textcoords="offset points", fontsize=7)  # fmt: skip
        ticks = sorted(xs_seen)
        if what == "consumers" and ticks[0] > 0 and ticks[-1] / ticks[0] >= 4:
            # Sweeps double consumers (4, 8, 16, 32): a log axis spaces the steps evenly.
            axis.set_xscale("log", base=2)
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_xlabel(f"{what} (count, log scale)")
        else:
            axis.set_xlabel(f"{what} (count)")
        axis.set_xticks(ticks, labels=[str(t) for t in ticks])  # the counts that were run
        axis.margins(x=0.1)  # room for the point labels at the edges
        axis.set_ylabel("executions allocated per second (mean of runs)")
        axis.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        axis.set_ylim(bottom=0, top=axis.get_ylim()[1] * 1.08)
        axis.grid(color="#dddddd")
        axis.set_title(f"throughput against {what}", fontsize=10)
        axis.legend(fontsize=8, title=legend_title, title_fontsize=8, loc="best")
    figure.suptitle(
        "Scaling: the fastest configuration of each strategy at each count "
        "(configurations that failed verification left out)",
        fontsize=11,
    )
    figure.savefig(path)
    return path


def draw_charts(topologies: Sequence[TopologyReport], out_dir: Path) -> list[Path]:
    charts = [
        draw_throughput(topologies, out_dir / "throughput.png"),
        draw_latency(topologies, out_dir / "latency.png"),
    ]
    scaling = draw_scaling(topologies, out_dir / "scaling.png")
    return charts + ([scaling] if scaling else [])

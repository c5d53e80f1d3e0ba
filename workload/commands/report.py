"""``report``: compare the recorded runs in a table and PNG charts."""

from __future__ import annotations

import sys
from pathlib import Path

from workload import report
from workload.records import DEFAULT_RESULTS_DIR
from workload.settings import Settings

ORDER = 95


def register(commands, common) -> None:
    # Files only: no connection options, because a report needs no server.
    parser = commands.add_parser(
        "report",
        help="compare recorded runs: tables, PNG charts, the best configuration per topology",
        description="Read the run records in the results directory (every measured run writes "
        "one), group runs of the same topology, strategy and knobs, and compare them: a table "
        "per topology on stdout, charts (throughput.png, latency.png, and scaling.png when the "
        "node or consumer count varied) and report.md in the output directory. The best "
        "configuration of a topology has the highest mean executions/s over runs that passed "
        "verification; a configuration with a failed verification never wins; ties go to the "
        "lower p99 transaction latency.",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        metavar="DIR",
        help=f"directory of run records (default {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write the charts and report.md (default: DIR/report inside --results)",
    )
    parser.add_argument(
        "--topology",
        action="append",
        default=[],
        metavar="NAME",
        help="only runs of this topology (repeat for several; default: every topology)",
    )
    parser.add_argument(
        "--since",
        type=report.parse_since,
        metavar="DATE",
        help="only runs started at or after this ISO-8601 date or time, UTC unless it names "
        "a zone (e.g. 2026-05-01 or 2026-05-01T14:00)",
    )
    parser.add_argument(
        "--format",
        choices=report.TABLE_FORMATS,
        default="text",
        help="how to print the tables on stdout: aligned text or Markdown (default text)",
    )
    parser.set_defaults(handler=run)


def run(args, settings: Settings) -> int:
    options = report.ReportOptions(
        results_dir=args.results,
        out_dir=args.out,
        topologies=tuple(args.topology),
        since=args.since,
        table_format=args.format,
    )
    result = report.write(report.build(options))
    for problem in result.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(report.render_tables(result, options.table_format), end="")
    written = ", ".join(p.name for p in [result.markdown, *result.charts] if p)
    print(f"\nwrote {written} to {options.output_dir}", file=sys.stderr)
    return 0

"""``verify``: the invariants across domains; exit 1 listing every violation."""

from __future__ import annotations

from workload.db import connect
from workload.endpoints import resolve
from workload.settings import Settings
from workload.verify import LIMIT, CheckResult, run_checks

ORDER = 85


def register(commands, common) -> None:
    parser = commands.add_parser(
        "verify",
        parents=[common["connection"]],
        help="check the invariants across domains (exit 1 on any violation)",
        description="Check what the run left behind: every execution captured once, fills "
        "summing to each block order's filled quantity, the last snapshot's allocations "
        "summing to it, no account above its order, every account at the block order's "
        "average price (6 places, half-even), complete block orders in the OMS outbox. Lists "
        f"each violation (up to {LIMIT} examples per check) and exits 1 if there is any.",
    )
    parser.set_defaults(handler=run)


def print_results(results: list[CheckResult]) -> bool:
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        print(f"{mark} {r.check.name:<36} {r.check.description}")
        if not r.passed:
            print(f"     {r.count} violation(s), e.g.:")
            for row in r.examples:
                print("       " + " | ".join(str(v) for v in row))
    failed = [r for r in results if not r.passed]
    print(f"verify: {'passed' if not failed else 'FAILED'} "
          f"({len(results) - len(failed)}/{len(results)} checks)")  # fmt: skip
    return not failed


def run(args, settings: Settings) -> int:
    endpoints = resolve(settings)
    with connect(endpoints.dsn) as conn:
        return 0 if print_results(run_checks(conn)) else 1

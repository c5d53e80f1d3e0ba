"""``python -m workload COMMAND``: the command line.

Options shared by several commands are defined once here, as argparse parent parsers; each
command lives in ``workload/commands/`` with a ``register(subparsers, common)`` function and a
handler ``run(args, settings) -> int``. Errors a user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from workload import __version__
from workload.commands import COMMAND_MODULES
from workload.embedded import install_signal_handlers
from workload.errors import LabError
from workload.settings import KNOBS_BY_NAME, load_settings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix, not a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def _env_note(name: str) -> str:
    return f" [env {KNOBS_BY_NAME[name].env}]"


def common_options() -> dict[str, argparse.ArgumentParser]:
    """Parent parsers: ``connection`` for every command, ``data`` for commands that seed."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("where to run")
    group.add_argument(
        "--dsn",
        help="database URL (PostgreSQL or CockroachDB); default: the embedded stack in the "
        "run directory" + _env_note("dsn"),
    )
    group.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers; default: the embedded broker" + _env_note("kafka_bootstrap"),
    )
    group.add_argument(
        "--topology",
        help="name of the topology under test, recorded with every run" + _env_note("topology"),
    )
    group.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where the embedded stack keeps its files and state (default .lab)"
        + _env_note("run_dir"),
    )
    group.add_argument(
        "--stack-outputs",
        metavar="FILE",
        help="JSON written by `pulumi stack output --json --show-secrets`; fills the database "
        "URL, Kafka bootstrap and topology [env LAB_STACK_OUTPUTS]",
    )
    group.add_argument(
        "--service-roles",
        choices=("on", "off"),
        help="on (default): each service connects as its own least-privilege SQL role "
        "(lab_seeder, lab_allocator, ...), created by `schema create`; off: every command "
        "connects as the database URL's user" + _env_note("service_roles"),
    )

    data = argparse.ArgumentParser(add_help=False)
    group = data.add_argument_group("data")
    group.add_argument(
        "--scale",
        help="data scale preset: small (seconds, for tests), medium (the demo), large "
        "(100,000 accounts, 1,000,000 positions)" + _env_note("scale"),
    )
    group.add_argument(
        "--seed", help="random seed; the same seed gives the same data" + _env_note("seed")
    )
    return {"connection": connection, "data": data}


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m workload",
        description="The CockroachDB allocation throughput lab: seed the trading domains, "
        "publish executions by CDC into Kafka, allocate them with a consumer group, and "
        "measure throughput per topology.",
        epilog="Run `python -m workload COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    common = common_options()
    for module in COMMAND_MODULES:
        module.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    install_signal_handlers()
    try:
        given = {name: getattr(args, name, None) for name in KNOBS_BY_NAME}
        given["stack_outputs"] = getattr(args, "stack_outputs", None)
        settings = load_settings(given)
        return int(args.handler(args, settings) or 0)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; stopped what this command had started", file=sys.stderr)
        return EXIT_INTERRUPTED

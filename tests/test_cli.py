"""The command line as a user meets it: help everywhere, one-line errors with exit code 2."""

import socket

import pytest

from tests.conftest import run_cli
from workload.cli import build_parser


def all_command_paths():
    """Every command and subcommand, e.g. ('schema', 'create')."""
    paths = []

    def walk(parser, prefix):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    paths.append((*prefix, name))
                    walk(sub, (*prefix, name))

    walk(build_parser(), ())
    return paths


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_every_command_has_help_with_every_option_described():
    parser = build_parser()
    assert parser.format_help()
    for path in all_command_paths():
        sub = parser
        for name in path:
            sub = next(
                a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"
            ).choices[name]
        assert sub.description, f"{' '.join(path)} has no description"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{' '.join(path)} {action.option_strings} has no help"


@pytest.mark.parametrize("path", all_command_paths(), ids=" ".join)
def test_help_runs(path):
    result = run_cli(*path, "--help", timeout=60)
    assert result.returncode == 0 and "usage: python -m workload" in result.stdout


def test_no_command_and_unknown_command():
    assert_one_line_error(run_cli(), "the following arguments are required: COMMAND")
    assert_one_line_error(run_cli("frobnicate"), "invalid choice: 'frobnicate'")


def test_bad_scale_values(tmp_path):
    run_dir = str(tmp_path / ".lab")
    assert_one_line_error(
        run_cli("seed", "--scale", "huge", "--run-dir", run_dir),
        "--scale='huge' is not a scale (choose from small, medium, large)",
    )
    assert_one_line_error(
        run_cli("seed", "--run-dir", run_dir, env={"LAB_SCALE": "gigantic"}), "LAB_SCALE="
    )
    assert_one_line_error(
        run_cli("seed", "--accounts", "0", "--run-dir", run_dir), "--accounts must be at least 1"
    )
    assert_one_line_error(
        run_cli("seed", "--accounts", "many", "--run-dir", run_dir),
        "argument --accounts: invalid int value: 'many'",
    )
    assert_one_line_error(run_cli("seed", "--seed", "x", "--run-dir", run_dir), "--seed='x'")


def test_bad_url():
    assert_one_line_error(
        run_cli("schema", "create", "--dsn", "mysql://root:pw@db/x"), "is not a PostgreSQL URL"
    )


def test_unreachable_server_names_it_without_its_password():
    port = closed_port()
    result = run_cli(
        "schema", "create", "--dsn", f"postgresql://lab:topsecret@127.0.0.1:{port}/lab"
    )
    assert_one_line_error(result, f"cannot connect to postgresql://lab:***@127.0.0.1:{port}/lab")
    assert "topsecret" not in result.stderr
    assert "python -m workload up" in result.stderr


def test_no_stack_running(tmp_path):
    assert_one_line_error(
        run_cli("schema", "create", "--run-dir", str(tmp_path / "nothing")),
        "no embedded stack running",
    )


def test_bad_stack_outputs(tmp_path):
    bad = tmp_path / "outputs.json"
    bad.write_text("nope")
    assert_one_line_error(run_cli("status", "--stack-outputs", str(bad)), "is not JSON")


@pytest.mark.integration
def test_seed_via_cli_on_the_session_stack(lab_stack, schema_dsn):
    result = run_cli("seed", "--dsn", schema_dsn, "--scale", "small", "--accounts", "50")
    assert result.returncode == 0, result.stderr
    assert "holdings.accounts" in result.stdout and " 50\n" in result.stdout
    again = run_cli("seed", "--dsn", schema_dsn, "--scale", "small")
    assert_one_line_error(again, "already seeded", "--reset")
    reset = run_cli("seed", "--dsn", schema_dsn, "--scale", "small", "--reset")
    assert reset.returncode == 0, reset.stderr

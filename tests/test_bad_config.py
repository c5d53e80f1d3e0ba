"""Bad configuration anywhere, as a user meets it: one line on stderr starting with ``error:``,
exit status 2, no traceback, no password.

- the CLI (``python -m workload ...`` as a subprocess): bad flag values, bad ``LAB_*``
  variables, bad stack-outputs files, malformed database URLs, an unreachable Kafka broker;
- the Pulumi program (under Pulumi's mocks): a bad stack config stops it with a
  ``pulumi.RunError``, which the Python language host logs as one error without a traceback;
- ``sweep``: a stack whose committed config is bad fails before any ``pulumi up``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pulumi
import pytest

from tests.conftest import REPO
from workload.errors import LabError
from workload.topology import check_stack_config

PASSWORD = "hunter2-do-not-print"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = closed_port()
DSN = f"postgresql://lab:{PASSWORD}@127.0.0.1:{PORT}/lab"


def outputs(**values) -> str:
    return json.dumps(values)


# (id, arguments, LAB_* variables, files to write {name: text}, what the line must say)
CASES = [
    # flags
    ("negative-consumers", ["allocate", "--consumers", "-1"], {}, {}, "--consumers"),
    ("zero-batch-size", ["allocate", "--batch-size", "0"], {}, {}, "--batch-size"),
    ("unknown-strategy", ["allocate", "--strategy", "fast"], {}, {}, "invalid choice: 'fast'"),
    ("bad-duration", ["allocate", "--until-idle", "soon"], {}, {}, "'soon' is not a duration"),
    ("zero-duration", ["trade", "--rate", "5", "--duration", "0"], {}, {}, "positive duration"),
    ("negative-rate", ["trade", "--rate", "-3"], {}, {}, "--rate"),
    ("bust-rate", ["trade", "--bust-rate", "0.9"], {}, {}, "--bust-rate"),
    ("negative-accounts", ["seed", "--accounts", "-5"], {}, {}, "--accounts must be at least 1"),
    ("demo-zero-consumers", ["demo", "--consumers", "0"], {}, {}, "--consumers"),
    ("sweep-consumers", ["sweep", "--consumers", "-2"], {}, {}, "--consumers"),
    ("sweep-duration", ["sweep", "--duration", "1x"], {}, {}, "'1x' is not a duration"),
    ("sweep-unknown-stack", ["sweep", "--stacks", "nosuch"], {}, {}, "no Pulumi.<name>.yaml"),
    ("unknown-command", ["frobnicate"], {}, {}, "invalid choice: 'frobnicate'"),
    # LAB_* variables
    ("LAB_SEED", ["status"], {"LAB_SEED": "abc"}, {}, "LAB_SEED='abc' is not an integer"),
    ("LAB_SCALE", ["seed"], {"LAB_SCALE": "huge"}, {}, "LAB_SCALE='huge' is not a scale"),
    ("LAB_KAFKA_BOOTSTRAP", ["status"], {"LAB_KAFKA_BOOTSTRAP": "nohost"}, {}, "not host:port"),
    ("LAB_DSN", ["status"], {"LAB_DSN": f"mysql://root:{PASSWORD}@db/x"}, {},
     "is not a PostgreSQL URL"),
    ("LAB_TOPOLOGY", ["status"], {"LAB_TOPOLOGY": " "}, {}, "LAB_TOPOLOGY=' ' is empty"),
    ("LAB_RUN_DIR", ["status"], {"LAB_RUN_DIR": " "}, {}, "LAB_RUN_DIR=' ' is empty"),
    # stack outputs files
    ("outputs-missing", ["status"], {"LAB_STACK_OUTPUTS": "{dir}/absent.json"}, {},
     "does not exist"),
    ("outputs-not-json", ["status"], {"LAB_STACK_OUTPUTS": "{dir}/o.json"}, {"o.json": "sqlUrl:"},
     "is not JSON"),
    ("outputs-a-list", ["status"], {"LAB_STACK_OUTPUTS": "{dir}/o.json"}, {"o.json": "[1, 2]"},
     "must hold a JSON object"),
    ("outputs-no-sql-url", ["schema", "create"], {"LAB_STACK_OUTPUTS": "{dir}/o.json"},
     {"o.json": outputs(kafkaBootstrap="127.0.0.1:9092")}, "has no sqlUrl"),
    ("outputs-secret-not-shown", ["status"], {"LAB_STACK_OUTPUTS": "{dir}/o.json"},
     {"o.json": outputs(sqlUrl="[secret]")}, "--show-secrets"),
    ("outputs-sql-url-a-number", ["status", "--stack-outputs", "{dir}/o.json"], {},
     {"o.json": outputs(sqlUrl=5)}, "output sqlUrl='5' is not a PostgreSQL URL"),
    ("outputs-bootstrap-a-map", ["status", "--stack-outputs", "{dir}/o.json"], {},
     {"o.json": outputs(sqlUrl=DSN, kafkaBootstrap={"a": 1})}, "which is not host:port"),
    # database URLs (each with a password that must not appear)
    ("dsn-scheme", ["schema", "create", "--dsn", f"mysql://root:{PASSWORD}@db/x"], {}, {},
     "is not a PostgreSQL URL"),
    ("dsn-port", ["schema", "create", "--dsn", DSN.replace(str(PORT), "notaport")], {}, {},
     'invalid integer value "notaport"'),
    ("dsn-unparsable", ["schema", "create", "--dsn", f"postgresql://lab:{PASSWORD}@[bad/lab"],
     {}, {}, "bad database URL postgresql://lab:***@"),
    ("dsn-unknown-option", ["schema", "create", "--dsn", f"host=h password={PASSWORD} bogus=1"],
     {}, {}, 'invalid connection option "bogus"'),
    ("dsn-unreachable", ["schema", "create", "--dsn", DSN], {}, {},
     f"cannot connect to postgresql://lab:***@127.0.0.1:{PORT}/lab"),
    # Kafka
    ("kafka-unreachable",
     ["cdc", "start", "--dsn", DSN, "--kafka-bootstrap", f"127.0.0.1:{PORT}",
      "--kafka-timeout", "1"], {}, {}, f"cannot reach the Kafka broker at 127.0.0.1:{PORT}"),
    ("kafka-missing", ["allocate", "--dsn", DSN], {}, {}, "no Kafka bootstrap"),
]  # fmt: skip


def run_case(case, base: Path) -> subprocess.CompletedProcess:
    name, args, env, files, _ = case
    folder = base / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)
    args = [a.replace("{dir}", str(folder)) for a in args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    full_env.update({k: v.replace("{dir}", str(folder)) for k, v in env.items()})
    full_env["PYTHONPATH"] = str(REPO)
    if "LAB_RUN_DIR" not in env:  # no embedded stack to find, and nothing written in the repo
        full_env["LAB_RUN_DIR"] = str(folder / ".lab")
    return subprocess.run(
        [sys.executable, "-m", "workload", *args],
        capture_output=True, text=True, timeout=120, env=full_env, cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """Every case run once, four at a time: each is a Python start-up, mostly waiting."""
    base = tmp_path_factory.mktemp("bad-config")
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda case: run_case(case, base), CASES)
        return base, {case[0]: result for case, result in zip(CASES, done, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_one_error_line_exit_2_no_traceback_no_password(results, case):
    base, by_name = results
    result = by_name[case[0]]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case[4] in lines[0], lines[0]
    assert PASSWORD not in result.stdout + result.stderr
    assert not (base / case[0] / ".lab").exists()  # no embedded stack was started


# -- the Pulumi program ---------------------------------------------------------------------


def test_a_bad_stack_config_stops_the_pulumi_program_with_a_run_error():
    """``pulumi.RunError`` is the program's clean stop: pulumi-language-python-exec logs
    ``str(e)`` as one error and exits 1, where any other exception is logged with its whole
    traceback. Every bad key is in the one message."""
    from infra.config import ConfigError
    from tests.infra.infra_harness import run_stack

    with pytest.raises(pulumi.RunError) as failure:
        run_stack("docker-3", overrides={"crdblab:nodes": "0", "crdblab:kafkaBrokers": "0"})
    assert not isinstance(failure.value, ConfigError)
    message = str(failure.value)
    assert message.startswith("The stack configuration is invalid:")
    assert "crdblab:nodes is 0" in message and "crdblab:kafkaBrokers" in message


# -- sweep: the stack config checked before pulumi up ----------------------------------------


def stack_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_every_committed_stack_config_passes_the_check():
    for path in REPO.glob("Pulumi.*.yaml"):
        check_stack_config(path.name[len("Pulumi.") : -len(".yaml")])


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("config:\n  crdblab:platform: docker\n  crdblab:nodes: 0\n", "crdblab:nodes is 0"),
        ("config:\n  crdblab:platform: docker\n  crdblab:nodes: three\n", "crdblab:nodes"),
        ("config:\n  crdblab:platform: swarm\n", "crdblab:platform is 'swarm'"),
        ("config:\n  crdblab:nodes: 3\n", "crdblab:platform"),
        ("config: [\n", "cannot read Pulumi.bad.yaml"),
        ("encryptionsalt: x\n", "has no `config:` mapping"),
    ],
    ids=["value", "type", "platform", "missing-platform", "yaml", "no-config"],
)
def test_a_bad_stack_config_is_one_line(tmp_path, text, fragment):
    stack_file(tmp_path, "bad", text)
    with pytest.raises(LabError) as failure:
        check_stack_config("bad", tmp_path)
    message = str(failure.value)
    assert message.startswith("stack bad (Pulumi.bad.yaml): ") or "Pulumi.bad.yaml" in message
    assert fragment in message and "\n" not in message


def test_a_secret_counts_as_set_without_being_decrypted(tmp_path):
    stack_file(tmp_path, "secure", """\
        config:
          crdblab:platform: docker
          crdblab:nodes: 1
          crdblab:secure: true
          crdblab:sqlPassword:
            secure: v1:AAAABBBBCCCC
        """)  # fmt: skip
    check_stack_config("secure", tmp_path)


def test_sweep_stops_before_pulumi_up_on_a_bad_stack_config(tmp_path):
    """The real CLI, with only the stack files' folder moved to tmp_path: a docker stack with
    0 nodes fails the sweep at once, with one line naming the key, and no Pulumi CLI run."""
    stack_file(tmp_path, "broken", "config:\n  crdblab:platform: docker\n  crdblab:nodes: 0\n")
    program = (
        "import sys; from pathlib import Path; import workload.topology as t; "
        f"t.stack_file = lambda name, work_dir=None: Path({str(tmp_path)!r}) / "
        "f'Pulumi.{name}.yaml'; from workload.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update(PYTHONPATH=str(REPO), PATH="/nonexistent")  # no pulumi on PATH either
    result = subprocess.run(
        [sys.executable, "-c", program, "sweep", "--stacks", "broken",
         "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stack broken (Pulumi.broken.yaml)")
    assert "crdblab:nodes is 0" in lines[0] and "Traceback" not in result.stderr

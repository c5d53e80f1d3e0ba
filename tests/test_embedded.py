"""The embedded stack's lifecycle: up, reuse, status, crash recovery, down, nothing left."""

import json
import os
import signal
import socket
import time

import psutil
import psycopg
import pytest

from tests.conftest import run_cli
from workload.embedded import EmbeddedStack, StackState

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def processes_under(run_dir) -> list[psutil.Process]:
    """Every live process whose command line or working directory is inside ``run_dir``."""
    root = str(run_dir.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(root in part for part in proc.info["cmdline"] or []) or proc.cwd().startswith(
                root
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still running")


def test_up_status_down_via_the_cli_leaves_no_process(stack_dir):
    run_dir = stack_dir
    up = run_cli("up", "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stderr
    assert "database URL     postgresql://postgres@127.0.0.1:" in up.stdout
    assert "Kafka bootstrap  127.0.0.1:" in up.stdout
    try:
        again = run_cli("up", "--run-dir", str(run_dir))
        assert again.returncode == 0 and "already running" in again.stdout
        assert again.stdout.splitlines()[1:3] == up.stdout.splitlines()[1:3]

        status = run_cli("status", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" running ") == 2

        # Another command finds the stack through the run directory by itself.
        created = run_cli("schema", "create", "--run-dir", str(run_dir))
        assert created.returncode == 0, created.stderr
        assert "schema ready on PostgreSQL" in created.stdout
        assert processes_under(run_dir)
    finally:
        down = run_cli("down", "--run-dir", str(run_dir))
    assert down.returncode == 0 and "stopped kafka, postgres" in down.stdout
    time.sleep(0.5)
    assert processes_under(run_dir) == []
    status = run_cli("status", "--run-dir", str(run_dir))
    assert status.returncode == 1 and status.stdout.count(" stopped ") == 2
    assert run_cli("down", "--run-dir", str(run_dir)).stdout.startswith("nothing was running")


def test_crashed_servers_are_reported_and_restarted_on_a_new_port(stack_dir):
    run_dir = stack_dir
    stack = EmbeddedStack(run_dir)
    first = stack.up()
    try:
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE survivor (x int)")
            conn.execute("INSERT INTO survivor VALUES (42)")
        records = StackState(run_dir).load()
        pg_port = records["postgres"].port
        os.kill(records["postgres"].pid, signal.SIGKILL)
        os.kill(records["kafka"].pid, signal.SIGKILL)
        wait_gone(records["postgres"].pid)
        wait_gone(records["kafka"].pid)

        status = run_cli("status", "--run-dir", str(run_dir))
        assert status.returncode == 1
        assert status.stdout.count(" crashed ") == 2 and "`python -m workload up` restarts it" in (
            status.stdout
        )

        # Someone else takes PostgreSQL's old port meanwhile.
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", pg_port))
            squatter.listen()
        except OSError:
            pass  # the port lingers in the kernel: it is taken all the same
        try:
            second = EmbeddedStack(run_dir).up()
        finally:
            squatter.close()
        assert sorted(second.started) == ["kafka", "postgres"]
        assert second.dsn != first.dsn
        with psycopg.connect(second.dsn) as conn:
            assert conn.execute("SELECT x FROM survivor").fetchone() == (42,)
    finally:
        EmbeddedStack(run_dir).down()
    assert processes_under(run_dir) == []


def test_a_lost_state_file_is_recovered_by_adopting_the_running_servers(stack_dir):
    run_dir = stack_dir
    first = EmbeddedStack(run_dir).up()
    try:
        (run_dir / "stack.json").unlink()
        again = EmbeddedStack(run_dir).up()
        assert again.started == []
        assert (again.dsn, again.kafka_bootstrap) == (first.dsn, first.kafka_bootstrap)
        (run_dir / "stack.json").unlink()
    finally:
        stopped = EmbeddedStack(run_dir).down()
    assert stopped == ["kafka", "postgres"]
    assert processes_under(run_dir) == []


def test_a_stale_state_file_with_reused_pids_is_not_trusted(stack_dir):
    run_dir = stack_dir
    run_dir.mkdir()
    # pid 1 is alive but is not our server: the recorded start time gives it away.
    fake = {"name": "kafka", "pid": 1, "create_time": 12345.0, "port": 1, "url": "x", "log": None}
    (run_dir / "stack.json").write_text(json.dumps({"processes": {"kafka": fake}}))
    stack = EmbeddedStack(run_dir)
    assert stack.status()[1].state == "crashed"
    assert stack.find() is None
    try:
        info = stack.up()
        assert "kafka" in info.started
    finally:
        stack.down()
    assert psutil.pid_exists(1)


def test_the_context_manager_stops_only_what_it_started(stack_dir):
    run_dir = stack_dir
    outer = EmbeddedStack(run_dir)
    outer.up()
    try:
        with EmbeddedStack(run_dir) as info:
            assert info.started == []
        assert EmbeddedStack(run_dir).find() is not None
    finally:
        outer.down()
    with EmbeddedStack(run_dir) as info:
        assert sorted(info.started) == ["kafka", "postgres"]
    assert EmbeddedStack(run_dir).find() is None
    assert processes_under(run_dir) == []


def test_ctrl_c_during_a_command_stops_what_it_started(stack_dir):
    """SIGINT to `demo` half-way through: the stack it started is stopped, exit code 130."""
    import subprocess
    import sys

    from tests.conftest import REPO

    run_dir = stack_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workload", "demo", "--run-dir", str(run_dir), "--scale", "large"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=run_dir.parent,  # the demo writes its run records under its working directory
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and EmbeddedStack(run_dir).find() is None:
        time.sleep(0.1)
    assert EmbeddedStack(run_dir).find() is not None, "demo never started the stack"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert processes_under(run_dir) == []

"""The relay as a background process of the stack: started by ``cdc start``, listed by
``status``, stopped by ``cdc stop`` and by ``down``.

The relay registers itself in ``<run_dir>/stack.json`` (name ``cdc-relay``) when it starts,
in the foreground or the background alike, and removes its record when it stops cleanly; a
record whose process died shows as crashed until the next start replaces it. It writes its
counters to ``<run_dir>/cdc/relay.json`` and, in the background, its log to
``<run_dir>/cdc/relay.log``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import workload
from workload.embedded import EmbeddedStack, ProcessRecord, _record_for, keep_child, tail, terminate
from workload.errors import LabError

RELAY_PROCESS = "cdc-relay"
START_TIMEOUT = 30.0


def cdc_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "cdc"


def status_path(run_dir: Path) -> Path:
    return cdc_dir(run_dir) / "relay.json"


def log_path(run_dir: Path) -> Path:
    return cdc_dir(run_dir) / "relay.log"


def read_status(run_dir: Path) -> dict | None:
    """The relay's last written counters (see ``Relay.metrics``), or None if it never ran."""
    try:
        return json.loads(status_path(run_dir).read_text())
    except (OSError, ValueError):
        return None


def relay_record(run_dir: Path) -> ProcessRecord | None:
    return EmbeddedStack(run_dir).state.load().get(RELAY_PROCESS)


def running_relay(run_dir: Path) -> ProcessRecord | None:
    record = relay_record(run_dir)
    return record if record is not None and record.is_running() else None


def register_self(run_dir: Path, slot: str, topic: str) -> None:
    """Record this process as the stack's relay; a LabError if another one runs."""
    other = running_relay(run_dir)
    if other is not None and other.pid != os.getpid():
        raise LabError(
            f"a CDC relay already runs for {run_dir} (pid {other.pid}); stop it with "
            "`python -m workload cdc stop`"
        )
    record = _record_for(
        RELAY_PROCESS,
        os.getpid(),
        url=f"slot {slot} -> topic {topic}",
        log=str(log_path(run_dir)),
        extra={"status": str(status_path(run_dir))},
    )
    EmbeddedStack(run_dir).register_process(record)


def unregister_self(run_dir: Path) -> None:
    record = relay_record(run_dir)
    if record is not None and record.pid == os.getpid():
        # `down` holds the stack while it stops us, and drops the record itself.
        EmbeddedStack(run_dir).unregister_process(RELAY_PROCESS, unless_busy=True)


def spawn(run_dir: Path, argv: list[str], env_overrides: dict[str, str | None]) -> ProcessRecord:
    """Start ``python -m workload cdc relay ARGV`` in the background and wait until it relays.

    ``env_overrides`` sets (or, with None, removes) environment variables of the child: the
    database URL travels there rather than on a command line anyone can list.
    """
    run_dir = Path(run_dir).resolve()
    cdc_dir(run_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for name, value in env_overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    package_root = str(Path(workload.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "workload", "cdc", "relay", "--run-dir", str(run_dir), *argv]
    with open(log_path(run_dir), "ab") as log:
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=run_dir, start_new_session=True,
        )  # fmt: skip
    keep_child(child)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        status = read_status(run_dir)
        if status and status.get("pid") == child.pid and status.get("state") == "running":
            record = relay_record(run_dir)
            if record is not None and record.pid == child.pid:
                return record
        if child.poll() is not None:
            raise LabError(
                f"the CDC relay exited with status {child.returncode}; its log "
                f"{log_path(run_dir)} ends with:\n{tail(log_path(run_dir), 8)}"
            )
        time.sleep(0.05)
    child.terminate()
    raise LabError(
        f"the CDC relay did not start within {START_TIMEOUT:.0f} s; its log "
        f"{log_path(run_dir)} ends with:\n{tail(log_path(run_dir), 8)}"
    )


def stop(run_dir: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the relay (it finishes its batch, waits for Kafka, advances the slot), SIGKILL
    after ``timeout``; True if one was running."""
    record = relay_record(run_dir)
    if record is None:
        return False
    stopped = terminate(record, timeout=timeout)
    EmbeddedStack(run_dir).unregister_process(RELAY_PROCESS)
    return stopped

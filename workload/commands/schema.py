"""``schema create|drop``: the six domains' tables."""

from __future__ import annotations

from workload import roles, schema
from workload.db import connect
from workload.dialect import detect
from workload.endpoints import resolve
from workload.settings import Settings

ORDER = 20


def register(commands, common) -> None:
    parser = commands.add_parser(
        "schema",
        help="create or drop the six domains' tables",
        description="Manage the kit's schema: one schema per domain on PostgreSQL, one "
        "database per domain on CockroachDB (reference, market, holdings, orders, trades, "
        "allocations).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    create = actions.add_parser(
        "create",
        parents=[common["connection"]],
        help="create every missing domain, table and index (idempotent)",
        description="Create every missing domain, table and index. Safe to run again.",
    )
    create.set_defaults(handler=run_create)
    drop = actions.add_parser(
        "drop",
        parents=[common["connection"]],
        help="drop the kit's domains with all their data (only the kit's own)",
        description="Drop the domains this kit created (marked by a comment) with all their "
        "data. Schemas or databases of the same name that the kit did not create are left "
        "alone.",
    )
    drop.set_defaults(handler=run_drop)


def run_create(args, settings: Settings) -> int:
    endpoints = resolve(settings)
    with connect(endpoints.dsn) as conn:
        dialect = detect(conn)
        count = schema.create(conn, dialect, service_roles=settings.service_roles)
    print(
        f"schema ready on {dialect.server_name}: {len(schema.DOMAINS)} domains, "
        f"{len(schema.TABLES)} tables ({count} statements, all idempotent)"
        + (f"; service roles {', '.join(roles.role_names())}" if settings.service_roles else "")
    )
    return 0


def run_drop(args, settings: Settings) -> int:
    endpoints = resolve(settings)
    with connect(endpoints.dsn) as conn:
        dropped = schema.drop(conn, detect(conn))
    print(f"dropped {', '.join(dropped)}" if dropped else "none of the kit's domains existed")
    return 0

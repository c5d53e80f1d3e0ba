"""What the dialect renders for CockroachDB and PostgreSQL (CockroachDB cannot run here)."""

import pytest

from workload import schema
from workload.dialect import COCKROACHDB, OWNER_MARK, POSTGRESQL, Dialect

CRDB = Dialect(COCKROACHDB, "CockroachDB CCL v25.2.0")
PG = Dialect(POSTGRESQL, "PostgreSQL 18.6")


def render(conn_free_statements):
    # sql.Composed renders without a connection when given a context of None for identifiers
    return [s.as_string(None) for s in conn_free_statements]


def test_domains_are_databases_on_crdb_and_schemas_on_postgres():
    assert render(CRDB.create_domain("trades")) == [
        'CREATE DATABASE IF NOT EXISTS "trades"',
        f"COMMENT ON DATABASE \"trades\" IS '{OWNER_MARK}'",
    ]
    assert render(PG.create_domain("trades"))[0] == 'CREATE SCHEMA IF NOT EXISTS "trades"'
    assert CRDB.drop_domain("trades").as_string(None) == 'DROP DATABASE IF EXISTS "trades" CASCADE'
    assert PG.drop_domain("trades").as_string(None) == 'DROP SCHEMA IF EXISTS "trades" CASCADE'


def test_time_ordered_indexes_are_hash_sharded_only_on_crdb():
    executions = schema.table("trades.executions")
    crdb = render(CRDB.create_table(executions))
    pg = render(PG.create_table(executions))
    assert (
        'CREATE INDEX IF NOT EXISTS "executions_executed_at_idx" ON "trades"."executions" '
        '("executed_at") USING HASH'
    ) in crdb
    assert not any("USING HASH" in s for s in pg)
    # the non-time-ordered unique index is plain on both
    plain = (
        'CREATE UNIQUE INDEX IF NOT EXISTS "executions_block_seq_key" '
        'ON "trades"."executions" ("block_order_id", "seq")'
    )
    assert plain in crdb and plain in pg


def test_no_sequential_keys_anywhere():
    for t in schema.TABLES:
        ddl = " ".join(t.columns).upper()
        assert "SERIAL" not in ddl and "NEXTVAL" not in ddl and "IDENTITY" not in ddl, t.qualified


def test_every_table_belongs_to_one_of_the_six_domains():
    assert schema.DOMAINS == ("reference", "market", "holdings", "orders", "trades", "allocations")
    assert {t.domain for t in schema.TABLES} == set(schema.DOMAINS)


def test_foreign_keys_stay_inside_their_domain():
    for t in schema.TABLES:
        for c in t.constraints:
            if "REFERENCES" in c:
                target = c.split("REFERENCES", 1)[1].split()[0]
                assert target.startswith(t.domain + "."), (t.qualified, c)


def test_upsert():
    cols, key = ("block_order_id", "account_id", "quantity"), ("block_order_id", "account_id")
    assert CRDB.upsert("allocations.account_allocations", cols, key).as_string(None) == (
        'UPSERT INTO "allocations"."account_allocations" '
        '("block_order_id", "account_id", "quantity") VALUES (%s, %s, %s)'
    )
    assert PG.upsert("allocations.account_allocations", cols, key).as_string(None) == (
        'INSERT INTO "allocations"."account_allocations" '
        '("block_order_id", "account_id", "quantity") VALUES (%s, %s, %s) '
        'ON CONFLICT ("block_order_id", "account_id") '
        'DO UPDATE SET "quantity" = EXCLUDED."quantity"'
    )
    assert (
        PG.upsert("allocations.fills", ("execution_id",), ("execution_id",))
        .as_string(None)
        .endswith("DO NOTHING")
    )


def test_follower_reads_only_on_crdb():
    assert CRDB.stale_read().as_string(None) == " AS OF SYSTEM TIME follower_read_timestamp()"
    assert PG.stale_read().as_string(None) == ""


@pytest.mark.parametrize("dialect", [CRDB, PG])
def test_whole_schema_renders(dialect):
    statements = render(schema.render_create(dialect))
    creates = [s for s in statements if s.startswith("CREATE TABLE")]
    assert len(creates) == len(schema.TABLES)
    assert all("IF NOT EXISTS" in s for s in statements if s.startswith("CREATE"))


def test_ddl_is_transactional_only_on_postgres():
    assert PG.transactional_ddl and not CRDB.transactional_ddl


def test_upsert_from_arrays():
    cols, types = ("block_order_id", "account_id", "quantity"), ("uuid", "uuid", "int8")
    key = cols[:2]
    assert CRDB.upsert_arrays("allocations.account_allocations", cols, types, key).as_string(
        None
    ) == (
        'UPSERT INTO "allocations"."account_allocations" ("block_order_id", "account_id", '
        '"quantity") SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::int8[])'
    )
    assert PG.upsert_arrays("allocations.account_allocations", cols, types, key).as_string(
        None
    ) == (
        'INSERT INTO "allocations"."account_allocations" ("block_order_id", "account_id", '
        '"quantity") SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::int8[]) '
        'ON CONFLICT ("block_order_id", "account_id") DO UPDATE SET "quantity" = '
        'EXCLUDED."quantity"'
    )


def test_node_count():
    assert "crdb_internal.gossip_nodes" in CRDB.node_count_query().as_string(None)
    assert PG.node_count_query().as_string(None) == "SELECT 1"

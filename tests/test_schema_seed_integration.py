"""Schema and seeding against the real embedded PostgreSQL."""

from decimal import Decimal

import psycopg
import pytest

from workload import schema, seed
from workload.dialect import detect
from workload.errors import LabError

pytestmark = pytest.mark.integration


def test_schema_create_is_idempotent(fresh_dsn):
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        dialect = detect(conn)
        assert dialect.kind == "postgresql"
        schema.create(conn, dialect)
        schema.create(conn, dialect)
        tables = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s)",
            (list(schema.DOMAINS),),
        ).fetchall()
    assert sorted(t[0] for t in tables) == sorted(t.qualified for t in schema.TABLES)


def test_seed_writes_the_generated_rows(schema_dsn):
    scale = seed.scale_for("small")
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        report = seed.seed(conn, scale, 11)
        counts = schema.row_counts(conn)
        weight_sums = conn.execute(
            "SELECT model_id, sum(weight) FROM holdings.model_weights GROUP BY model_id"
        ).fetchall()
        bad_bars = conn.execute(
            "SELECT count(*) FROM market.daily_prices WHERE NOT "
            "(low > 0 AND low <= open AND low <= close AND high >= open AND high >= close)"
        ).fetchone()[0]
        orphan_positions = conn.execute(
            "SELECT count(*) FROM holdings.positions p LEFT JOIN reference.securities s "
            "USING (security_id) WHERE s.security_id IS NULL"
        ).fetchone()[0]
    assert counts["reference.securities"] == scale.securities
    assert counts["market.daily_prices"] == scale.securities * scale.days
    assert counts["holdings.accounts"] == scale.accounts
    assert counts["holdings.models"] == scale.models
    assert counts["holdings.positions"] == report.rows["holdings.positions"] > scale.accounts
    assert all(total == Decimal(1) for _, total in weight_sums)
    assert len(weight_sums) == scale.models
    assert bad_bars == 0
    assert orphan_positions == 0


def test_same_seed_gives_the_same_rows_in_two_databases(new_database):
    digests = []
    for dsn in (new_database(), new_database()):
        with psycopg.connect(dsn, autocommit=True) as conn:
            schema.create(conn, detect(conn))
            seed.seed(conn, seed.scale_for("small"), 99)
            digests.append(
                conn.execute(
                    "SELECT md5(string_agg(account_id::text || security_id::text || quantity, ',' "
                    "ORDER BY account_id, security_id)) FROM holdings.positions"
                ).fetchone()[0]
            )
    assert digests[0] == digests[1]


def test_seeding_twice_is_refused_and_reset_replaces(seeded_dsn):
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        with pytest.raises(LabError, match="already seeded"):
            seed.seed(conn, seed.scale_for("small"), 7)
        seed.reset(conn)
        seed.seed(conn, seed.scale_for("small", accounts=10), 7)
        assert schema.row_counts(conn)["holdings.accounts"] == 10


def test_seeding_without_schema_says_what_to_do(fresh_dsn):
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        with pytest.raises(LabError, match="schema create"):
            seed.seed(conn, seed.scale_for("small"), 1)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE holdings.positions SET quantity = -1",
        "UPDATE holdings.accounts SET cash = -0.01",
        "UPDATE market.daily_prices SET low = high + 1",
        "UPDATE market.daily_prices SET volume = 0",
        "INSERT INTO holdings.positions VALUES (gen_random_uuid(), gen_random_uuid(), 5)",
        "INSERT INTO reference.securities (security_id, ticker, name, sector, asset_class) "
        "SELECT gen_random_uuid(), ticker, name, sector, asset_class FROM reference.securities",
    ],
)
def test_constraints_refuse_bad_rows(seeded_dsn, statement):
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.IntegrityError):
            conn.execute(statement)


def test_drop_removes_only_the_kits_domains(schema_dsn):
    with psycopg.connect(schema_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bystander")
        conn.execute("CREATE TABLE bystander.keep (x int)")
        dialect = detect(conn)
        assert schema.drop(conn, dialect) == sorted(schema.DOMAINS)
        left = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
        assert "bystander" in left and not left & set(schema.DOMAINS)
        assert schema.drop(conn, dialect) == []


def test_a_foreign_schema_of_the_same_name_is_never_touched(fresh_dsn):
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA trades")
        conn.execute("CREATE TABLE trades.theirs (x int)")
        dialect = detect(conn)
        with pytest.raises(LabError, match="not created by this kit"):
            schema.create(conn, dialect)
        assert schema.drop(conn, dialect) == []
        assert conn.execute("SELECT count(*) FROM trades.theirs").fetchone()[0] == 0

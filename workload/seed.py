"""Seed the reference, market and holdings domains, deterministically for a given seed.

Generation is vectorised with numpy and written with COPY, never row by row. Every domain
draws from its own random stream (``numpy.random.default_rng([seed, domain])``), so changing
the size of one domain does not reshuffle another, and the same seed gives the same rows,
UUIDs included.

What is generated:

- reference: N securities with unique tickers, names, sector and asset class;
- market: D business days of daily bars per security from a geometric Brownian motion (each
  security its own drift and volatility); open gaps from the previous close; high and low
  bracket open and close (rounded outward to the cent fraction so the bracket survives
  rounding); volume > 0;
- holdings: managers, models (target weights over K securities that sum to exactly 1),
  accounts (cash) assigned to a (manager, model) rebalance group, and positions that have
  drifted from the model's targets, valued at the first day's close, plus some holdings
  outside the model (to be sold at the next rebalance).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import psycopg
from psycopg import sql

from workload.errors import LabError

SECTORS = (
    "Communication Services", "Consumer Discretionary", "Consumer Staples", "Energy",
    "Financials", "Health Care", "Industrials", "Information Technology", "Materials",
    "Real Estate", "Utilities",
)  # fmt: skip
ASSET_CLASSES = ("common stock", "ETF", "ADR")
NAME_SUFFIXES = ("Holdings", "Group", "Corp", "Industries", "Systems", "Partners", "Labs")
WEIGHT_UNITS = 10**8  # weights are NUMERIC(9,8): whole hundred-millionths
DEFAULT_START = date(2026, 1, 5)  # a Monday


@dataclass(frozen=True)
class Scale:
    """How much to seed. Presets below; every field can be overridden by a flag."""

    securities: int
    days: int
    managers: int
    models_per_manager: int
    accounts: int
    positions_per_account: int  # securities per model; accounts hold about this many
    start_date: date = DEFAULT_START

    def validate(self) -> Scale:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 1:
                raise LabError(f"--{f.name.replace('_', '-')} must be at least 1 (got {value})")
        if self.positions_per_account > self.securities:
            raise LabError(
                f"--positions-per-account ({self.positions_per_account}) cannot exceed "
                f"--securities ({self.securities}): a model holds distinct securities"
            )
        return self

    @property
    def models(self) -> int:
        return self.managers * self.models_per_manager


PRESETS: dict[str, Scale] = {
    "small": Scale(securities=40, days=20, managers=2, models_per_manager=2, accounts=200,
                   positions_per_account=8),
    # The demo's scale: big enough that every strategy has real work, small enough that the
    # slowest (one transaction per execution) finishes in about a minute on a laptop.
    "medium": Scale(securities=200, days=60, managers=4, models_per_manager=3, accounts=1_000,
                    positions_per_account=10),
    "large": Scale(securities=1_000, days=250, managers=20, models_per_manager=10,
                   accounts=100_000, positions_per_account=10),
}  # fmt: skip

SCALE_FIELDS = tuple(f.name for f in dataclasses.fields(Scale) if f.name != "start_date")


def scale_for(name: str, **overrides) -> Scale:
    """The preset ``name`` with any non-None overrides applied, validated."""
    if name not in PRESETS:
        raise LabError(f"unknown scale {name!r}; choose from {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **changes).validate()


def business_days(start: date, count: int) -> list[date]:
    days, d = [], start
    while len(days) < count:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


# --------------------------------------------------------------------------------------------
# Generation (pure: arrays in, arrays out)

_DOMAIN_STREAMS = {"reference": 1, "market": 2, "holdings": 3}


def _rng(seed: int, domain: str) -> np.random.Generator:
    return np.random.default_rng([seed, _DOMAIN_STREAMS[domain]])


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    """Deterministic version-4 UUID strings drawn from ``rng``."""
    raw = bytearray(rng.bytes(16 * n))
    out = []
    for i in range(n):
        out.append(str(uuid.UUID(bytes=bytes(raw[16 * i : 16 * i + 16]), version=4)))
    return out


def _tickers(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct tickers of 3-5 letters (shorter first), in a seeded order."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    chosen: list[str] = []
    seen: set[str] = set()
    length = 3
    while len(chosen) < n:
        draw = rng.integers(0, 26, size=(max(64, 2 * (n - len(chosen))), length))
        for row in letters[draw]:
            ticker = "".join(row)
            if ticker not in seen:
                seen.add(ticker)
                chosen.append(ticker)
                if len(chosen) == n:
                    break
        if len(seen) > 0.5 * 26**length:
            length += 1
    return chosen


@dataclass
class Securities:
    ids: list[str]
    tickers: list[str]
    names: list[str]
    sectors: list[str]
    asset_classes: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def generate_securities(scale: Scale, seed: int) -> Securities:
    rng = _rng(seed, "reference")
    n = scale.securities
    ids = _uuids(rng, n)
    tickers = _tickers(rng, n)
    suffix = rng.integers(0, len(NAME_SUFFIXES), n)
    sector = rng.integers(0, len(SECTORS), n)
    asset = rng.choice(len(ASSET_CLASSES), n, p=[0.85, 0.1, 0.05])
    return Securities(
        ids=ids,
        tickers=tickers,
        names=[f"{t.title()} {NAME_SUFFIXES[s]}" for t, s in zip(tickers, suffix, strict=True)],
        sectors=[SECTORS[i] for i in sector],
        asset_classes=[ASSET_CLASSES[i] for i in asset],
    )


@dataclass
class Prices:
    """Daily bars as (securities x days) arrays of prices in whole 1/10000ths (exact)."""

    days: list[date]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


def generate_prices(scale: Scale, seed: int) -> Prices:
    rng = _rng(seed, "market")
    n, d = scale.securities, scale.days
    start = np.exp(rng.uniform(np.log(5.0), np.log(800.0), n))  # $5 to $800, log-uniform
    mu = rng.normal(0.0003, 0.0005, n)  # daily drift
    sigma = rng.uniform(0.008, 0.035, n)  # daily volatility
    # GBM in log space: overnight gap then intraday move, both parts of the daily return.
    gap = rng.normal(0, 1, (n, d)) * (sigma[:, None] * 0.3)
    intraday = rng.normal(0, 1, (n, d)) * (sigma[:, None] * 0.95)
    drift = (mu - 0.5 * sigma**2)[:, None]
    log_open = np.empty((n, d))
    log_close = np.empty((n, d))
    prev = np.log(start)
    for day in range(d):
        log_open[:, day] = prev + gap[:, day]
        log_close[:, day] = log_open[:, day] + drift[:, 0] + intraday[:, day]
        prev = log_close[:, day]
    open_ = np.exp(log_open)
    close = np.exp(log_close)
    wick_up = np.abs(rng.normal(0, 1, (n, d))) * sigma[:, None] * 0.5
    wick_dn = np.abs(rng.normal(0, 1, (n, d))) * sigma[:, None] * 0.5
    high = np.maximum(open_, close) * (1 + wick_up)
    low = np.minimum(open_, close) * (1 - np.minimum(wick_dn, 0.5))
    to_ticks = 10_000  # prices are NUMERIC(18,4)
    o = np.maximum(np.rint(open_ * to_ticks), 1).astype(np.int64)
    c = np.maximum(np.rint(close * to_ticks), 1).astype(np.int64)
    # Round the wicks outward so that low <= open, close <= high holds exactly after rounding.
    h = np.maximum(np.ceil(high * to_ticks).astype(np.int64), np.maximum(o, c))
    lo = np.minimum(np.floor(low * to_ticks).astype(np.int64), np.minimum(o, c))
    lo = np.maximum(lo, 1)
    volume = np.maximum(rng.lognormal(np.log(400_000), 1.0, (n, d)).astype(np.int64), 1)
    return Prices(business_days(scale.start_date, d), o, h, lo, c, volume)


@dataclass
class Holdings:
    manager_ids: list[str]
    manager_names: list[str]
    model_ids: list[str]
    model_manager: np.ndarray  # model -> manager index
    model_names: list[str]
    model_securities: np.ndarray  # (models x K) security indexes
    model_weights: np.ndarray  # (models x K) weights in WEIGHT_UNITS, rows sum to WEIGHT_UNITS
    account_ids: list[str]
    account_model: np.ndarray  # account -> model index
    account_cash: np.ndarray  # cents of 1/10000 (NUMERIC(20,4) ticks)
    position_account: np.ndarray  # position -> account index
    position_security: np.ndarray  # position -> security index
    position_quantity: np.ndarray


def _integer_weights(rng: np.random.Generator, models: int, k: int) -> np.ndarray:
    """Dirichlet weights in whole WEIGHT_UNITS, each row summing to exactly WEIGHT_UNITS
    (largest remainder), and every weight > 0."""
    raw = rng.dirichlet(np.full(k, 2.0), size=models)
    scaled = raw * (WEIGHT_UNITS - k)  # reserve one unit per weight so none rounds to 0
    floors = np.floor(scaled).astype(np.int64)
    short = (WEIGHT_UNITS - k) - floors.sum(axis=1)
    order = np.argsort(-(scaled - floors), axis=1, kind="stable")
    ranks = np.argsort(order, axis=1, kind="stable")
    floors += ranks < short[:, None]
    return floors + 1


def generate_holdings(scale: Scale, seed: int, first_close: np.ndarray) -> Holdings:
    """``first_close`` is each security's first-day close in ticks: targets are valued there."""
    rng = _rng(seed, "holdings")
    n_sec, k = scale.securities, scale.positions_per_account
    managers, models, accounts = scale.managers, scale.models, scale.accounts
    manager_ids = _uuids(rng, managers)
    model_ids = _uuids(rng, models)
    model_manager = np.repeat(np.arange(managers), scale.models_per_manager)
    model_securities = np.argsort(rng.random((models, n_sec)), axis=1)[:, :k]
    weights = _integer_weights(rng, models, k)

    account_ids = _uuids(rng, accounts)
    account_model = rng.integers(0, models, accounts)
    value = rng.lognormal(np.log(250_000), 0.8, accounts)  # dollars
    cash_share = rng.uniform(0.0, 0.12, accounts)
    cash = np.rint(value * cash_share * 10_000).astype(np.int64)

    # Target shares at the first close, then drift (lognormal noise), at least one share.
    secs = model_securities[account_model]  # (accounts x K)
    w = weights[account_model] / WEIGHT_UNITS
    price = first_close[secs] / 10_000
    target = np.floor(value[:, None] * (1 - cash_share[:, None]) * w / price)
    drifted = np.maximum(np.rint(target * rng.lognormal(0.0, 0.2, target.shape)), 1)
    pos_account = np.repeat(np.arange(accounts), k)
    pos_security = secs.reshape(-1)
    pos_quantity = drifted.astype(np.int64).reshape(-1)

    # About one account in ten also holds something outside its model: a sell at rebalance.
    extra = np.nonzero(rng.random(accounts) < 0.1)[0]
    if len(extra) and n_sec > k:
        candidate = rng.integers(0, n_sec, len(extra))
        in_model = (model_securities[account_model[extra]] == candidate[:, None]).any(axis=1)
        extra, candidate = extra[~in_model], candidate[~in_model]
        shares = np.maximum(np.rint(value[extra] * 0.02 / (first_close[candidate] / 10_000)), 1)
        pos_account = np.concatenate([pos_account, extra])
        pos_security = np.concatenate([pos_security, candidate])
        pos_quantity = np.concatenate([pos_quantity, shares.astype(np.int64)])

    return Holdings(
        manager_ids=manager_ids,
        manager_names=[f"Manager {i + 1:03d}" for i in range(managers)],
        model_ids=model_ids,
        model_manager=model_manager,
        model_names=[f"Model {i + 1:04d}" for i in range(models)],
        model_securities=model_securities,
        model_weights=weights,
        account_ids=account_ids,
        account_model=account_model,
        account_cash=cash,
        position_account=pos_account,
        position_security=pos_security,
        position_quantity=pos_quantity,
    )


# --------------------------------------------------------------------------------------------
# Text rows for COPY (tab-separated, the server's default text format)


def _ticks(values: np.ndarray, places: int = 4) -> list[str]:
    """Exact decimal text of integer ticks: 1234567 -> '123.4567'."""
    unit = 10**places
    whole, frac = np.divmod(values, unit)
    return [f"{w}.{f:0{places}d}" for w, f in zip(whole.tolist(), frac.tolist(), strict=True)]


def security_rows(s: Securities) -> Iterator[str]:
    for row in zip(s.ids, s.tickers, s.names, s.sectors, s.asset_classes, strict=True):
        yield "\t".join(row) + "\n"


def price_rows(s: Securities, p: Prices) -> Iterator[str]:
    days = [d.isoformat() for d in p.days]
    for i, sid in enumerate(s.ids):
        o, h, lo, c = _ticks(p.open[i]), _ticks(p.high[i]), _ticks(p.low[i]), _ticks(p.close[i])
        vol = p.volume[i].tolist()
        prefix = sid + "\t"
        yield "".join(
            f"{prefix}{days[j]}\t{o[j]}\t{h[j]}\t{lo[j]}\t{c[j]}\t{vol[j]}\n"
            for j in range(len(days))
        )


def manager_rows(h: Holdings) -> Iterator[str]:
    for mid, name in zip(h.manager_ids, h.manager_names, strict=True):
        yield f"{mid}\t{name}\n"


def model_rows(h: Holdings) -> Iterator[str]:
    for i, mid in enumerate(h.model_ids):
        yield f"{mid}\t{h.manager_ids[h.model_manager[i]]}\t{h.model_names[i]}\n"


def model_weight_rows(h: Holdings, s: Securities) -> Iterator[str]:
    for i, mid in enumerate(h.model_ids):
        weights = _ticks(h.model_weights[i], places=8)
        for sec, w in zip(h.model_securities[i].tolist(), weights, strict=True):
            yield f"{mid}\t{s.ids[sec]}\t{w}\n"


def account_rows(h: Holdings) -> Iterator[str]:
    cash = _ticks(h.account_cash)
    manager_of_model = h.model_manager
    for i, aid in enumerate(h.account_ids):
        model = h.account_model[i]
        manager = h.manager_ids[manager_of_model[model]]
        yield f"{aid}\t{manager}\t{h.model_ids[model]}\tAccount {i + 1:07d}\t{cash[i]}\n"


def position_rows(h: Holdings, s: Securities, chunk: int = 50_000) -> Iterator[str]:
    """Positions in text chunks of ``chunk`` rows (one string each: far fewer writes)."""
    accounts, sec_ids = h.account_ids, s.ids
    acc = h.position_account.tolist()
    sec = h.position_security.tolist()
    qty = h.position_quantity.tolist()
    for start in range(0, len(acc), chunk):
        end = min(start + chunk, len(acc))
        yield "".join(
            f"{accounts[acc[i]]}\t{sec_ids[sec[i]]}\t{qty[i]}\n" for i in range(start, end)
        )


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class CopyTarget:
    table: str  # domain.name
    columns: tuple[str, ...]

    def statement(self) -> sql.Composed:
        domain, name = self.table.split(".")
        return sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
            sql.Identifier(domain),
            sql.Identifier(name),
            sql.SQL(", ").join(map(sql.Identifier, self.columns)),
        )


TARGETS = {
    "securities": CopyTarget(
        "reference.securities", ("security_id", "ticker", "name", "sector", "asset_class")
    ),
    "prices": CopyTarget(
        "market.daily_prices",
        ("security_id", "trade_date", "open", "high", "low", "close", "volume"),
    ),
    "managers": CopyTarget("holdings.managers", ("manager_id", "name")),
    "models": CopyTarget("holdings.models", ("model_id", "manager_id", "name")),
    "model_weights": CopyTarget("holdings.model_weights", ("model_id", "security_id", "weight")),
    "accounts": CopyTarget(
        "holdings.accounts", ("account_id", "manager_id", "model_id", "name", "cash")
    ),
    "positions": CopyTarget("holdings.positions", ("account_id", "security_id", "quantity")),
}


def copy_rows(
    conn: psycopg.Connection,
    target: CopyTarget,
    chunks: Iterable[str],
    *,
    batch_bytes: int | None = None,
    on_chunk: Callable[[str], None] | None = None,
) -> None:
    """Stream text rows into ``target`` with COPY.

    ``batch_bytes`` splits the stream into several COPY statements (each its own
    transaction): CockroachDB commits a COPY as one transaction and large ones hit its
    transaction size limits. ``None`` means one COPY (PostgreSQL's fastest path).
    """
    statement = target.statement()
    stream = iter(chunks)
    pending = next(stream, None)
    while pending is not None:
        written = 0
        with conn.cursor().copy(statement) as copy:
            while pending is not None:
                copy.write(pending)
                written += len(pending)
                if on_chunk is not None:
                    on_chunk(pending)
                pending = next(stream, None)
                if batch_bytes is not None and written >= batch_bytes:
                    break


@dataclass
class SeedReport:
    scale: Scale
    seed: int
    rows: dict[str, int]
    seconds: float

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def seeded_row_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM reference.securities").fetchone()[0]


def seed(
    conn: psycopg.Connection,
    scale: Scale,
    seed_value: int,
    *,
    batch_bytes: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SeedReport:
    """Generate and write all three domains; ``conn`` must be in autocommit mode.

    ``progress(table, rows_done, rows_total)`` is called as rows are written.
    """
    try:
        existing = seeded_row_count(conn)
    except psycopg.errors.UndefinedTable:
        raise LabError(
            "the schema does not exist; run `python -m workload schema create`"
        ) from None
    if existing:
        raise LabError(
            f"the database is already seeded ({existing} securities); run "
            "`python -m workload seed --reset` to replace the data"
        )
    started = time.perf_counter()
    securities = generate_securities(scale, seed_value)
    prices = generate_prices(scale, seed_value)
    holdings = generate_holdings(scale, seed_value, prices.close[:, 0])
    plan = [
        ("securities", security_rows(securities), len(securities)),
        ("prices", price_rows(securities, prices), scale.securities * scale.days),
        ("managers", manager_rows(holdings), scale.managers),
        ("models", model_rows(holdings), scale.models),
        ("model_weights", model_weight_rows(holdings, securities), holdings.model_weights.size),
        ("accounts", account_rows(holdings), scale.accounts),
        ("positions", position_rows(holdings, securities), len(holdings.position_account)),
    ]
    rows: dict[str, int] = {}
    for name, chunks, total in plan:
        target = TARGETS[name]
        done = 0

        def counted(chunk: str, table=target.table, total=total) -> None:
            nonlocal done
            done += chunk.count("\n")
            if progress is not None:
                progress(table, done, total)

        copy_rows(conn, target, chunks, batch_bytes=batch_bytes, on_chunk=counted)
        rows[target.table] = total
    # Fresh statistics, so the first rebalance is planned for the data just written rather
    # than for empty tables (autovacuum would get there, but later).
    for name in ("securities", "prices", "model_weights", "accounts", "positions"):
        domain, table = TARGETS[name].table.split(".")
        conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(domain), sql.Identifier(table)))
    return SeedReport(scale, seed_value, rows, time.perf_counter() - started)


def reset(conn: psycopg.Connection) -> None:
    """Remove every row of every domain (the schema stays)."""
    from workload.schema import TABLES

    names = sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(t.domain), sql.Identifier(t.name)) for t in TABLES
    )
    conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(names))

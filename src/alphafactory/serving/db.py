"""Forecasts into a SQL table, idempotently: an upsert keyed by (symbol, timestamp, horizon).

The ``preds`` table holds ``symbol, timestamp, horizon`` (primary key), the lineage of each row
(``target_timestamp``: the time it forecasts; ``bundle_sha256``, ``bundle_version``: the bundle
that made it), ``yhat``, ``yhat_std``, ``prob_up`` and one nullable column per base model. A
table written before the lineage columns existed gains them on the next write (``ALTER TABLE ...
ADD COLUMN``, under the same lock as a new model column), NULL in its older rows. Writing the same forecasts twice leaves the
same rows (``INSERT ... ON CONFLICT DO UPDATE``, SQLite and PostgreSQL); a bundle with a new base
model adds its column. Any SQLAlchemy URL of those two dialects works, e.g.
``sqlite:///preds.db`` or ``postgresql+psycopg://user@host:5432/db``.

Any number of writers may write to one table at once (several ``alphafactory predict --db``
processes, say one per cut date):

- the table and any missing model column are created in one short transaction under a lock, so
  two writers never both try to (PostgreSQL: ``pg_advisory_xact_lock`` on the table's name, since
  ``CREATE TABLE IF NOT EXISTS`` and ``ADD COLUMN IF NOT EXISTS`` still race on the catalog;
  SQLite: the database's write lock, taken by ``BEGIN IMMEDIATE``);
- rows are upserted in transactions of ``chunk`` rows, in key order (concurrent upserts of
  overlapping keys then lock rows in the same order), so no writer holds the write lock for long;
- SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and every
  transaction begins ``IMMEDIATE`` (a deferred one that read first can fail at once with
  ``database is locked`` instead of waiting);
- a transaction that still fails for a transient reason (busy or locked database, a serialization
  failure or deadlock, a catalog race) is retried with exponential back-off and jitter. Every
  statement is idempotent, so a retry never writes a row twice.

A write is atomic per chunk, not as a whole: a writer that dies midway leaves the chunks it
committed (rerun it: the upsert makes that harmless).
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd
import sqlalchemy as sa

from alphafactory.errors import InputError

KEY = ("symbol", "timestamp", "horizon")
VALUES = ("yhat", "yhat_std", "prob_up")
LINEAGE = ("target_timestamp", "bundle_sha256", "bundle_version")  # inference.LINEAGE
DIALECTS = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_S = 60.0  # how long an SQLite connection waits for the write lock
RETRIES = 8  # attempts per transaction; back-off 0.05 s doubling, ~13 s in all at most
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock not available, and
# the catalog races of concurrent DDL (unique violation on pg_type, duplicate table / column).
PG_TRANSIENT = {"40001", "40P01", "55P03", "23505", "42P07", "42701"}
SQLITE_BUSY, SQLITE_LOCKED = 5, 6

log = logging.getLogger(__name__)
T = TypeVar("T")


def preds_table(name: str, components: list[str], metadata: sa.MetaData) -> sa.Table:
    """The table's schema: the key, the forecast columns and one float column per component."""
    return sa.Table(
        name, metadata,
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timestamp", sa.DateTime(), primary_key=True),  # bar time, UTC wall time
        sa.Column("horizon", sa.Integer(), primary_key=True),  # bars ahead
        *_lineage_columns(),
        *(sa.Column(c, sa.Float(), nullable=True) for c in (*VALUES, *components)),
    )


def _lineage_columns() -> list[sa.Column]:
    # nullable: rows written before lineage was recorded keep NULL there
    return [sa.Column("target_timestamp", sa.DateTime(), nullable=True),  # timestamp + horizon bars
            sa.Column("bundle_sha256", sa.String(64), nullable=True),
            sa.Column("bundle_version", sa.Integer(), nullable=True)]


def _insert(dialect: str):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise InputError(f"--db: dialect {dialect!r} has no upsert here; expected one of {list(DIALECTS)}")
    return insert


def make_engine(url: str) -> sa.Engine:
    """An engine for concurrent writers. SQLite: WAL journal, a busy timeout, and transactions
    that begin IMMEDIATE (take the write lock first, waiting for it up to the timeout)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url)
    args = {} if "timeout" in parsed.query else {"timeout": SQLITE_BUSY_TIMEOUT_S}
    engine = sa.create_engine(url, connect_args=args)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver issues no BEGIN of its own: _begin does
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # stays set in the file; "memory" for :memory:
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def reader_engine(url: str) -> sa.Engine:
    """An engine for readers: plain transactions (no ``BEGIN IMMEDIATE``: a reader never takes
    SQLite's write lock, and WAL mode never blocks it)."""
    return sa.create_engine(url)


def _transient(e: sa.exc.DBAPIError) -> bool:
    """A failure another attempt can get past: busy/locked (SQLite), serialization failure,
    deadlock or a concurrent-DDL race (PostgreSQL)."""
    orig = getattr(e, "orig", None)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)  # extended codes: BUSY_SNAPSHOT, ...
    if getattr(orig, "sqlstate", None) in PG_TRANSIENT:
        return True
    # sqlite3 before it had error codes, and the lock messages either driver words alike
    return "database is locked" in str(orig) or "database table is locked" in str(orig)


def retry(fn: Callable[[], T], what: str, attempts: int = RETRIES, base_s: float = 0.05) -> T:
    """``fn()`` (one whole transaction), again after a transient failure, at most ``attempts``
    times, sleeping ``base_s * 2**k`` times a random factor in [1, 2) in between."""
    for k in range(attempts):
        try:
            return fn()
        except sa.exc.DBAPIError as e:
            if k == attempts - 1 or not _transient(e):
                raise
            wait = base_s * 2 ** k * (1.0 + random.random())
            log.debug("%s: %s; retrying in %.2f s", what, str(e.orig).splitlines()[0], wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _lock_key(table: str) -> int:
    """A signed 64-bit advisory-lock key for ``table`` (the same in every process)."""
    digest = hashlib.sha256(f"alphafactory.serving.db:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def ensure_table(engine: sa.Engine, table: str, components: list[str]) -> sa.Table:
    """Create ``table`` if absent and add any missing component column, in one transaction that
    holds a lock for the whole check-then-create (see the module docstring); check its key."""
    t = preds_table(table, components, sa.MetaData())
    prep = engine.dialect.identifier_preparer
    col_type = sa.Float().compile(dialect=engine.dialect)

    def attempt() -> None:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(table)})
            t.metadata.create_all(conn)  # checkfirst, under the lock
            inspector = sa.inspect(conn)
            pk = inspector.get_pk_constraint(table).get("constrained_columns") or []
            if sorted(pk) != sorted(KEY):
                raise InputError(f"{engine.url.render_as_string(hide_password=True)} table {table!r} has "
                                 f"primary key {pk}, expected {list(KEY)}: a table written by alphafactory "
                                 f"predict (or choose another --table)")
            have = {c["name"] for c in inspector.get_columns(table)}
            for col in _lineage_columns():  # a table from before lineage: migrate it in place
                if col.name not in have:
                    kind = col.type.compile(dialect=engine.dialect)
                    conn.execute(sa.text(f"ALTER TABLE {prep.quote(table)} ADD COLUMN {prep.quote(col.name)} {kind}"))
            for c in components:
                if c not in have:  # a bundle with a new base model: add its column, NULL for old rows
                    conn.execute(sa.text(f"ALTER TABLE {prep.quote(table)} ADD COLUMN {prep.quote(c)} {col_type}"))

    retry(attempt, f"{table}: create table / add columns")
    return t


def _records(preds: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Plain Python values (datetime, int, float, None for NaN): every driver adapts them."""
    cols = {c: preds[c].astype(object).where(preds[c].notna(), None).tolist()
            for c in columns if c not in ("timestamp", "horizon", "target_timestamp", "bundle_version")}
    for c in ("timestamp", "target_timestamp"):
        if c in columns:
            cols[c] = list(preds[c].dt.to_pydatetime())
    for c in ("horizon", "bundle_version"):
        if c in columns:
            cols[c] = [int(h) for h in preds[c].to_numpy()]
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def write_predictions(preds: pd.DataFrame, url: str = "sqlite:///preds.db", table: str = "preds",
                      chunk: int = 5000) -> int:
    """Upsert the output of :func:`alphafactory.serving.inference.predict` into ``table`` at ``url``, in
    transactions of ``chunk`` rows; create the table (or add missing component columns) first.
    Safe with other writers at the same time (module docstring). Returns rows written."""
    missing = [c for c in (*KEY, *LINEAGE, *VALUES) if c not in preds.columns]
    if missing:
        raise InputError(f"predictions lack column(s) {missing}; expected the output of predict()")
    if preds.duplicated(list(KEY)).any():
        raise InputError("predictions: duplicate (symbol, timestamp, horizon) rows; expected one each")
    if chunk < 1:
        raise InputError(f"chunk: got {chunk}, expected >= 1 rows per transaction")
    components = [c for c in preds.columns if c not in (*KEY, *LINEAGE, *VALUES)]
    engine = make_engine(url)
    insert = _insert(engine.dialect.name)
    try:
        t = ensure_table(engine, table, components)
        stmt = insert(t)
        stmt = stmt.on_conflict_do_update(index_elements=list(KEY),
                                          set_={c: stmt.excluded[c] for c in (*LINEAGE, *VALUES, *components)})
        ordered = preds.sort_values(list(KEY), kind="stable", ignore_index=True)  # one lock order for all writers
        columns = list(preds.columns)
        for s in range(0, len(ordered), chunk):
            records = _records(ordered.iloc[s:s + chunk], columns)  # one chunk of Python objects at a time

            def upsert(records: list[dict] = records) -> None:
                with engine.begin() as conn:
                    conn.execute(stmt, records)

            retry(upsert, f"{table}: upsert rows {s}..{s + len(records) - 1}")
    finally:
        engine.dispose()
    return len(preds)


def read_predictions(url: str, table: str = "preds", *, symbols: list[str] | None = None,
                     since: pd.Timestamp | None = None, limit: int | None = None,
                     engine: sa.Engine | None = None) -> pd.DataFrame:
    """Rows of the table, sorted by (symbol, timestamp, horizon): all of them, or those of
    ``symbols`` with ``timestamp >= since`` (bar time), at most ``limit`` (the first in key
    order). ``engine``: reuse one (a server's), else one is made and disposed of."""
    own = engine is None
    engine = reader_engine(url) if own else engine
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                raise InputError(f"{engine.url.render_as_string(hide_password=True)}: no table {table!r}; "
                                 f"nothing was written there yet (alphafactory predict --db, or POST /v1/forecast)")
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            query = sa.select(t)
            if symbols:
                query = query.where(t.c.symbol.in_(list(symbols)))
            if since is not None:
                query = query.where(t.c.timestamp >= since.to_pydatetime())
            query = query.order_by(*(t.c[k] for k in KEY))
            if limit is not None:
                query = query.limit(int(limit))
            df = pd.read_sql_query(query, conn)
    finally:
        if own:
            engine.dispose()
    return df.sort_values(list(KEY), ignore_index=True)

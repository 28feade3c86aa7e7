"""Forecasts into a SQL table, idempotently: an upsert keyed by (symbol, timestamp, horizon).

The ``preds`` table holds ``symbol, timestamp, horizon`` (primary key), ``yhat``, ``yhat_std``,
``prob_up`` and one nullable column per base model. Writing the same forecasts twice leaves the
same rows (``INSERT ... ON CONFLICT DO UPDATE``, SQLite and PostgreSQL); a bundle with a new base
model adds its column. Any SQLAlchemy URL of those two dialects works, e.g.
``sqlite:///preds.db`` or ``postgresql+psycopg://user@host:5432/db``.
"""
from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from alphafactory.stage import InputError

KEY = ("symbol", "timestamp", "horizon")
VALUES = ("yhat", "yhat_std", "prob_up")
DIALECTS = ("sqlite", "postgresql")


def preds_table(name: str, components: list[str], metadata: sa.MetaData) -> sa.Table:
    """The table's schema: the key, the forecast columns and one float column per component."""
    return sa.Table(
        name, metadata,
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("timestamp", sa.DateTime(), primary_key=True),  # bar time, UTC wall time
        sa.Column("horizon", sa.Integer(), primary_key=True),  # bars ahead
        *(sa.Column(c, sa.Float(), nullable=True) for c in (*VALUES, *components)),
    )


def _insert(dialect: str):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise InputError(f"--db: dialect {dialect!r} has no upsert here; expected one of {list(DIALECTS)}")
    return insert


def _records(preds: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Plain Python values (datetime, int, float, None for NaN): every driver adapts them."""
    cols = {c: preds[c].astype(object).where(preds[c].notna(), None).tolist()
            for c in columns if c not in ("timestamp", "horizon")}
    cols["timestamp"] = list(preds["timestamp"].dt.to_pydatetime())
    cols["horizon"] = [int(h) for h in preds["horizon"].to_numpy()]
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def write_predictions(preds: pd.DataFrame, url: str = "sqlite:///preds.db", table: str = "preds",
                      chunk: int = 5000) -> int:
    """Upsert the output of :func:`alphafactory.inference.predict` into ``table`` at ``url`` in one
    transaction; create the table (or add missing component columns) first. Returns rows written.
    """
    missing = [c for c in (*KEY, *VALUES) if c not in preds.columns]
    if missing:
        raise InputError(f"predictions lack column(s) {missing}; expected the output of predict()")
    if preds.duplicated(list(KEY)).any():
        raise InputError("predictions: duplicate (symbol, timestamp, horizon) rows; expected one each")
    components = [c for c in preds.columns if c not in (*KEY, *VALUES)]
    engine = sa.create_engine(url)
    insert = _insert(engine.dialect.name)
    t = preds_table(table, components, sa.MetaData())
    with engine.begin() as conn:
        t.metadata.create_all(conn)
        inspector = sa.inspect(conn)
        have = {c["name"] for c in inspector.get_columns(table)}
        pk = inspector.get_pk_constraint(table).get("constrained_columns") or []
        if sorted(pk) != sorted(KEY):
            raise InputError(f"{engine.url.render_as_string(hide_password=True)} table {table!r} has "
                             f"primary key {pk}, expected {list(KEY)}: a table written by alphafactory "
                             f"predict (or choose another --table)")
        prep = engine.dialect.identifier_preparer
        for c in components:
            if c not in have:  # a bundle with a new base model: add its column, NULL for old rows
                conn.execute(sa.text(f"ALTER TABLE {prep.quote(table)} ADD COLUMN {prep.quote(c)} "
                                     f"{sa.Float().compile(dialect=engine.dialect)}"))
        stmt = insert(t)
        stmt = stmt.on_conflict_do_update(index_elements=list(KEY),
                                          set_={c: stmt.excluded[c] for c in (*VALUES, *components)})
        records = _records(preds, list(preds.columns))
        for s in range(0, len(records), chunk):
            conn.execute(stmt, records[s:s + chunk])
    engine.dispose()
    return len(records)


def read_predictions(url: str, table: str = "preds") -> pd.DataFrame:
    """The whole table, sorted by (symbol, timestamp, horizon)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        df = pd.read_sql_table(table, conn)
    engine.dispose()
    return df.sort_values(list(KEY), ignore_index=True)

"""Concurrent writers of one forecast table (alphafactory.serving.db): N processes x M rounds, every
round started by all of them at once, each write a new model column and its rows in several
transactions, against SQLite and a real PostgreSQL server.

Before: the CREATE TABLE race (PostgreSQL: UniqueViolation on pg_type_typname_nsp_index; SQLite:
"table preds already exists"), the ADD COLUMN race ("duplicate column") and SQLite's "database is
locked" made writers fail, and their keys never reached the table."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import db_writers as w
from alphafactory.serving.db import read_predictions, write_predictions

WRITERS, ROUNDS, CHUNK = 6, 3, 400  # 3,600 rows per write: 9 transactions


def _expected(mode: str) -> pd.DataFrame:
    """Every key written, once, with the rounds that wrote it."""
    frames = [w.frame(mode, i, r)[["symbol", "timestamp", "horizon"]].assign(round=r)
              for i in range(WRITERS) for r in range(ROUNDS)]
    allkeys = pd.concat(frames, ignore_index=True)
    return allkeys.drop_duplicates(ignore_index=True)


def _run_writers(url: str, mode: str, writers: int = WRITERS, rounds: int = ROUNDS,
                 chunk: int | None = CHUNK, days: int = w.DAYS) -> tuple[list, float]:
    ctx = mp.get_context("spawn")  # fresh interpreters: separate connections, as separate `predict`s
    barrier, errors = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=w.writer, args=(url, mode, i, rounds, chunk, barrier, errors, days))
             for i in range(writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [errors.get(timeout=600) for _ in range(writers * rounds)]
    for p in procs:
        p.join(timeout=60)
    wall = time.perf_counter() - t0
    assert [p.exitcode for p in procs] == [0] * writers
    return results, wall


@pytest.mark.parametrize("mode", ["same", "staggered"])
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_concurrent_writers_lose_no_key_and_never_fail(dialect, mode, tmp_path, request):
    url = (f"sqlite:///{tmp_path / 'preds.db'}" if dialect == "sqlite"
           else request.getfixturevalue("postgres_url"))
    results, wall = _run_writers(url, mode)
    failed = [(i, r, msg) for i, r, msg, _ in results if msg is not None]
    assert not failed, f"{len(failed)} of {WRITERS * ROUNDS} writes failed: {failed[:6]}"

    table = read_predictions(url)
    keys = ["symbol", "timestamp", "horizon"]
    expected = _expected(mode)
    want = expected.drop_duplicates(keys).sort_values(keys, ignore_index=True)
    assert len(table) == len(want) and not table.duplicated(keys).any()
    pd.testing.assert_frame_equal(table[keys], want[keys], check_dtype=False)
    s = table["symbol"].str[1:].astype(int).to_numpy()
    d = ((table["timestamp"] - w.START) / pd.Timedelta(days=1)).to_numpy().astype(int)
    h = table["horizon"].to_numpy()
    np.testing.assert_allclose(table["yhat"], w.value(s, d, h, 0.0), rtol=1e-12)
    np.testing.assert_allclose(table["lightgbm"], w.value(s, d, h, 2.0), rtol=1e-12)
    for r in range(ROUNDS):  # each round's new column: set on exactly the keys written that round
        written = table[keys].merge(expected[expected["round"] == r][keys], how="left", indicator=True)
        mask = (written["_merge"] == "both").to_numpy()
        col = table[f"extra_r{r}"].to_numpy()
        assert np.isnan(col[~mask]).all()
        np.testing.assert_allclose(col[mask], w.value(s, d, h, 3.0 + r)[mask], rtol=1e-12)
    times = sorted(t for *_, t in results)
    print(f"\n{dialect}/{mode}: {WRITERS} writers x {ROUNDS} rounds, {len(table)} keys, wall {wall:.1f} s, "
          f"write median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s")


def test_long_sqlite_backfills_at_once_all_finish(tmp_path):
    """Six backfills of 120,000 rows each (1,000 bars x 40 symbols x 3 horizons), started at
    once with the default chunk. Before, each was one transaction holding SQLite's write lock for
    longer than the driver's 5 s busy timeout: the others died with "database is locked"."""
    url = f"sqlite:///{tmp_path / 'preds.db'}"
    results, wall = _run_writers(url, "staggered", writers=6, rounds=1, chunk=None, days=1000)
    failed = [(i, msg) for i, _, msg, _ in results if msg is not None]
    assert not failed, f"{len(failed)} of 6 backfills failed: {failed}"
    n = len(read_predictions(url))
    assert n == len(w.SYMBOLS) * len(w.HORIZONS) * (1000 + 7 * 5)  # staggered by 7 bars each
    times = sorted(t for *_, t in results)
    print(f"\nsqlite backfills: 6 writers x 120,000 rows, {n} keys, wall {wall:.1f} s, "
          f"write min {times[0]:.1f} s, max {times[-1]:.1f} s")


def test_write_is_batched_and_a_second_write_adds_no_rows(tmp_path, monkeypatch):
    """One writer: one transaction to create the table, then one per ``chunk`` rows; rewriting
    the same frame shuffled changes nothing; the SQLite file is left in WAL mode."""
    from alphafactory.serving import db

    begins: list[int] = []
    make = db.make_engine

    def counting(url: str) -> sa.Engine:
        engine = make(url)
        sa.event.listen(engine, "begin", lambda conn: begins.append(1))
        return engine

    monkeypatch.setattr(db, "make_engine", counting)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    preds = w.frame("same", 0, 0)  # 3,600 rows
    assert write_predictions(preds, url, chunk=1000) == len(preds)
    assert len(begins) == 1 + 4
    assert write_predictions(preds.sample(frac=1.0, random_state=0), url, chunk=7) == len(preds)
    assert len(begins) == 5 + 1 + 515
    table = read_predictions(url)
    pd.testing.assert_frame_equal(table, preds.sort_values(["symbol", "timestamp", "horizon"], ignore_index=True),
                                  check_dtype=False, check_like=True)
    with sa.create_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def _sqlite_error(message: str, code: int) -> sa.exc.OperationalError:
    orig = sqlite3.OperationalError(message)
    orig.sqlite_errorcode = code
    return sa.exc.OperationalError("INSERT ...", {}, orig)


def test_retry_backs_off_on_transient_errors_only(monkeypatch):
    """A busy database is retried with doubling, jittered sleeps, up to ``attempts`` times; any
    other database error is raised at once."""
    from alphafactory.serving import db

    sleeps: list[float] = []
    monkeypatch.setattr(db.time, "sleep", sleeps.append)
    calls: list[int] = []

    def fails(times: int, error: sa.exc.OperationalError):
        def fn() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise error
            return "done"
        return fn

    assert db.retry(fails(3, _sqlite_error("database is locked", 5)), "t") == "done" and len(calls) == 4
    assert len(sleeps) == 3 and all(0.05 * 2 ** k <= t < 0.1 * 2 ** k for k, t in enumerate(sleeps))
    calls.clear()
    with pytest.raises(sa.exc.OperationalError, match="database is locked"):
        db.retry(fails(99, _sqlite_error("database is locked", 517)), "t", attempts=3)  # BUSY_SNAPSHOT
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(sa.exc.OperationalError, match="syntax error"):
        db.retry(fails(99, _sqlite_error("near 'SELEC': syntax error", 1)), "t")
    assert len(calls) == 1

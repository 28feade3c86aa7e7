"""Synthetic forecast frames and the writer process of tests/test_db_concurrency.py (a module of
its own so that multiprocessing's spawn start method can import the target in the children)."""
from __future__ import annotations

import itertools
import time
import traceback

import numpy as np
import pandas as pd

SYMBOLS = [f"S{i:03d}" for i in range(40)]
HORIZONS = (1, 5, 20)
DAYS = 30  # forecast bars per symbol in one write
START = pd.Timestamp("2020-01-01")


def first_day(mode: str, writer: int, round_: int) -> int:
    """``same``: every writer writes the same bars in a round; ``staggered``: each writer its own
    cut dates, overlapping its neighbours' (as several `predict --asof` backfills would)."""
    return 11 * round_ + (0 if mode == "same" else 7 * writer)


def value(sym: np.ndarray, day: np.ndarray, horizon: np.ndarray, salt: float) -> np.ndarray:
    """The number every writer writes for that key (so the table's value can be checked)."""
    return np.sin(sym * 1.3 + day * 0.07 + horizon * 0.5 + salt)


def frame(mode: str, writer: int, round_: int, days: int = DAYS) -> pd.DataFrame:
    """(symbol, timestamp, horizon) rows with their lineage, yhat, yhat_std, prob_up, a ``lightgbm`` column and a
    model column new in each round (``extra_r<round>``: every writer adds it at once)."""
    d0 = first_day(mode, writer, round_)
    keys = np.array(list(itertools.product(range(len(SYMBOLS)), range(d0, d0 + days), HORIZONS)))
    s, d, h = keys.T
    return pd.DataFrame({
        "symbol": np.asarray(SYMBOLS)[s], "timestamp": START + pd.to_timedelta(d, "D"), "horizon": h,
        "target_timestamp": START + pd.to_timedelta(d + h, "D"), "bundle_sha256": "ab" * 32, "bundle_version": 2,
        "yhat": value(s, d, h, 0.0), "yhat_std": 1.0 + value(s, d, h, 1.0) ** 2, "prob_up": 0.5,
        "lightgbm": value(s, d, h, 2.0), f"extra_r{round_}": value(s, d, h, 3.0 + round_),
    })


def writer(url: str, mode: str, index: int, rounds: int, chunk: int | None, barrier, errors,
           days: int = DAYS) -> None:
    """Process target: ``rounds`` writes, each started with every other writer (``barrier``);
    a failed write is reported on ``errors`` and the writer goes on to the next round.
    ``chunk`` None: write_predictions' default."""
    from alphafactory.serving.db import write_predictions

    for r in range(rounds):
        preds = frame(mode, index, r, days)
        barrier.wait(timeout=300)
        t0 = time.perf_counter()
        try:
            write_predictions(preds, url, **({} if chunk is None else {"chunk": chunk}))
        except Exception as e:  # reported to the test, which fails naming it
            errors.put((index, r, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                        traceback.format_exc()[-1500:]))
        else:
            errors.put((index, r, None, time.perf_counter() - t0))

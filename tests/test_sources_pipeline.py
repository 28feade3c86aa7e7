"""Every source runs through the real pipeline by changing params only (`dvc exp run -S ...`)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline_utils import ran_stages, sh

pytestmark = pytest.mark.slow


def _restore(repo):
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")


def test_synthetic_source_reports_oracle_share(project):
    repo, _ = project
    out = sh(repo, "dvc", "exp", "run", "-n", "synthetic", "-S", "data.source=synthetic",
             "-S", "data.synthetic.symbols=6", "-S", "data.synthetic.bars=700",
             "-S", "data.synthetic.signal_strength=0.1", "-S", "data.start=null")
    try:
        assert "prepare" in ran_stages(out)
        oracle = json.loads((repo / "metrics/oracle.json").read_text())["oracle"]
        assert oracle["h1"]["ic"] > 0.03  # the planted signal is there to find
        m = json.loads((repo / "metrics/test.json").read_text())
        assert "oracle_share" in m["ensemble"]["h1"]
        assert set(pd.read_parquet(repo / "data/prepared/bars.parquet")["symbol"]) == {f"SYN{i:03d}" for i in range(6)}
    finally:
        _restore(repo)


def test_users_csv_runs_through_params_only(project, tmp_path):
    repo, _ = project
    bars = pd.read_parquet(repo / "data/prepared/bars.parquet")
    # a user's file: upper-case columns, `Date` for the timestamp, rows shuffled
    user = bars.rename(columns=str.upper).rename(columns={"TIMESTAMP": "Date"}).sample(frac=1.0, random_state=0)
    path = tmp_path / "my_bars.csv"
    user.to_csv(path, index=False)
    out = sh(repo, "dvc", "exp", "run", "-n", "usercsv", "-S", "data.source=file", "-S", f"data.path={path}")
    try:
        assert "prepare" in ran_stages(out)
        got = pd.read_parquet(repo / "data/prepared/bars.parquet")
        pd.testing.assert_frame_equal(got, bars, check_dtype=False)
        m = json.loads((repo / "metrics/test.json").read_text())
        assert m["ensemble"]["h1"]["n"] > 0
    finally:
        _restore(repo)


def test_bad_user_file_fails_with_one_clear_line(project, tmp_path):
    repo, _ = project
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,date,open,high,low,close,volume\nAAA,2020-01-02,10,11,9,12,100\n")
    out = sh(repo, "dvc", "exp", "run", "-S", "data.source=file", "-S", f"data.path={bad}", check=False)
    try:
        assert "error: " in out and "bad.csv" in out and "close" in out and "Traceback" not in out
        # DVC removes a stage's outputs before running it; the failed stage wrote none back
        for name in ("bars.parquet", "info.json", "oracle.parquet"):
            assert not (repo / "data/prepared" / name).exists(), name
        assert not list((repo / "data/prepared").glob(".*.tmp"))  # no half-written temp file
    finally:
        _restore(repo)


def test_new_contents_of_the_data_file_rerun_prepare(project, tmp_path):
    """The user's file is a dependency of prepare (dvc.yaml ``${data.path}``), not only its path:
    the same path with new contents of the same size reruns prepare and everything after it, and
    the run-cache serves a result only for the bytes it was made from."""
    repo, _ = project
    bars = pd.read_parquet(repo / "data/prepared/bars.parquet")
    path = tmp_path / "bars.csv"
    first = bars.to_csv(index=False)
    # the same rows, with one symbol's OHLC bars in reverse time order: every bar stays valid,
    # every value is still there (so the file keeps its size), the returns are new
    changed = bars.copy()
    one = (changed["symbol"] == changed["symbol"].iloc[0]).to_numpy()
    prices = ["open", "high", "low", "close"]
    changed.loc[one, prices] = changed.loc[one, prices].to_numpy()[::-1]
    second = changed.to_csv(index=False)
    assert len(second) == len(first) and second != first

    def run() -> tuple[set[str], str, pd.DataFrame, dict]:
        out = sh(repo, "dvc", "exp", "run", "-S", "data.source=file", "-S", f"data.path={path}")
        return (ran_stages(out), out, pd.read_parquet(repo / "data/prepared/bars.parquet"),
                json.loads((repo / "metrics/test.json").read_text()))

    try:
        path.write_text(first)
        ran, _, bars1, m1 = run()
        assert "prepare" in ran
        path.write_text(second)  # in place: same path, same size, new bytes
        ran, out, bars2, m2 = run()
        assert {"prepare", "featurize", "label", "train@boosting", "evaluate"} <= ran, out[-2000:]
        assert "'prepare' is cached" not in out
        assert not bars2.equals(bars1)
        assert m2["lightgbm"]["h1"]["ic"] != m1["lightgbm"]["h1"]["ic"]
        path.write_text(first)  # back to the first bytes: the run-cache may serve the first results
        _, _, bars3, m3 = run()
        pd.testing.assert_frame_equal(bars3, bars1)
        assert m3 == m1
    finally:
        _restore(repo)

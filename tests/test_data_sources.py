"""Data-source layer: bundled stocks, user files, validation errors, synthetic panel + oracle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphafactory.config import from_dict
from alphafactory.data import synthetic
from alphafactory.data.frequency import infer_frequency
from alphafactory.data.sources import DEFAULT_PATH, DataConfig, SyntheticConfig, load_bars, load_bundled, load_file
from alphafactory.data.synthetic import SIGNALS, make_synthetic, oracle_from_bars, planted_ic
from alphafactory.data.validate import BAR_COLUMNS, validate_bars
from alphafactory.errors import ConfigError, DataValidationError


def _panel_contract(bars: pd.DataFrame) -> None:
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert bars["timestamp"].dtype == np.dtype("datetime64[ns]")
    for c in ("open", "high", "low", "close", "volume"):
        assert bars[c].dtype == np.float64, c
    assert isinstance(bars.index, pd.RangeIndex) and bars.index.start == 0
    assert not bars.duplicated(["symbol", "timestamp"]).any()
    srt = bars.sort_values(["symbol", "timestamp"], kind="mergesort", ignore_index=True)
    pd.testing.assert_frame_equal(bars, srt)
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] > 0).all() and (bars["volume"] >= 0).all()


# --- bundled ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> pd.DataFrame:
    return load_bundled()


def test_bundled_loads_four_adjusted_symbols(bundled: pd.DataFrame) -> None:
    _panel_contract(bundled)
    counts = bundled.groupby("symbol").size().to_dict()
    # AAPL: 3270 source rows minus the stale 2003-01-29 repeat.
    assert counts == {"AAPL": 3269, "GOOG": 2148, "IBM": 3270, "MSFT": 3270}
    assert bundled["timestamp"].min() == pd.Timestamp("2000-03-01")
    assert bundled["timestamp"].max() == pd.Timestamp("2013-03-01")
    assert not ((bundled["symbol"] == "AAPL") & (bundled["timestamp"] == "2003-01-29")).any()
    freq = infer_frequency(bundled)
    assert freq.label == "1D" and not freq.intraday and freq.periods_per_year == 252


def test_bundled_has_no_split_jumps(bundled: pd.DataFrame) -> None:
    logc = np.log(bundled["close"].to_numpy())
    same = bundled["symbol"].to_numpy()[1:] == bundled["symbol"].to_numpy()[:-1]
    r = pd.Series(np.where(same, np.diff(logc), np.nan), index=bundled.index[1:])
    key = bundled.loc[1:, ["symbol", "timestamp"]].assign(r=r)
    # Split days: unadjusted closes drop ~50% (log -0.6 .. -0.7); adjusted ones must not.
    for sym, day in (("AAPL", "2000-06-21"), ("AAPL", "2005-02-28"), ("MSFT", "2003-02-18")):
        got = key.loc[(key.symbol == sym) & (key.timestamp == day), "r"]
        assert len(got) == 1 and abs(got.iloc[0]) < 0.15, (sym, day, got)
    # The only move beyond 50% is a real one: AAPL's profit warning on 2000-09-29 (-52%).
    big = key.loc[key["r"].abs() > 0.5]
    assert big[["symbol", "timestamp"]].values.tolist() == [["AAPL", pd.Timestamp("2000-09-29")]]
    assert -0.75 < big["r"].iloc[0] < -0.7


def test_bundled_volume_keeps_dollar_volume(bundled: pd.DataFrame) -> None:
    import bokeh_sampledata.stocks as stocks

    raw = pd.DataFrame(stocks.MSFT)
    row = raw.loc[raw["date"] == "2003-02-14"].iloc[0]
    got = bundled.loc[(bundled.symbol == "MSFT") & (bundled.timestamp == "2003-02-14")].iloc[0]
    assert got["close"] == pytest.approx(row["adj_close"])
    assert got["close"] * got["volume"] == pytest.approx(row["close"] * row["volume"])


def test_load_bars_bundled_filters(bundled: pd.DataFrame) -> None:
    bars, oracle = load_bars(DataConfig(symbols=("IBM", "AAPL"), start="2010-01-01",
                                        end="2010-12-31", min_bars=200))
    assert oracle is None
    assert sorted(bars.symbol.unique()) == ["AAPL", "IBM"]
    assert bars.timestamp.min() >= pd.Timestamp("2010-01-01")
    assert bars.timestamp.max() == pd.Timestamp("2010-12-31")
    assert (bars.groupby("symbol").size() == 252).all()


def test_too_few_bars_names_symbol_and_count() -> None:
    # GOOG starts 2004-08-19: 94 bars in 2004 (2004-08-19 .. 2004-12-31).
    with pytest.raises(DataValidationError, match=r"'GOOG' has 94 bars.*min_bars=100"):
        load_bars(DataConfig(start="2004-01-01", end="2004-12-31", min_bars=100))
    with pytest.raises(DataValidationError, match=r"'NVDA'.*not found"):
        load_bars(DataConfig(symbols=("NVDA",)))


# --- files --------------------------------------------------------------------------------


def _expected() -> pd.DataFrame:
    """Two symbols of different lengths, a gap (2020-01-08 missing for MSFT), float volume."""
    rows = [
        ("AAPL", "2020-01-02", 10.0, 11.0, 9.5, 10.5, 1000.0),
        ("AAPL", "2020-01-03", 10.5, 11.5, 10.0, 11.0, 1200.5),
        ("AAPL", "2020-01-06", 11.0, 11.2, 10.1, 10.2, 0.0),
        ("AAPL", "2020-01-07", 10.2, 10.9, 10.2, 10.9, 900.0),
        ("MSFT", "2020-01-02", 20.0, 21.0, 19.0, 20.5, 500.0),
        ("MSFT", "2020-01-03", 20.5, 20.5, 19.5, 19.8, 600.0),
        ("MSFT", "2020-01-09", 19.8, 22.0, 19.8, 21.5, 700.25),
    ]
    df = pd.DataFrame(rows, columns=list(BAR_COLUMNS))
    df["timestamp"] = pd.to_datetime(df["timestamp"]).astype("datetime64[ns]")
    return df.astype({"symbol": str})


def _file_cfg(path: Path, **kw: object) -> DataConfig:
    return DataConfig(**{"source": "file", "path": str(path), "min_bars": 1, **kw})  # type: ignore[arg-type]


def _check(path: Path, expected: pd.DataFrame | None = None) -> None:
    bars, oracle = load_bars(_file_cfg(path))
    assert oracle is None
    _panel_contract(bars)
    pd.testing.assert_frame_equal(bars, _expected() if expected is None else expected)


def test_long_csv(tmp_path: Path) -> None:
    p = tmp_path / "bars.csv"
    _expected().to_csv(p, index=False)
    _check(p)


def test_long_csv_quirks(tmp_path: Path) -> None:
    """Upper-case names, Date column, shuffled rows, extra column, blank line, column order."""
    df = _expected().sample(frac=1.0, random_state=3)
    df["timestamp"] = df["timestamp"].dt.strftime("%Y-%m-%d")
    df = df.rename(columns=str.upper).rename(columns={"TIMESTAMP": "Date"})
    df["Comment"] = "x"
    df = df[["Date", "Comment", "CLOSE", "SYMBOL", "OPEN", "LOW", "HIGH", "VOLUME"]]
    p = tmp_path / "quirky.csv"
    text = df.to_csv(index=False).splitlines()
    p.write_text("\n".join(text[:3] + [""] + text[3:]) + "\n")
    _check(p)


def test_long_parquet_with_tz_and_datetime_column(tmp_path: Path) -> None:
    df = _expected().rename(columns={"timestamp": "Datetime"})
    # 2020-01-02 09:00 New York (UTC-5) = 14:00 UTC: the panel holds naive UTC.
    df["Datetime"] = (df["Datetime"] + pd.Timedelta(hours=9)).dt.tz_localize("America/New_York")
    p = tmp_path / "bars.parquet"
    df.to_parquet(p, index=False)
    exp = _expected()
    exp["timestamp"] = exp["timestamp"] + pd.Timedelta(hours=14)
    _check(p, exp)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "mixed"])
def test_directory_of_symbol_files(tmp_path: Path, fmt: str) -> None:
    for i, (sym, g) in enumerate(_expected().groupby("symbol")):
        g = g.drop(columns="symbol").iloc[::-1]  # no symbol column, reverse order
        kind = fmt if fmt != "mixed" else ("csv", "parquet")[i]
        if kind == "csv":
            g.rename(columns={"timestamp": "DATE"}).to_csv(tmp_path / f"{sym}.csv", index=False)
        else:
            g.to_parquet(tmp_path / f"{sym}.parquet", index=False)
    (tmp_path / "README.md").write_text("not data\n")  # skipped, logged
    _check(tmp_path)


def test_symbol_na_and_us_dates(tmp_path: Path) -> None:
    """'NA' is a ticker, not a missing value; non-ISO dates use one format inferred from row 1."""
    p = tmp_path / "us.csv"
    p.write_text("Symbol,Date,Open,High,Low,Close,Volume\nNA,01/02/2020,1,2,1,1.5,10\n"
                 "NA,1/13/2020,1,2,1,1.5,10\n")
    bars = load_file(p)
    assert bars.symbol.tolist() == ["NA", "NA"]
    assert bars.timestamp.tolist() == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-13")]


def test_adj_close_in_file_is_applied(tmp_path: Path) -> None:
    df = _expected()
    df["Adj Close"] = df["close"] / 2.0
    p = tmp_path / "adj.csv"
    df.to_csv(p, index=False)
    exp = _expected()
    for c in ("open", "high", "low", "close"):
        exp[c] = exp[c] / 2.0
    exp["volume"] = exp["volume"] * 2.0
    _check(p, exp)


def test_close_within_float_tolerance_is_clipped(tmp_path: Path) -> None:
    df = _expected()
    df.loc[0, "close"] = df.loc[0, "high"] * (1 + 1e-12)
    p = tmp_path / "tol.csv"
    df.to_csv(p, index=False, float_format="%.17g")
    bars, _ = load_bars(_file_cfg(p))
    assert bars.loc[0, "close"] == bars.loc[0, "high"] == 11.0


# --- validation errors --------------------------------------------------------------------

_GOOD = """symbol,timestamp,open,high,low,close,volume
AAPL,2020-01-02,10,11,9,10.5,1000
AAPL,2020-01-03,10.5,11.5,10,11,1200
MSFT,2020-01-02,20,21,19,20.5,500
MSFT,2020-01-03,20.5,21,19.5,20,600
MSFT,2020-01-06,20,21,19,20.5,700
"""
_LINE5 = "MSFT,2020-01-03,20.5,21,19.5,20,600"

# (what, replacement for line 5, column, symbol). Line 5 = 4th data row = data row 3.
_ROW_ERRORS = [
    ("empty price", "MSFT,2020-01-03,20.5,21,19.5,,600", "close", "MSFT"),
    ("NaN price", "MSFT,2020-01-03,20.5,NaN,19.5,20,600", "high", "MSFT"),
    ("zero price", "MSFT,2020-01-03,0,21,19.5,20,600", "open", "MSFT"),
    ("negative price", "MSFT,2020-01-03,20.5,21,-19.5,20,600", "low", "MSFT"),
    ("negative volume", "MSFT,2020-01-03,20.5,21,19.5,20,-600", "volume", "MSFT"),
    ("high below low", "MSFT,2020-01-03,19.5,19,20,19.5,600", "high", "MSFT"),
    ("close above high", "MSFT,2020-01-03,20.5,21,19.5,21.5,600", "close", "MSFT"),
    ("open below low", "MSFT,2020-01-03,19,21,19.5,20,600", "open", "MSFT"),
    ("duplicate key", "MSFT,2020-01-02,20.5,21,19.5,20,600", "timestamp", "MSFT"),
    ("bad timestamp", "MSFT,2020-13-45,20.5,21,19.5,20,600", "timestamp", "MSFT"),
    ("missing timestamp", "MSFT,,20.5,21,19.5,20,600", "timestamp", "MSFT"),
    ("bad number", "MSFT,2020-01-03,20.5,21,19.5,20,6O0", "volume", "MSFT"),
    ("infinite number", "MSFT,2020-01-03,20.5,inf,19.5,20,600", "high", "MSFT"),
    ("unsafe symbol", "../etc,2020-01-03,20.5,21,19.5,20,600", "symbol", "../etc"),
    ("missing symbol", ",2020-01-03,20.5,21,19.5,20,600", "symbol", "<missing>"),
]


def _load_and_catch(tmp_path: Path, target: Path, **kw: object) -> str:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataValidationError) as info:
        load_bars(_file_cfg(target, **kw))
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert before == after  # the loader writes nothing, even when it fails
    return str(info.value)


@pytest.mark.parametrize("what,line,column,symbol", _ROW_ERRORS, ids=[e[0] for e in _ROW_ERRORS])
def test_row_error_names_file_column_symbol_row(tmp_path: Path, what: str, line: str,
                                                column: str, symbol: str) -> None:
    p = tmp_path / "broken_bars.csv"
    p.write_text(_GOOD.replace(_LINE5, line))
    msg = _load_and_catch(tmp_path, p)
    assert "broken_bars.csv" in msg and "line 5" in msg and "data row 3" in msg, msg
    assert f"column '{column}'" in msg and f"symbol '{symbol}'" in msg, msg
    assert "expected" in msg, msg
    if what == "duplicate key":
        assert "line 4" in msg, msg  # names the earlier twin too


def test_row_error_in_parquet_and_directory(tmp_path: Path) -> None:
    df = _expected()
    df.loc[5, "high"] = 1.0  # MSFT 2020-01-03: high below low
    p = tmp_path / "bars.parquet"
    df.to_parquet(p, index=False)
    msg = _load_and_catch(tmp_path, p)
    assert "bars.parquet row 5 (0-based)" in msg and "column 'high'" in msg and "'MSFT'" in msg, msg

    d = tmp_path / "dir"
    d.mkdir()
    (d / "AAPL.csv").write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10.5,1\n")
    (d / "MSFT.csv").write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,10,11,9,10.5,1\n"
                                "2020-01-03,10,11,9,12.5,1\n")
    msg = _load_and_catch(tmp_path, d)
    assert "MSFT.csv line 3" in msg and "column 'close'" in msg and "'MSFT'" in msg, msg


def test_missing_column_lists_found_columns(tmp_path: Path) -> None:
    p = tmp_path / "novol.csv"
    p.write_text("\n".join(",".join(r.split(",")[:-1]) for r in _GOOD.splitlines()) + "\n")
    msg = _load_and_catch(tmp_path, p)
    assert "novol.csv" in msg and "missing column(s) ['volume']" in msg, msg
    assert "'close'" in msg and "found columns" in msg, msg


@pytest.mark.parametrize("content,expect", [("", "empty"), ("symbol,timestamp,open,high,low,close,volume\n",
                                                           "no data rows")])
def test_empty_file(tmp_path: Path, content: str, expect: str) -> None:
    p = tmp_path / "empty.csv"
    p.write_text(content)
    msg = _load_and_catch(tmp_path, p)
    assert "empty.csv" in msg and expect in msg, msg


def test_file_too_few_bars(tmp_path: Path) -> None:
    p = tmp_path / "short.csv"
    p.write_text(_GOOD)
    msg = _load_and_catch(tmp_path, p, min_bars=3)
    assert "'AAPL' has 2 bars" in msg and "min_bars=3" in msg and "short.csv" in msg, msg
    assert "MSFT" not in msg  # MSFT has 3 bars


def test_unsafe_symbol_file_name(tmp_path: Path) -> None:
    (tmp_path / "BAD NAME.csv").write_text("date,open,high,low,close,volume\n2020-01-02,1,1,1,1,1\n")
    msg = _load_and_catch(tmp_path, tmp_path)
    assert "BAD NAME.csv" in msg and "'BAD NAME'" in msg, msg


def test_config_validation() -> None:
    cfg = from_dict(DataConfig, {"source": "synthetic", "symbols": ["SYN001"],
                                 "synthetic": {"symbols": 3, "freq": "1h"}}, "data")
    assert cfg.symbols == ("SYN001",) and cfg.synthetic.freq == "1h" and cfg.synthetic.bars == 2000
    # data.path is a dep of prepare: it must name something, data/raw unless the source is a file
    assert from_dict(DataConfig, {}, "data").path == DEFAULT_PATH == "data/raw"
    with pytest.raises(ConfigError, match="data.path"):
        from_dict(DataConfig, {"source": "file", "path": None}, "data")
    with pytest.raises(ConfigError, match="data.path"):
        from_dict(DataConfig, {"source": "file", "path": " "}, "data")
    with pytest.raises(ConfigError, match="data.path: got 'x.csv' with source 'bundled'"):
        from_dict(DataConfig, {"path": "x.csv"}, "data")
    with pytest.raises(ConfigError, match="'yahoo'"):
        from_dict(DataConfig, {"source": "yahoo"}, "data")
    with pytest.raises(ConfigError, match="seeed"):
        from_dict(DataConfig, {"synthetic": {"seeed": 1}}, "data")
    with pytest.raises(ConfigError, match="freq"):
        from_dict(SyntheticConfig, {"freq": "5min"}, "data.synthetic")


# --- synthetic ----------------------------------------------------------------------------


def test_synthetic_deterministic_and_prefix_stable() -> None:
    cfg = SyntheticConfig(symbols=4, bars=400, seed=11, signal_strength=0.1)
    b1, o1 = make_synthetic(cfg, (1, 5))
    b2, o2 = make_synthetic(cfg, (1, 5))
    pd.testing.assert_frame_equal(b1, b2, check_exact=True)
    pd.testing.assert_frame_equal(o1, o2, check_exact=True)
    b3, _ = make_synthetic(SyntheticConfig(symbols=4, bars=400, seed=12, signal_strength=0.1))
    assert not np.allclose(b1["close"], b3["close"])
    # A shorter run is a prefix of a longer one: later shocks never reach back in time.
    b4, o4 = make_synthetic(SyntheticConfig(symbols=4, bars=250, seed=11, signal_strength=0.1), (1, 5))
    head = b1.groupby("symbol").head(250).reset_index(drop=True)
    pd.testing.assert_frame_equal(b4, head, check_exact=True)
    ohead = o1.loc[o1.timestamp <= b4.timestamp.max()].reset_index(drop=True)
    pd.testing.assert_frame_equal(o4, ohead, check_exact=True)


def test_synthetic_panel_is_valid() -> None:
    cfg = SyntheticConfig(symbols=6, bars=500)
    bars, oracle = make_synthetic(cfg, (1, 3))
    _panel_contract(bars)
    pd.testing.assert_frame_equal(validate_bars(bars, "synthetic"), bars)
    assert bars.symbol.unique().tolist() == [f"SYN{i:03d}" for i in range(6)]
    assert (bars.groupby("symbol").size() == 500).all()
    assert (bars.timestamp.dt.day_of_week < 5).all()
    assert list(oracle.columns) == ["symbol", "timestamp", "horizon", "yhat"]
    assert len(oracle) == 2 * len(bars) and set(oracle.horizon) == {1, 3}
    freq = infer_frequency(bars)
    assert freq.label == "1D" and freq.periods_per_year == 252


def test_synthetic_zero_strength_oracle_is_zero() -> None:
    _, oracle = make_synthetic(SyntheticConfig(symbols=5, bars=300, signal_strength=0.0), (1, 5, 20))
    y = oracle["yhat"].to_numpy()
    assert (y == 0.0).all() and not np.signbit(y).any()


def _forward(bars: pd.DataFrame, h: int, n: int, t: int) -> np.ndarray:
    logc = np.log(bars["close"].to_numpy()).reshape(n, t)
    fwd = np.full_like(logc, np.nan)
    fwd[:, :-h] = logc[:, h:] - logc[:, :-h]
    return fwd


def test_synthetic_oracle_ic_matches_signal_strength() -> None:
    n, t = 50, 2000
    bars, oracle = make_synthetic(SyntheticConfig(symbols=n, bars=t, seed=3, signal_strength=0.1), (1, 5))
    for h, lo, hi in ((1, 0.07, 0.13), (5, 0.0, 1.0)):
        y = oracle.loc[oracle.horizon == h, "yhat"].to_numpy().reshape(n, t)
        fwd = _forward(bars, h, n, t)
        ok = ~np.isnan(fwd)
        ic = np.corrcoef(y[ok], fwd[ok])[0, 1]
        assert lo < ic < hi, (h, ic)
        # A conditional expectation is calibrated: regressing the outcome on it gives slope 1.
        slope = np.polyfit(y[ok], fwd[ok], 1)[0]
        assert 0.75 < slope < 1.25, (h, slope)


def _assert_oracle_uses_past_bars_only(bars, oracle, rebuilt, cfg, hs) -> None:
    """Bars after a cut, moved at random, leave the oracle up to the cut bit for bit and change it
    after (so the check can fail)."""
    cut = bars["timestamp"].unique()[150]
    later = (bars["timestamp"] > cut).to_numpy()
    rng = np.random.default_rng(0)
    changed = bars.copy()
    f = np.exp(rng.normal(0, 0.05, later.sum()))
    for c in ("open", "high", "low", "close"):
        changed.loc[later, c] = changed.loc[later, c] * f
    changed.loc[later, "volume"] *= np.exp(rng.normal(0, 1, later.sum()))
    again = oracle_from_bars(changed, cfg, hs)
    past = (oracle["timestamp"] <= cut).to_numpy()
    np.testing.assert_array_equal(again.loc[past, "yhat"].to_numpy(), rebuilt.loc[past, "yhat"].to_numpy())
    assert not np.allclose(again.loc[~past, "yhat"], rebuilt.loc[~past, "yhat"])


def test_synthetic_oracle_is_causal() -> None:
    cfg = SyntheticConfig(symbols=5, bars=300, seed=5, signal_strength=0.2)
    hs = (1, 2, 7)
    bars, oracle = make_synthetic(cfg, hs)
    rebuilt = oracle_from_bars(bars, cfg, hs)
    pd.testing.assert_frame_equal(rebuilt[["symbol", "timestamp", "horizon"]],
                                  oracle[["symbol", "timestamp", "horizon"]])
    np.testing.assert_allclose(rebuilt["yhat"], oracle["yhat"], rtol=0, atol=1e-12)

    _assert_oracle_uses_past_bars_only(bars, oracle, rebuilt, cfg, hs)


HARDER = [k for k in SIGNALS if k != "linear"]


@pytest.mark.parametrize("kind", HARDER)
def test_synthetic_signal_kinds_oracle_ic_at_planted_strength(kind: str) -> None:
    n, t = 50, 2000
    cfg = SyntheticConfig(symbols=n, bars=t, seed=3, signal_strength=0.1, signal=kind)
    bars, oracle = make_synthetic(cfg, (1, 5))
    want = planted_ic(cfg)
    assert 0.09 < want < 0.11, want  # drift/mixed: 0.1 up to the partial cycle of the strength
    for h in (1, 5):
        y = oracle.loc[oracle.horizon == h, "yhat"].to_numpy().reshape(n, t)
        fwd = _forward(bars, h, n, t)
        ok = ~np.isnan(fwd)
        ic = np.corrcoef(y[ok], fwd[ok])[0, 1]
        if h == 1:  # 1 / sqrt(100k rows) = 0.003 sampling sd (plus the market factor)
            assert abs(ic - want) < 0.025, (kind, ic, want)
        else:
            assert ic > 0.02, (kind, h, ic)
        slope = np.polyfit(y[ok], fwd[ok], 1)[0]  # the true conditional mean: slope 1
        assert 0.8 < slope < 1.2, (kind, h, slope)


def test_synthetic_signal_kinds_differ_from_linear() -> None:
    base = dict(symbols=8, bars=400, seed=4, signal_strength=0.1)
    _, lin = make_synthetic(SyntheticConfig(**base), (1,))
    for kind in HARDER:
        if kind != "drift":
            _, o = make_synthetic(SyntheticConfig(**base, signal=kind), (1,))
            r = np.corrcoef(o.yhat, lin.yhat)[0, 1]
            assert abs(r) < 0.9, (kind, r)
    # drift: the linear signal times a strength known from the bar's position alone
    _, o = make_synthetic(SyntheticConfig(**base, signal="drift"), (1,))
    ratio = o.yhat.to_numpy().reshape(8, 400)[:, 1:] / lin.yhat.to_numpy().reshape(8, 400)[:, 1:]
    np.testing.assert_allclose(ratio, np.broadcast_to(synthetic.drift_factor(np.arange(1, 400)), ratio.shape),
                               rtol=1e-9)
    assert ratio.min() < 0.75 and ratio.max() > 1.2  # 400 bars: half of a 750-bar cycle
    # cross-sectional: the signal behind the oracle sums to 0 over symbols at every bar
    cfg = SyntheticConfig(**base, signal="cross_sectional")
    _, o = make_synthetic(cfg, (1,))
    sbar = synthetic._params(cfg, synthetic._rngs(cfg.seed)[0]).sbar
    per_sym = o.yhat.to_numpy().reshape(8, 400) / sbar[:, None]
    np.testing.assert_allclose(per_sym.sum(axis=0), 0.0, atol=1e-12)
    assert np.abs(per_sym).max() > 1e-4
    # interaction: no forecast where the volume shock is ordinary, so many exact zeros
    _, o = make_synthetic(SyntheticConfig(**base, signal="interaction"), (1,))
    assert 0.5 < (o.yhat == 0.0).mean() < 0.8


def test_synthetic_cross_sectional_needs_two_symbols() -> None:
    with pytest.raises(ConfigError, match="data.synthetic.signal"):
        make_synthetic(SyntheticConfig(symbols=1, bars=300, signal="mixed"))
    with pytest.raises(ConfigError, match="signal"):
        from_dict(SyntheticConfig, {"signal": "nonlinear"}, "data.synthetic")


@pytest.mark.parametrize("kind", HARDER)
def test_synthetic_signal_kinds_oracle_is_causal(kind: str) -> None:
    cfg = SyntheticConfig(symbols=6, bars=300, seed=5, signal_strength=0.2, signal=kind)
    hs = (1, 2, 7)
    bars, oracle = make_synthetic(cfg, hs)
    rebuilt = oracle_from_bars(bars, cfg, hs)
    np.testing.assert_allclose(rebuilt["yhat"], oracle["yhat"], rtol=0, atol=1e-12)
    _assert_oracle_uses_past_bars_only(bars, oracle, rebuilt, cfg, hs)


def test_synthetic_hourly() -> None:
    bars, oracle = make_synthetic(SyntheticConfig(symbols=3, bars=7 * 30, freq="1h"), (1, 7))
    _panel_contract(bars)
    per_day = bars.groupby(["symbol", bars.timestamp.dt.normalize()]).size()
    assert (per_day == 7).all() and len(per_day) == 3 * 30
    times = sorted(bars.timestamp.dt.strftime("%H:%M").unique())
    assert times == ["10:00", "11:00", "12:00", "13:00", "14:00", "15:00", "16:00"]
    assert (bars.timestamp.dt.day_of_week < 5).all()
    freq = infer_frequency(bars)
    assert freq.intraday and freq.label == "1h" and freq.bars_per_day == 7
    assert len(oracle) == 2 * len(bars)


def test_load_bars_synthetic_aligns_oracle() -> None:
    cfg = DataConfig(source="synthetic", symbols=("SYN002", "SYN000"), start="2015-03-01",
                     min_bars=50, synthetic=SyntheticConfig(symbols=4, bars=300))
    bars, oracle = load_bars(cfg, horizons=(1, 5))
    assert oracle is not None
    assert bars.symbol.unique().tolist() == ["SYN000", "SYN002"]
    assert bars.timestamp.min() >= pd.Timestamp("2015-03-01")
    keys = oracle.loc[oracle.horizon == 1, ["symbol", "timestamp"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(keys, bars[["symbol", "timestamp"]])
    _, full = make_synthetic(cfg.synthetic, (1, 5))
    merged = oracle.merge(full, on=["symbol", "timestamp", "horizon"], suffixes=("", "_full"))
    assert len(merged) == len(oracle) and (merged.yhat == merged.yhat_full).all()


def test_symbol_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """'ABC\\n' passed a `^...$` check, because `$` also matches before a final newline."""
    df = _expected()
    df["symbol"] = df["symbol"].replace({"MSFT": "MSFT\n"})
    p = tmp_path / "bars.parquet"
    df.to_parquet(p, index=False)
    with pytest.raises(DataValidationError, match=r"'MSFT\\n'"):
        load_bars(_file_cfg(p))


def test_mixed_naive_and_offset_timestamps_are_refused(tmp_path: Path) -> None:
    df = _expected()
    stamps = (df["timestamp"] + pd.Timedelta(hours=9, minutes=30)).dt.strftime("%Y-%m-%d %H:%M:%S")
    df["timestamp"] = [s + ("-05:00" if i % 2 else "") for i, s in enumerate(stamps)]
    p = tmp_path / "bars.csv"
    df.to_csv(p, index=False)
    with pytest.raises(DataValidationError, match=r"line 2 .*'2020-01-02 09:30:00' has no UTC offset while "
                                                  r"row 1 \('2020-01-03 09:30:00-05:00'\) has one"):
        load_bars(_file_cfg(p))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_daily_bars_with_an_offset_keep_their_local_date(tmp_path: Path, fmt: str) -> None:
    """Tokyo daily bars at local midnight (+09:00) are 15:00 UTC of the day before: converting them
    would turn every Monday into a Sunday. They keep their date; intraday bars are converted."""
    df = _expected()
    if fmt == "csv":
        df["timestamp"] = df["timestamp"].dt.strftime("%Y-%m-%dT00:00:00+09:00")
        p = tmp_path / "bars.csv"
        df.to_csv(p, index=False)
    else:
        df["timestamp"] = df["timestamp"].dt.tz_localize("Asia/Tokyo")
        p = tmp_path / "bars.parquet"
        df.to_parquet(p, index=False)
    _check(p)  # the same dates as the naive file
    intraday = _expected()
    intraday["timestamp"] = (intraday["timestamp"] + pd.Timedelta(hours=10)).dt.strftime("%Y-%m-%d %H:%M+09:00")
    q = tmp_path / "intraday.csv"
    intraday.to_csv(q, index=False)
    exp = _expected()
    exp["timestamp"] = exp["timestamp"] + pd.Timedelta(hours=1)  # 10:00 Tokyo = 01:00 UTC
    _check(q, exp)


@pytest.mark.parametrize("unit", ["ns", "us", "s"])
def test_naive_datetime_column_missing_and_out_of_range(unit: str) -> None:
    """Typed naive timestamps (a parquet file, a request body) skip the text parsing, not the
    checks: a missing one and one past 2262 (which datetime64[s] and [us] can hold) are named."""
    df = _expected()
    df["timestamp"] = df["timestamp"].astype(f"datetime64[{unit}]")
    assert validate_bars(df, "typed.parquet").equals(validate_bars(_expected(), "typed.parquet"))
    missing = df.copy()
    missing.loc[2, "timestamp"] = pd.NaT
    with pytest.raises(DataValidationError, match=r"typed.parquet row 2 .*column 'timestamp'.*missing value"):
        validate_bars(missing, "typed.parquet")
    if unit != "ns":
        late = df.copy()
        late["timestamp"] = late["timestamp"].to_numpy().copy()
        vals = late["timestamp"].to_numpy().copy()
        vals[4] = np.datetime64("2300-01-02", unit)
        late["timestamp"] = vals
        with pytest.raises(DataValidationError, match=r"row 4 .*column 'timestamp'.*out of range.*between 1678 and 2262"):
            validate_bars(late, "typed.parquet")

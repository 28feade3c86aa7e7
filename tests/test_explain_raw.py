"""explain on networks that read raw OHLCV windows (``neural.inputs``): one permutation group
per resolution (``raw_<k>x<n>``) beside the feature groups, shuffled by the same code, and a
signal planted in the bars alone found in the resolution that holds it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphafactory.errors import ConfigError
from alphafactory.evaluation.explain import ExplainConfig, explain_models, model_dirs, raw_groups
from alphafactory.evaluation.report import fig_permutation
from alphafactory.raw_windows import InputsConfig, with_bars
from alphafactory.train import fit_models
from conftest import small_dataset

HORIZONS = (1, 5)
RES = [[1, 8], [5, 4]]  # the last 8 bars, and the last 4 blocks of 5 bars
TRAINER = {"epochs": 20, "batch_size": 128, "patience": 4, "lr": 3e-3}
PERM_COLUMNS = ["model", "horizon", "feature", "kind", "base_ic", "ic_drop", "ic_drop_std", "mse_rise", "n_rows"]


def intraday_bars(n_symbols: int = 3, n_bars: int = 700, seed: int = 0) -> pd.DataFrame:
    """OHLCV whose next return is planted in the last bar's body: the overnight gap into bar t+1
    is 0.8 x log(close_t / open_t) plus small noise, so the 1-bar return to t+1 has a correlation
    of about 0.6 with that body. The body is the last step's open channel of the 1-bar raw window
    (log(open_t / close_t)); a 5-bar block's open is 4 bars older and carries it only diluted."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_symbols):
        body = rng.normal(0, 0.01, n_bars)  # log(close_t / open_t)
        gap = np.r_[0.0, 0.8 * body[:-1]] + rng.normal(0, 0.002, n_bars)  # log(open_t / close_{t-1})
        log_close = np.log(50.0) + np.cumsum(gap + body)
        close, open_ = np.exp(log_close), np.exp(log_close - body)
        frames.append(pd.DataFrame({
            "symbol": f"S{s:02d}", "timestamp": pd.bdate_range("2019-01-01", periods=n_bars), "open": open_,
            "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.003, n_bars))),
            "low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.003, n_bars))),
            "close": close, "volume": rng.lognormal(12, 0.3, n_bars)}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """lstm on raw windows alone, tcn on features + raw windows, ridge on features, trained on the
    intraday panel and explained with name-prefix groups on every test row."""
    root = tmp_path_factory.mktemp("explain_raw")
    bars = intraday_bars()
    *_, ds = small_dataset(bars, HORIZONS)
    with_raw = with_bars(ds, bars)
    for name, kind, family in (("lstm", "raw", "neural"), ("tcn", "both", "neural_both")):
        extra = {"lookback": 8, "trainer": TRAINER, "inputs": {"kind": kind, "resolutions": RES}}
        fit_models(with_raw, (name,), {}, root / family, seed=0, extra=extra)
    fit_models(ds, ("ridge",), {}, root / "classical", seed=0)
    dirs = model_dirs([root / "neural", root / "neural_both", root / "classical"])
    cfg = ExplainConfig(permute="prefix", perm_rows=0, perm_seeds=3, seed=0)
    return explain_models(dirs, ds, cfg, bars=bars), ds, dirs, cfg


def test_raw_groups_are_the_channels_of_each_resolution():
    both = InputsConfig(kind="both", resolutions=((1, 8), (5, 4)))
    assert raw_groups(both, 3) == {"raw_1x8": [3, 4, 5, 6, 7], "raw_5x4": [8, 9, 10, 11, 12]}
    assert raw_groups(InputsConfig(kind="raw", resolutions=((1, 8), (5, 4))), 3)["raw_1x8"] == [0, 1, 2, 3, 4]
    assert raw_groups(InputsConfig(), 3) == {}


def test_raw_networks_get_a_group_per_resolution_beside_the_feature_groups(explained):
    result, ds, *_ = explained
    perm = result.permutation
    assert list(perm.columns) == PERM_COLUMNS  # the schema report and dvc plots read
    prefixes = {f.split("_", 1)[0] for f in ds.feature_names}
    got = {m: set(part["feature"]) for m, part in perm.groupby("model")}
    assert got == {"lstm": {"raw_1x8", "raw_5x4"}, "tcn": prefixes | {"raw_1x8", "raw_5x4"}, "ridge": prefixes}
    kinds = perm.set_index(["model", "feature"])["kind"]
    assert (kinds.loc["lstm"] == "raw").all() and (kinds.loc["ridge"] == "group").all()
    assert set(kinds.loc["tcn"].loc[["raw_1x8", "raw_5x4"]]) == {"raw"}
    assert set(kinds.loc["tcn"].drop(index=["raw_1x8", "raw_5x4"])) == {"group"}
    assert perm["ic_drop"].notna().all() and len(perm) == len(HORIZONS) * (2 + len(prefixes) + 2 + len(prefixes))
    models_csv = result.models.set_index("model")
    assert set(models_csv.index) == {"lstm", "tcn", "ridge"} and set(models_csv["method"]) == {"permutation"}
    # the raw networks score only the test rows with the history their windows read (20 bars)
    assert models_csv.loc["lstm", "n_rows"] <= models_csv.loc["ridge", "n_rows"]
    assert "<svg" in fig_permutation(perm, 1)  # the report's heat map draws the raw groups too


def test_the_planted_bar_signal_is_found_in_the_resolution_that_holds_it(explained):
    """The next return lives in the last bar's body: shuffling the 1-bar windows across rows
    destroys lstm's test IC at horizon 1; the 5-bar blocks hold it only diluted."""
    perm = explained[0].permutation
    lstm = perm[(perm["model"] == "lstm") & (perm["horizon"] == 1)].set_index("feature")
    assert lstm.loc["raw_1x8", "base_ic"] > 0.3, lstm.to_dict()
    assert lstm.loc["raw_1x8", "ic_drop"] > 0.25 and lstm.loc["raw_1x8", "mse_rise"] > 0.05, lstm.to_dict()
    assert lstm.loc["raw_1x8", "ic_drop"] > 3 * max(lstm.loc["raw_5x4", "ic_drop"], 0.0), lstm.to_dict()


def test_a_raw_network_without_the_bars_is_refused_in_one_line(explained):
    _, ds, dirs, cfg = explained
    with pytest.raises(ConfigError, match=r"\['lstm', 'tcn'\] read raw OHLCV windows .* expected the prepared bars"):
        explain_models(dirs, ds, cfg)

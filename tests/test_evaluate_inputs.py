"""The evaluate stage reads only what it scores (issue 19, memory): the test rows of the forecast
files a row group at a time, the label columns it uses, the labels and oracle within the test
window, the segments as a column. Every figure, forecast and plot table must be exactly those of
reading every table whole, as the stage did before."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
from alphafactory.dataset import horizons_of
from alphafactory.evaluation.evaluate import (
    EvaluateConfig,
    baseline_forecasts,
    evaluate,
    in_window,
    label_columns,
    models_in,
    read_oracle,
    read_scored_inputs,
    read_table,
    read_test_forecasts,
)
from alphafactory.labels import KEYS, LabelConfig, make_labels
from alphafactory.split import SplitConfig, assign_segments


def _write(df: pd.DataFrame, path, row_group_size: int = 700) -> str:
    """Several row groups, so that a read that takes them one at a time is exercised."""
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalin")
    bars, oracle = make_synthetic(SyntheticConfig(symbols=6, bars=400, signal_strength=0.3), (1, 5))
    labels = make_labels(bars, LabelConfig(horizons=(1, 5)))
    seg = assign_segments(labels, (1, 5), SplitConfig())
    rng = np.random.default_rng(0)
    files = []
    for name, models, proba in (("boosting", ["lightgbm", "xgboost"], True), ("classical", ["ridge"], False)):
        frames = []
        for m in models:
            for h in (1, 5):
                p = seg.merge(oracle[oracle["horizon"] == h][KEYS + ["yhat"]], on=KEYS)
                p = p[p["segment"] != "purged"]
                yhat = p["yhat"].to_numpy() + rng.normal(0, 0.01, len(p))
                f = pd.DataFrame({"symbol": p["symbol"].to_numpy(), "timestamp": p["timestamp"].to_numpy(),
                                  "segment": p["segment"].to_numpy(), "model": m, "horizon": h, "yhat": yhat})
                if proba:
                    f = f.assign(yhat_std=0.01, prob_up=1 / (1 + np.exp(-yhat / 0.01)))
                frames.append(f)
        files.append(_write(pd.concat(frames, ignore_index=True), d / f"{name}.parquet"))
    blend = pd.read_parquet(files[0])
    blend = blend[blend["model"] == "lightgbm"].assign(model="ensemble")
    files.append(_write(blend, d / "blend.parquet"))
    files.append(_write(pd.read_parquet(files[1]).iloc[:0], d / "backtest.parquet"))
    return {"preds": files, "bars": _write(bars, d / "bars.parquet"), "labels": _write(labels, d / "labels.parquet"),
            "segments": _write(seg, d / "segments.parquet"), "oracle": _write(oracle, d / "oracle.parquet")}


def _dump(ev) -> tuple:
    return (json.dumps(ev.metrics, sort_keys=True), ev.predictions, ev.plots)


def test_evaluate_on_what_is_read_equals_evaluate_on_whole_tables(inputs):
    cfg = EvaluateConfig()
    # before: every table read whole, the test rows masked after the concat, labels merged with segments
    labels, segments = pd.read_parquet(inputs["labels"]), pd.read_parquet(inputs["segments"])
    whole = pd.concat([pd.read_parquet(p) for p in inputs["preds"]], ignore_index=True)
    whole = whole[whole["segment"] == "test"].drop(columns="segment")
    base = baseline_forecasts(pd.read_parquet(inputs["bars"]), labels, segments, horizons_of(labels))
    old = evaluate(pd.concat([whole, base], ignore_index=True), labels, 252.0, cfg,
                   pd.read_parquet(inputs["oracle"]), ensembles=("ensemble",))
    # now: as stages/evaluate.py reads them
    preds = read_test_forecasts(inputs["preds"])
    pd.testing.assert_frame_equal(preds, whole.reset_index(drop=True), check_exact=True)
    lab = read_table(inputs["labels"], columns=label_columns(inputs["labels"]))
    assert "vol" not in lab.columns and not any(c.startswith("end_h") for c in lab.columns)
    base_new = baseline_forecasts(read_table(inputs["bars"], columns=["symbol", "close"]), lab,
                                  read_table(inputs["segments"]), horizons_of(lab))
    pd.testing.assert_frame_equal(base_new, base, check_exact=True)
    preds = pd.concat([preds, base_new], ignore_index=True)
    window = in_window(lab, preds)
    oracle = read_oracle(inputs["oracle"], preds)
    assert len(window) < len(lab) and 0 < len(oracle) < len(pd.read_parquet(inputs["oracle"]))  # really cut
    # the stage's one call gives exactly these three tables
    staged = read_scored_inputs(inputs["preds"], inputs["bars"], inputs["labels"], inputs["segments"], inputs["oracle"])
    for got, want in zip(staged, (preds, window, oracle), strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    new = evaluate(*staged[:2], 252.0, cfg, staged[2], ensembles=models_in(inputs["preds"][2]))
    assert models_in(inputs["preds"][2]) == ("ensemble",) and models_in(inputs["preds"][3]) == ()
    m_old, p_old, plots_old = _dump(old)
    m_new, p_new, plots_new = _dump(new)
    assert m_new == m_old
    assert '"oracle"' in m_new and '"cover_' in m_new  # the oracle and the calibration figures were scored
    pd.testing.assert_frame_equal(p_new, p_old, check_exact=True)
    assert plots_new.keys() == plots_old.keys()
    for k in plots_old:
        pd.testing.assert_frame_equal(plots_new[k], plots_old[k], check_exact=True)


def test_baselines_take_segments_in_any_order_and_refuse_a_mismatch(inputs):
    labels = pd.read_parquet(inputs["labels"])
    segments = pd.read_parquet(inputs["segments"])
    bars = pd.read_parquet(inputs["bars"])
    aligned = baseline_forecasts(bars, labels, segments, (1, 5))
    shuffled = segments.sample(frac=1.0, random_state=0).reset_index(drop=True)  # the merge path
    pd.testing.assert_frame_equal(baseline_forecasts(bars, labels, shuffled, (1, 5)), aligned, check_exact=True)
    with pytest.raises(ValueError, match="do not cover the labels rows one to one"):
        baseline_forecasts(bars, labels, segments.iloc[1:], (1, 5))


def test_empty_forecasts_read_as_empty_tables(inputs):
    empty = read_test_forecasts([inputs["preds"][3]])
    assert empty.empty and "segment" not in empty.columns and "yhat" in empty.columns
    assert read_oracle(inputs["oracle"], empty).empty
    assert in_window(pd.read_parquet(inputs["labels"]), empty).empty

"""The zero-shot Chronos family (``neural.chronos``) on tiny checkpoints this file builds and saves
itself (a random 1-layer T5 of each pipeline, as chronos-forecasting's own tests do): nothing is
downloaded, and every connection attempt is refused while the models load and forecast.

The registry-wide conformance test (tests/test_models.py) skips its fitted-model and ONNX checks
for chronos (a checkpoint path and the bars, which its synthetic feature panel lacks; no ONNX
export); this file runs those checks (shapes, same seed, save/load, future rows) on a real
dataset with bars."""
from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest

from alphafactory import models, raw_windows
from alphafactory.errors import ConfigError
from alphafactory.models.chronos_model import ChronosModel
from alphafactory.serving import onnx_runtime
from alphafactory.train import fit_forecast, fit_models, segment_data, wants_bars
from conftest import random_bars, small_dataset

HORIZONS = (1, 5)
CONTEXT = 24
LOOKBACK = 8
EXTRA = {"lookback": LOOKBACK, "trainer": {"epochs": 1}, "inputs": None}  # what the neural family passes


def _t5(**kw):
    from transformers import T5Config

    return T5Config(d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1,
                    dense_act_fn="relu", feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, **kw)


def build_bolt(path):
    """A random Chronos-Bolt checkpoint (quantile head, patches of 4) saved to ``path``."""
    import torch
    from chronos.chronos_bolt import ChronosBoltModelForForecasting

    torch.manual_seed(0)
    cfg = _t5(vocab_size=2, chronos_pipeline_class="ChronosBoltPipeline",
              architectures=["ChronosBoltModelForForecasting"],
              chronos_config={"context_length": CONTEXT, "prediction_length": 4, "input_patch_size": 4,
                              "input_patch_stride": 4, "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                              "use_reg_token": True})
    ChronosBoltModelForForecasting(cfg).save_pretrained(path)
    return path


def build_t5(path):
    """A random Chronos (T5, 64-token mean-scale bins, sampling) checkpoint saved to ``path``."""
    import torch
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = _t5(vocab_size=64, eos_token_id=1, architectures=["T5ForConditionalGeneration"],
              chronos_config={"tokenizer_class": "MeanScaleUniformBins",
                              "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0}, "n_tokens": 64,
                              "n_special_tokens": 2, "pad_token_id": 0, "eos_token_id": 1, "use_eos_token": True,
                              "model_type": "seq2seq", "context_length": CONTEXT, "prediction_length": 8,
                              "num_samples": 4, "temperature": 1.0, "top_k": 50, "top_p": 1.0})
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt (a download) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"chronos tried to open a connection: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("chronos")
    return {"bolt": build_bolt(root / "bolt"), "t5": build_t5(root / "t5")}


@pytest.fixture(scope="module")
def data():
    bars = random_bars(n_symbols=3, n_bars=160)
    ds = raw_windows.with_bars(small_dataset(bars, HORIZONS)[-1], bars)
    return bars, ds


@pytest.fixture(scope="module")
def fitted(checkpoints, data):
    _, ds = data
    block = {"path": str(checkpoints["bolt"]), "context_length": CONTEXT, "batch_size": 16}
    return fit_forecast(ds, "chronos", block, seed=0, extra=EXTRA)


def test_registered_as_a_neural_sequence_model_that_is_not_enabled_by_default():
    import yaml

    spec = models.get("chronos")
    assert (spec.family, spec.input_kind, spec.tasks) == ("neural", "sequence", ("regression",))
    params = yaml.safe_load(open("params.yaml"))
    assert "chronos" not in params["neural"]["models"]
    assert params["neural"]["chronos"]["path"] is None
    assert wants_bars({"inputs": None}, names=("chronos",)) and not wants_bars({"inputs": None}, names=("lstm",))


def test_forecasts_shapes_std_and_rows(fitted, data):
    _, ds = data
    model, forecasts = fitted
    assert model.pipeline_kind_ == "ChronosBoltPipeline" and model.history_ == {}
    for seg, (rows, mean, proba, std) in forecasts.items():
        assert proba is None and mean.shape == std.shape == (len(rows), len(HORIZONS)), seg
        assert np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all(), seg
        # every row has CONTEXT bars of its own symbol up to itself (the rest are dropped)
        assert (ds.bars.pos[ds.bar_rows[rows]] >= CONTEXT - 1).all()
    _, val = segment_data(ds, "val", "sequence", LOOKBACK, inputs=model.inputs)
    np.testing.assert_array_equal(model.predict(val.X), forecasts["val"][1])


@pytest.mark.filterwarnings("ignore:We recommend keeping prediction length")  # h5 > the checkpoint's 4 steps
def test_forecast_is_the_log_median_over_the_as_of_close(fitted, data):
    """yhat is log(q50 / close_t) of the pipeline run by hand on the row's last CONTEXT closes."""
    import torch

    bars, ds = data
    model, forecasts = fitted
    rows = forecasts["test"][0][:3]
    at = ds.bar_rows[rows]
    ctx = np.stack([bars["close"].to_numpy()[a - CONTEXT + 1:a + 1] for a in at])
    q, _ = model.pipeline_.predict_quantiles(torch.tensor(ctx, dtype=torch.float32), prediction_length=5,
                                             quantile_levels=[0.1, 0.5, 0.9])
    q = np.sort(q.numpy().astype(np.float64), -1)[:, [0, 4]]  # horizons 1 and 5
    expect = np.log(q[..., 1] / ctx[:, -1:])
    np.testing.assert_allclose(forecasts["test"][1][:3], expect, rtol=0, atol=1e-5)


def test_future_bars_do_not_change_earlier_forecasts(fitted, data):
    """All rows at once, a prefix, row by row, and with every bar after a cut scrambled: the
    forecasts of rows before the cut agree; rows after it do change (the check can fail)."""
    bars, ds = data
    model, forecasts = fitted
    _, test = segment_data(ds, "test", "sequence", LOOKBACK, inputs=model.inputs)
    rows = forecasts["test"][0]
    full = model.predict(test.X)
    n = len(rows) // 2
    np.testing.assert_allclose(model.predict(test.X.take(np.arange(n))), full[:n], rtol=0, atol=1e-5,
                               err_msg="prefix")
    one = np.concatenate([model.predict(test.X.take([i])) for i in range(0, len(rows), 7)])
    np.testing.assert_allclose(one, full[::7], rtol=0, atol=1e-5, err_msg="row by row")
    ts = ds.keys["timestamp"].to_numpy()[rows]
    cut = np.sort(np.unique(ts))[len(np.unique(ts)) // 2]
    later = bars["timestamp"].to_numpy() >= cut
    scrambled = bars.copy()
    rng = np.random.default_rng(1)
    for c in ("open", "high", "low", "close"):
        scrambled.loc[later, c] = scrambled.loc[later, c].to_numpy() * np.exp(rng.normal(0, 0.2, later.sum()))
    ds2 = raw_windows.with_bars(ds, scrambled)
    _, test2 = segment_data(ds2, "test", "sequence", LOOKBACK, inputs=model.inputs)
    again = model.predict(test2.X)
    before = ts < cut
    assert before.any() and (~before).any()
    np.testing.assert_allclose(again[before], full[before], rtol=0, atol=1e-5, err_msg="scrambled future")
    assert not np.allclose(again[~before], full[~before], atol=1e-5)


def test_bundle_windows_forecast_as_the_dataset_windows(fitted, data):
    """A bundle builds its windows with raw_windows.sequence_input from the request's bars."""
    _, ds = data
    model, forecasts = fitted
    rows = forecasts["test"][0]
    X = raw_windows.sequence_input(ds.X, rows, LOOKBACK, raw_windows.of_model(model), ds.bars, ds.bar_rows[rows])
    np.testing.assert_array_equal(model.predict(X), forecasts["test"][1])
    assert raw_windows.history_needed([model]) == CONTEXT


def test_training_stage_writes_its_own_std_and_a_bundle_loads_it_natively(checkpoints, data, tmp_path):
    """fit_models (the train stage) saves it with portable=True: no ONNX file, and the loader a
    bundle uses gives the native model, forecasting as the stage did."""
    _, ds = data
    block = {"path": str(checkpoints["bolt"]), "context_length": CONTEXT}
    (r,) = fit_models(ds, ("chronos",), {"chronos": block}, tmp_path, seed=0, extra=EXTRA)
    test = r.predictions[r.predictions["segment"] == "test"]
    assert len(test) and np.isfinite(test[["yhat", "yhat_std", "prob_up"]].to_numpy()).all()
    assert not (tmp_path / "chronos" / "onnx.json").exists()
    served = onnx_runtime.load(tmp_path / "chronos")
    assert isinstance(served, ChronosModel)
    rows = ds.rows("test")
    rows = rows[ds.bars.pos[ds.bar_rows[rows]] >= CONTEXT - 1]
    X = raw_windows.sequence_input(ds.X, rows, LOOKBACK, raw_windows.of_model(served), ds.bars, ds.bar_rows[rows])
    mean, std = served.predict_dist(X)
    h1 = test[test["horizon"] == 1]
    np.testing.assert_allclose(mean[:, 0], h1["yhat"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std[:, 0], h1["yhat_std"].to_numpy(), rtol=0, atol=1e-12)


def test_per_symbol_scope_forecasts_as_the_pooled_model(checkpoints, data, tmp_path):
    """Nothing is fitted, so one model per symbol (train.scope: per_symbol) forecasts what the
    pooled one does, and each saved member holds its own copy of the checkpoint."""
    _, ds = data
    blocks = {"chronos": {"path": str(checkpoints["bolt"]), "context_length": CONTEXT}}
    (pooled,) = fit_models(ds, ("chronos",), blocks, tmp_path / "pooled", seed=0, extra=EXTRA)
    (split,) = fit_models(ds, ("chronos",), blocks, tmp_path / "split", seed=0, extra=EXTRA, scope="per_symbol")
    assert split.model.symbols == ("S00", "S01", "S02")
    a, b = (r.predictions.sort_values(["segment", "symbol", "timestamp", "horizon"]) for r in (pooled, split))
    np.testing.assert_allclose(b["yhat"].to_numpy(), a["yhat"].to_numpy(), rtol=0, atol=1e-6)
    assert len(list((tmp_path / "split").rglob("model.safetensors"))) == 3


def test_same_seed_same_forecasts(fitted, checkpoints, data):
    _, ds = data
    block = {"path": str(checkpoints["bolt"]), "context_length": CONTEXT, "batch_size": 16}
    _, again = fit_forecast(ds, "chronos", block, seed=0, extra=EXTRA)
    for seg, (_, mean, _, std) in fitted[1].items():
        np.testing.assert_array_equal(again[seg][1], mean)
        np.testing.assert_array_equal(again[seg][3], std)


def test_save_copies_the_checkpoint_and_load_needs_no_source(fitted, checkpoints, data, tmp_path):
    _, ds = data
    model, forecasts = fitted
    source = tmp_path / "source"
    shutil.copytree(checkpoints["bolt"], source)
    model.root_ = source  # the copy, so it can be removed below
    models.save(model, tmp_path / "m", meta={"features": ds.feature_names}, portable=True)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert set(manifest["state"]["sha256"]) == {"config.json", "model.safetensors"}
    assert not list((tmp_path / "m").rglob("*.onnx")) and not list((tmp_path / "m").rglob("*.pkl"))
    shutil.rmtree(source)  # the saved model forecasts from its own copy
    loaded = models.load(tmp_path / "m")
    _, test = segment_data(ds, "test", "sequence", LOOKBACK, inputs=loaded.inputs)
    mean, std = loaded.predict_dist(test.X)
    np.testing.assert_array_equal(mean, forecasts["test"][1])
    np.testing.assert_array_equal(std, forecasts["test"][3])
    weights = tmp_path / "m" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="SHA-256 differs"):
        models.load(tmp_path / "m")


def test_chronos_t5_sampling_pipeline(checkpoints, data):
    _, ds = data
    block = {"path": str(checkpoints["t5"]), "context_length": CONTEXT, "num_samples": 8}
    model, fc = fit_forecast(ds, "chronos", block, seed=3, extra=EXTRA)
    assert model.pipeline_kind_ == "ChronosPipeline"
    rows, mean, _, std = fc["test"]
    assert np.isfinite(mean).all() and np.isfinite(std).all() and (std >= 0).all()
    _, test = segment_data(ds, "test", "sequence", LOOKBACK, inputs=model.inputs)
    np.testing.assert_array_equal(model.predict(test.X), mean)  # the same call, the same seed: the same samples


def _write(path, files):
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nowhere", r"neural.chronos.path: '.*nowhere' is not a directory; expected a local directory"),
    (lambda p: p, r"neural.chronos.path: '.*' has no \['config.json', 'model.safetensors'\]"),
    (lambda p: _write(p, {"config.json": b"{}", "pytorch_model.bin": b"x"}),
     r"has no \['model.safetensors'\].*pytorch_model.bin is a pickle and is not read"),
    (lambda p: _write(p, {"config.json": b"{}", "model.safetensors": b"x"}),
     r"neural.chronos.path: '.*' is not a loadable Chronos checkpoint: "),
], ids=["missing", "empty", "pickle only", "not chronos"])
def test_bad_checkpoint_path_is_one_line_naming_it(make, match, tmp_path, data):
    _, ds = data
    block = {"path": str(make(tmp_path)), "context_length": CONTEXT}
    with pytest.raises(ConfigError, match=match) as err:
        fit_forecast(ds, "chronos", block, seed=0, extra=EXTRA)
    assert "\n" not in str(err.value)


def test_unset_path_and_missing_bars_are_clear_errors(data):
    _, ds = data
    with pytest.raises(ConfigError, match=r"neural.chronos.path: not set; expected a local directory"):
        fit_forecast(ds, "chronos", {"context_length": CONTEXT}, seed=0, extra=EXTRA)
    bare = small_dataset(random_bars(n_symbols=2, n_bars=80), HORIZONS)[-1]
    with pytest.raises(ConfigError, match="need the prepared bars"):
        fit_forecast(bare, "chronos", {"context_length": CONTEXT}, seed=0, extra=EXTRA)
    with pytest.raises(ValueError, match="expected sequence windows with the prepared bars"):
        ChronosModel({"context_length": CONTEXT})._contexts(np.zeros((2, 3)))

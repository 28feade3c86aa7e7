"""neural.trainer.seeds: k networks per neural model, seeds seed .. seed+k-1, forecasting their
mean (class probabilities averaged, not logits); saved, loaded and exported to ONNX as one model;
k = 1 is the single network of before, byte for byte; the train stage's seed spread of the IC."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from alphafactory import models
from alphafactory.errors import ConfigError
from alphafactory.serving import onnx_runtime
from alphafactory.serving.onnx_runtime import OnnxModel
from alphafactory.train import SEED_IC_FILE, fit_models, log_curves, write_seed_spread
from test_models import HORIZONS, LOOKBACK, TRAINER, panel, segments
from test_per_symbol import dataset

K = 3


def make(name: str, seeds: int | None, task: str = "regression", seed: int = 0):
    trainer = dict(TRAINER) if seeds is None else {**TRAINER, "seeds": seeds}
    return models.create(name, None, horizons=HORIZONS, seed=seed, task=task, lookback=LOOKBACK, trainer=trainer)


_FITTED: dict[tuple, tuple] = {}


def fit(name: str, seeds: int | None, task: str = "regression", seed: int = 0):
    """(fitted model, test X); fitted once per session per arguments."""
    key = (name, seeds, task, seed)
    if key not in _FITTED:
        X, Y, codes = panel()
        (train, val), test_X, _ = segments(name, X, Y, codes, task)
        _FITTED[key] = make(name, seeds, task, seed).fit(train, val), test_X
    return _FITTED[key]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["lstm", "tcn"])
def test_k_seeds_train_k_distinct_networks_and_forecast_their_mean(name):
    model, test_X = fit(name, K)
    assert len(model.nets_) == K
    flat = [torch.cat([p.detach().flatten() for p in net.parameters()]) for net in model.nets_]
    for i in range(K):
        for j in range(i + 1, K):
            assert (flat[i] - flat[j]).abs().max() > 1e-3, (i, j)  # other seeds, other weights
    members = model.predict_members(test_X)  # (k, n, H)
    assert members.shape == (K, len(test_X), len(HORIZONS))
    assert np.abs(members[0] - members[1]).max() > 1e-4
    np.testing.assert_allclose(model.predict(test_X), members.mean(axis=0), rtol=1e-6, atol=1e-9)
    # each member is the network a single-seed model of that seed trains: same data, same rule
    for i in (0, 1):
        single, _ = fit(name, 1, seed=i)
        np.testing.assert_array_equal(members[i], single.predict(test_X))
    assert [m["seed"] for m in model.history_["members"]] == [0, 1, 2]
    assert all(len(m["val_loss"]) >= 1 and m["best_epoch"][0] < len(m["val_loss"]) for m in model.history_["members"])


def test_a_classifier_averages_probabilities_not_logits():
    model, test_X = fit("lstm", K, "classification")
    probs = model._member_outputs(test_X)  # k × (n, H, 3)
    np.testing.assert_allclose(model.predict_proba(test_X), np.mean(probs, axis=0), atol=1e-12)
    np.testing.assert_allclose(model.predict_proba(test_X).sum(-1), 1.0, atol=1e-9)
    logits = [np.log(p) for p in probs]  # softmax of mean log-probabilities = softmax of mean logits
    mean_logit = torch.softmax(torch.as_tensor(np.mean(logits, axis=0)), -1).numpy()
    assert np.abs(mean_logit - model.predict_proba(test_X)).max() > 1e-6  # the two rules differ here
    np.testing.assert_allclose(model.predict(test_X), model.predict_members(test_X).mean(0), rtol=1e-9)


@pytest.mark.parametrize("name, task", [("lstm", "regression"), ("tcn", "regression"), ("lstm", "classification")])
def test_save_load_and_onnx_export_of_k_networks(name, task, tmp_path):
    model, test_X = fit(name, K, task)
    models.save(model, tmp_path / "m", meta={}, portable=True)
    tensors = torch.load(tmp_path / "m/weights.pt", weights_only=True)
    assert {k.split(".")[0] for k in tensors if not k.startswith("_")} == {"0", "1", "2"}
    manifest = json.loads((tmp_path / "m/manifest.json").read_text())
    assert manifest["init"]["trainer"]["seeds"] == K
    loaded = models.load(tmp_path / "m")
    assert len(loaded.nets_) == K
    np.testing.assert_array_equal(loaded.predict(test_X), model.predict(test_X))
    portable = onnx_runtime.load(tmp_path / "m")  # one graph holding the k networks
    assert isinstance(portable, OnnxModel)
    ref = model.predict(test_X)
    np.testing.assert_allclose(portable.predict(test_X), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    if task == "classification":
        np.testing.assert_allclose(portable.predict_proba(test_X), model.predict_proba(test_X), atol=1e-6)
    import onnx

    inits = {i.name.split(".")[0] + "." + i.name.split(".")[1] for i in onnx.load(str(tmp_path / "m/net.onnx")).graph.initializer
             if i.name.startswith("nets.")}
    assert inits == {"nets.0", "nets.1", "nets.2"}


def test_same_seed_twice_gives_identical_bytes(tmp_path):
    X, Y, codes = panel()
    (train, val), _, _ = segments("tcn", X, Y, codes)
    for d in ("a", "b"):
        models.save(make("tcn", K).fit(train, val), tmp_path / d, meta={}, portable=True)
    for f in ("weights.pt", "net.onnx", "manifest.json"):
        assert digest(tmp_path / "a" / f) == digest(tmp_path / "b" / f), f


@pytest.mark.parametrize("name, task", [("lstm", "regression"), ("tcn", "classification")])
def test_one_seed_is_the_model_without_the_key(name, task, tmp_path):
    without, test_X = fit(name, None, task)
    one, _ = fit(name, 1, task)
    assert len(one.nets_) == 1 and "members" not in one.history_
    np.testing.assert_array_equal(one.predict(test_X), without.predict(test_X))
    assert one.history_ == without.history_
    models.save(without, tmp_path / "a", meta={}, portable=True)
    models.save(one, tmp_path / "b", meta={}, portable=True)
    for f in ("weights.pt", "net.onnx", "manifest.json"):
        assert digest(tmp_path / "a" / f) == digest(tmp_path / "b" / f), f


@pytest.mark.parametrize("value, match", [
    (0, r"^neural\.trainer\.seeds: got 0, expected >= 1$"),
    (-2, r"^neural\.trainer\.seeds: got -2, expected >= 1$"),
    (1.5, r"^neural\.trainer\.seeds: got 1\.5, expected an integer$"),
    (True, r"^neural\.trainer\.seeds: got True, expected an integer$"),
])
def test_bad_seeds_is_a_config_error_naming_the_key(value, match):
    with pytest.raises(ConfigError, match=match):
        make("lstm", value)


def test_train_stage_records_the_seed_spread_of_the_val_ic(tmp_path):
    ds = dataset(n_sym=4)
    extra = {"lookback": 4, "trainer": {**TRAINER, "epochs": 4, "seeds": K}}
    res = fit_models(ds, ("mlp",), {}, tmp_path / "models", seed=3, extra=extra)[0]
    spread = res.seed_ic
    assert set(spread) == {f"h{h}" for h in ds.horizons}
    s = spread["h1"]
    assert s["k"] == K and s["seeds"] == [3, 4, 5] and len(s["ic"]) == K
    assert s["ic_min"] <= s["ic_mean"] <= s["ic_max"] and s["ic_std"] > 0
    np.testing.assert_allclose(s["ic_std"], np.std(s["ic"], ddof=1))
    # the members' val IC, recomputed from their val forecasts
    val_rows = ds.rows("val")
    members = res.model.predict_members(ds.X[val_rows])
    y = ds.Y[val_rows, 0]
    ok = np.isfinite(y)
    np.testing.assert_allclose(s["ic"], [np.corrcoef(m[ok, 0], y[ok])[0, 1] for m in members], rtol=1e-9)
    live = tmp_path / "live"
    log_curves([res], live)
    write_seed_spread([res], live)
    assert json.loads((live / SEED_IC_FILE).read_text())["mlp"]["h1"]["ic"] == pytest.approx(s["ic"])
    curve = json.loads((live / "plots/custom/mlp.json").read_text())
    assert {r["split"] for r in curve} == {f"{sp} seed {k}" for sp in ("train", "val") for k in (3, 4, 5)}
    # one seed: no spread, no file
    one = fit_models(ds, ("mlp",), {}, tmp_path / "models1", seed=3,
                     extra={**extra, "trainer": {**extra["trainer"], "seeds": 1}})
    assert one[0].seed_ic is None
    write_seed_spread(one, tmp_path / "live1")
    assert not (tmp_path / "live1" / SEED_IC_FILE).exists()


def test_per_symbol_scope_trains_k_networks_per_symbol(tmp_path):
    ds = dataset(n_sym=2)
    extra = {"lookback": 4, "trainer": {**TRAINER, "epochs": 3, "seeds": 2}}
    res = fit_models(ds, ("mlp",), {}, tmp_path, seed=0, extra=extra, scope="per_symbol")[0]
    assert all(len(m.nets_) == 2 for m in res.model.members.values()) and res.seed_ic is None
    loaded = onnx_runtime.load(tmp_path / "mlp")
    X, syms = ds.X[-6:], ds.keys["symbol"].to_numpy()[-6:]
    np.testing.assert_allclose(loaded.predict(X, syms), res.model.predict(X, syms), rtol=1e-5, atol=1e-6)

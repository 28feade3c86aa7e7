"""Behaviour particular to the classical families (ridge, logistic, random_forest, svm); the shared contract
is checked for every registered model in test_models.py."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from alphafactory import models
from alphafactory.models.base import XY
from alphafactory.models.linear import Scaler, load_arrays, ridge_solve, save_arrays
from alphafactory.models.svm import SVMParams, fit_svr, predict_arrays

CLASSICAL = {"logistic": ("classification",), "random_forest": ("regression", "classification"),
             "ridge": ("regression",), "svm": ("regression",)}
SMALL_RF = {"n_estimators": 30, "min_child_samples": 10, "num_threads": 1}


def panel(n: int = 300, f: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X: (n, f) float32 with a few NaN; Y: (n, 2) float32, linear in X[:, 0] plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)).astype(np.float32)
    Y = np.stack([0.5 * X[:, 0] + rng.normal(0, 1, n), -0.3 * X[:, 0] + rng.normal(0, 1, n)], 1)
    X[rng.random(X.shape) < 0.02] = np.nan
    return X, Y.astype(np.float32)


def test_classical_models_are_registered_with_their_tasks():
    for name, tasks in CLASSICAL.items():
        spec = models.get(name)
        assert (spec.family, spec.input_kind, spec.tasks) == ("classical", "tabular", tasks)


def test_logistic_matches_scikit_learn():
    """Same objective as scikit-learn's multinomial LogisticRegression with C = 1 / (alpha · n)
    (sklearn minimises C·sum(loss) + |W|²/2; we minimise mean(loss) + alpha·|W|²/2)."""
    from sklearn.linear_model import LogisticRegression

    from alphafactory.models.linear import logistic_solve

    rng = np.random.default_rng(1)
    Z = rng.normal(size=(400, 4))
    k = np.digitize(Z[:, 0] + rng.normal(0, 1, 400), [-0.5, 0.5])
    alpha = 0.05
    W, b = logistic_solve(Z, k, alpha, max_iter=1000, tol=1e-10)
    ref = LogisticRegression(C=1 / (alpha * len(Z)), tol=1e-12, max_iter=5000).fit(Z, k)
    np.testing.assert_allclose(W, ref.coef_.T, atol=1e-5)
    np.testing.assert_allclose(b, ref.intercept_, atol=1e-5)


def test_logistic_is_regression_free_and_ordered():
    """Fitted on SHORT/NEUTRAL/LONG of a linear signal, P(LONG) rises with the signal and the
    expected-return forecast is ordered like it."""
    X, Y = panel(n=600)
    C = np.where(Y > 0.5, 2.0, np.where(Y < -0.5, 0.0, 1.0)).astype(np.float32)
    m = models.create("logistic", {"alpha": 0.01}, horizons=(1, 2), task="classification")
    m.fit(XY(X[:400], C[:400], R=Y[:400]), XY(X[400:], C[400:], R=Y[400:]))
    grid = np.zeros((5, 5), np.float32)
    grid[:, 0] = np.linspace(-2, 2, 5)
    p = m.predict_proba(grid)
    assert (np.diff(p[:, 0, 2]) > 0).all() and (np.diff(p[:, 0, 0]) < 0).all()
    assert (np.diff(m.predict(grid)[:, 0]) > 0).all() and (np.diff(m.predict(grid)[:, 1]) < 0).all()
    with pytest.raises(ValueError, match="does not support train.task 'regression'"):
        models.create("logistic", horizons=(1,))


def test_ridge_matches_the_hand_computed_solution():
    # One feature already standardised (mean 0, sd 1). Horizon 1: all 4 rows labelled; horizon 2:
    # the last row unlabelled. With an unpenalised intercept, b = S_zy / (S_zz + n·alpha) on
    # centred data, b0 = mean(y) - b·mean(z):
    #   h1: S_zz = 4, S_zy = 4, n = 4        → alpha=1: b = 4/8 = 1/2, b0 = 3/2
    #   h2: z = [-1, 1, -1], y = [0, 2, 1]   → S_zz = 8/3, S_zy = 2, n = 3 → b = 6/17, b0 = 19/17
    X = np.array([[-1.0], [1.0], [-1.0], [1.0]], np.float32)
    Y = np.array([[0, 0], [2, 2], [1, 1], [3, np.nan]], np.float32)
    m = models.create("ridge", {"alpha": 1.0}, horizons=(1, 2)).fit(XY(X, Y), XY(X, Y))
    np.testing.assert_allclose(m.coef_, [[1 / 2, 6 / 17]], rtol=1e-12)
    np.testing.assert_allclose(m.intercept_, [3 / 2, 19 / 17], rtol=1e-12)
    np.testing.assert_allclose(m.predict(np.array([[1.0], [np.nan]], np.float32)),
                               [[2.0, 25 / 17], [3 / 2, 19 / 17]], rtol=1e-12)  # NaN → train mean
    # alpha = 0 is ordinary least squares: h1 fits y = 1.5 + 1.0·z exactly in the mean.
    ols = models.create("ridge", {"alpha": 0.0}, horizons=(1, 2)).fit(XY(X, Y), XY(X, Y))
    np.testing.assert_allclose(ols.coef_[0, 0], 1.0, rtol=1e-12)


def test_ridge_solve_equals_scikit_learn_per_horizon():
    """Targets with different labelled rows are solved separately, each with alpha·n_rows."""
    from sklearn.linear_model import Ridge

    X, Y = panel()
    Y[-7:, 1] = np.nan
    Z = Scaler.fit(X, clip=None).transform(X)
    coef, intercept = ridge_solve(Z, Y.astype(np.float64), alpha=0.3)
    for j in range(2):
        ok = ~np.isnan(Y[:, j])
        ref = Ridge(alpha=0.3 * ok.sum()).fit(Z[ok], Y[ok, j])
        np.testing.assert_allclose(coef[:, j], ref.coef_, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(intercept[j], ref.intercept_, rtol=1e-8)


def test_scaler_handles_constant_and_missing_columns():
    X = np.array([[1.0, 2.0, np.nan], [3.0, 2.0, np.nan], [np.nan, 2.0, np.nan]])
    s = Scaler.fit(X, clip=0.5)
    np.testing.assert_array_equal(s.mean, [2.0, 2.0, 0.0])
    np.testing.assert_array_equal(s.scale, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(s.transform(X), [[-0.5, 0, 0], [0.5, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="infinite"):
        Scaler.fit(np.array([[np.inf], [1.0]]))


@pytest.mark.parametrize("name,task", [(n, t) for n, tasks in CLASSICAL.items() for t in tasks])
def test_val_is_never_used_for_fitting(name, task):
    X, Y = panel()
    if task == "classification":
        C = np.where(Y > 0.5, 2.0, np.where(Y < -0.5, 0.0, 1.0)).astype(np.float32)
        def xy(rows, sign=1):
            return XY(sign * X[rows], C[rows] if sign > 0 else 2 - C[rows], R=Y[rows])
    else:
        def xy(rows, sign=1):
            return XY(sign * X[rows], Y[rows] if sign > 0 else Y[rows] * 7 + 1)
    train, test, val = xy(slice(0, 200)), X[250:], slice(200, 250)
    params = SMALL_RF if name == "random_forest" else {}
    a = models.create(name, params, horizons=(1, 2), seed=3, task=task).fit(train, xy(val))
    b = models.create(name, params, horizons=(1, 2), seed=3, task=task).fit(train, xy(val, -1))
    np.testing.assert_array_equal(a.predict(test), b.predict(test))


def test_random_forest_averages_trees_and_is_not_early_stopped(tmp_path):
    X, Y = panel()
    m = models.create("random_forest", SMALL_RF, horizons=(1, 2)).fit(XY(X[:200], Y[:200]), XY(X[200:], Y[200:]))
    assert [e.num_trees() for e in m.estimators_] == [30, 30]
    assert all(len(c["val"]) == 30 for c in m.history_.values())
    # An average of leaf means stays within the range of the train targets (a boosted sum need not).
    pred = m.predict(np.random.default_rng(1).normal(0, 10, (500, 5)).astype(np.float32))
    assert (pred >= Y[:200].min(0)).all() and (pred <= Y[:200].max(0)).all()
    models.save(m, tmp_path / "rf")
    assert "average_output" in (tmp_path / "rf" / "h1.txt").read_text()


@pytest.mark.parametrize("kind", ["linear", "rbf"])
def test_svm_numpy_predictor_equals_scikit_learn(kind):
    X, Y = panel()
    p = SVMParams(kind=kind, C=1.0, max_rows=120)
    est, state = fit_svr(X, Y[:, 0], p, seed=0)
    Z = Scaler(state["mean"], state["scale"], p.clip).transform(X)
    ref = est.predict(Z) * state["y_scale"] + state["y_mean"]
    np.testing.assert_allclose(predict_arrays(state, X), ref, rtol=1e-9, atol=1e-12)
    if kind == "rbf":  # the documented row cap: a seeded subset of max_rows train rows
        assert int(state["rows_used"]) == 120 and len(state["support_vectors"]) <= 120


def test_svm_rbf_save_load_and_seeded_row_cap(tmp_path):
    X, Y = panel()
    params = {"kind": "rbf", "max_rows": 100}
    m = models.create("svm", params, horizons=(1, 2), seed=5).fit(XY(X[:250], Y[:250]), XY(X[250:], Y[250:]))
    models.save(m, tmp_path / "svm")
    loaded = models.load(tmp_path / "svm")
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    other = models.create("svm", params, horizons=(1, 2), seed=6).fit(XY(X[:250], Y[:250]), XY(X[250:], Y[250:]))
    assert not np.array_equal(other.predict(X), m.predict(X))  # another seed draws other rows


def test_save_arrays_is_byte_deterministic_and_plain(tmp_path):
    arrays = {"b": np.arange(3.0), "a": np.asarray(2.5), "empty": np.asarray([])}
    save_arrays(tmp_path / "x.npz", arrays)
    with zipfile.ZipFile(tmp_path / "x.npz") as zf:  # no wall-clock time in the zip entries
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    back = load_arrays(tmp_path / "x.npz")
    assert back.keys() == arrays.keys() and back["a"].shape == ()
    np.testing.assert_array_equal(back["b"], arrays["b"])


@pytest.mark.parametrize("name, params, match", [
    ("random_forest", {"bagging_fraction": 1.0}, "bagging_fraction"),
    ("ridge", {"alpha": -1.0}, "alpha"),
    ("svm", {"kind": "poly"}, "kind"),
    ("svm", {"gamma": 0.0}, "gamma"),
])
def test_bad_params_are_named(name, params, match):
    with pytest.raises(ValueError, match=match):
        models.create(name, params)


def test_blocked_ridge_is_the_one_matrix_solve_bit_for_bit(monkeypatch) -> None:
    """The scaler's column blocks, the design matrix filled in row blocks and the blocked predict
    (memory, issue 19) give exactly the bits of the whole-matrix float64 computation they replace:
    saved ridge models and forecasts do not change. Small blocks, so that every loop runs many
    times, over NaNs, an all-NaN and a constant column and targets labelled on different rows."""
    from alphafactory.models import linear
    from alphafactory.models.base import standardize

    monkeypatch.setattr(linear, "_COL_BLOCK", 3)
    monkeypatch.setattr(linear, "_ROW_BLOCK", 1000)  # the default 8192 is checked on the bundled pipeline
    rng = np.random.default_rng(3)
    n, F = 10_007, 11
    X = (rng.normal(size=(n, F)) * rng.uniform(0.1, 10, F)).astype(np.float32)
    X[rng.random((n, F)) < 0.05] = np.nan
    X[:, 4], X[:, 7] = np.nan, 2.5
    Y = X[:, :3].astype(np.float64) @ [[0.1, 0, 0.2], [0, 0.3, 0], [0.2, 0, 0.1]] + rng.normal(size=(n, 3))
    Y = np.nan_to_num(Y)
    Y[-30:, 2], Y[:25, 1] = np.nan, np.nan

    # the computation before the blocks: one float64 copy of everything
    X64 = X.astype(np.float64)
    seen = (~np.isnan(X64)).any(0)
    Xs = np.where(seen, X64, 0.0)
    std = np.nanstd(Xs, 0)
    mean, scale = np.nanmean(Xs, 0), np.where(std > 0, std, 1.0)
    Za = np.hstack([standardize(X64, mean, scale, 5.0), np.ones((n, 1))])
    beta = np.empty((F + 1, 3))
    for cols in ([0], [1], [2]):
        rows = ~np.isnan(Y[:, cols[0]])
        A = Za[rows]
        G = A.T @ A + rows.sum() * 1.0 * np.diag(np.r_[np.ones(F), 0.0])
        beta[:, cols] = np.linalg.solve(G, A.T @ Y[rows][:, cols])
    want_pred = Za[:, :-1] @ beta[:-1] + beta[-1]

    model = linear.RidgeModel({"alpha": 1.0, "clip": 5.0}, horizons=(1, 5, 20)).fit(XY(X, Y), XY(X[:50], Y[:50]))
    assert np.array_equal(model.scaler_.mean, mean) and np.array_equal(model.scaler_.scale, scale)
    assert np.array_equal(model.coef_, beta[:-1]) and np.array_equal(model.intercept_, beta[-1])
    assert np.array_equal(model.predict(X), want_pred)

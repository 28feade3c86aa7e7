"""boosting.catboost.border_count: null is 64 borders on a fit of fewer than 5,000 train rows
and CatBoost's own quantization (254 borders on CPU) from there; a value is passed through
whatever the rows, and it changes the fit."""
import numpy as np
import pytest

from alphafactory.errors import ConfigError
from alphafactory.models.base import XY
from alphafactory.models.catboost_model import SMALL_FIT_BORDERS, SMALL_FIT_ROWS, CatBoostParams


def _fit(n_train: int = 400, **kw):
    from alphafactory.models import create

    rng = np.random.default_rng(0)
    n = n_train + 200
    X = rng.normal(size=(n, 5)).astype(np.float32)
    Y = (0.3 * X[:, :1] + rng.normal(size=(n, 1))).astype(np.float32)
    m = create("catboost", {"iterations": 30, "early_stopping_rounds": 10, "thread_count": 1, **kw},
               horizons=(1,), seed=0)
    m.fit(XY(X[:n_train], Y[:n_train]), XY(X[n_train:n_train + 100], Y[n_train:n_train + 100]))
    return m, m.predict(X[n_train + 100:])


def _borders(m) -> int:
    return m.estimators_[0].get_all_params()["border_count"]


def test_null_is_coarse_on_a_small_fit_and_a_value_is_used():
    default, p_default = _fit()
    explicit, p_explicit = _fit(border_count=SMALL_FIT_BORDERS)
    coarse, p_coarse = _fit(border_count=8)
    assert _borders(default) == SMALL_FIT_BORDERS == 64
    np.testing.assert_array_equal(p_default, p_explicit)
    assert _borders(coarse) == 8
    assert not np.array_equal(p_default, p_coarse)


def test_null_is_catboosts_own_borders_from_small_fit_rows():
    large, p_large = _fit(n_train=SMALL_FIT_ROWS)
    own, p_own = _fit(n_train=SMALL_FIT_ROWS, border_count=254)
    assert _borders(large) == 254
    np.testing.assert_array_equal(p_large, p_own)
    below, _ = _fit(n_train=SMALL_FIT_ROWS - 1)
    assert _borders(below) == SMALL_FIT_BORDERS
    fine, _ = _fit(border_count=254)  # a value holds on a small fit too
    assert _borders(fine) == 254


def test_border_count_zero_is_an_error_naming_the_key():
    from alphafactory.config import from_dict

    with pytest.raises(ConfigError, match="boosting.catboost.border_count"):
        from_dict(CatBoostParams, {"border_count": 0}, "boosting.catboost")

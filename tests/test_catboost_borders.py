"""boosting.catboost.border_count: null is CatBoost's own quantization (254 borders on CPU), a
value is passed through, and it changes the fit."""
import numpy as np
import pytest

from alphafactory.errors import ConfigError
from alphafactory.models.base import XY
from alphafactory.models.catboost_model import CatBoostParams


def _fit(**kw):
    from alphafactory.models import create

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    Y = (0.3 * X[:, :1] + rng.normal(size=(600, 1))).astype(np.float32)
    m = create("catboost", {"iterations": 30, "early_stopping_rounds": 10, "thread_count": 1, **kw},
               horizons=(1,), seed=0)
    m.fit(XY(X[:400], Y[:400]), XY(X[400:500], Y[400:500]))
    return m, m.predict(X[500:])


def test_null_is_catboosts_own_borders_and_a_value_is_used():
    default, p_default = _fit()
    explicit, p_explicit = _fit(border_count=254)
    coarse, p_coarse = _fit(border_count=8)
    assert default.estimators_[0].get_all_params()["border_count"] == 254
    np.testing.assert_array_equal(p_default, p_explicit)
    assert coarse.estimators_[0].get_all_params()["border_count"] == 8
    assert not np.array_equal(p_default, p_coarse)


def test_border_count_zero_is_an_error_naming_the_key():
    from alphafactory.config import from_dict

    with pytest.raises(ConfigError, match="boosting.catboost.border_count"):
        from_dict(CatBoostParams, {"border_count": 0}, "boosting.catboost")

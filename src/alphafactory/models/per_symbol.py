"""``train.scope: per_symbol``: one fitted model of a family per symbol, forecasting as one.

Each symbol's model is an ordinary :class:`~alphafactory.models.base.Forecaster` (a registered
:class:`~alphafactory.models.base.Model` fitted on that symbol's train rows and early-stopped on
its val rows, or its ONNX export in a bundle). :mod:`alphafactory.models.persist` saves each in
its own subdirectory ``symbols/<k>/`` (native formats, its own manifest) under a top
``manifest.json`` with the same keys as a pooled model's plus ``scope`` and the symbol →
subdirectory map, so bundling and loading treat both scopes alike.

A :class:`PerSymbolModel` is a :class:`~alphafactory.models.base.Forecaster` like any other: it
routes each row of ``predict(X, symbols)`` to the model of ``symbols[i]``, and says which
symbols it has models for in ``symbols``. A symbol without a model is an error that names it;
forecasting symbols never seen in training needs ``train.scope: pooled``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from alphafactory.models.base import Forecaster

SCOPE = "per_symbol"


class PerSymbolModel(Forecaster):
    """members: {symbol: its fitted forecaster}, all of one registered model (name, horizons,
    task and lookback are theirs)."""

    def __init__(self, name: str, members: dict[str, Forecaster]) -> None:
        if not members:
            raise ValueError(f"{name}: a per-symbol model needs at least one symbol")
        first = next(iter(members.values()))
        self.name, self.family, self.input_kind = first.name, first.family, first.input_kind
        super().__init__(horizons=first.horizons, task=first.task)
        self.lookback = getattr(first, "lookback", None)  # sequence models: bars per window
        self.inputs = getattr(first, "inputs", None)  # networks: neural.inputs (raw_windows.of_model)
        self.distribution, self.dist_df = first.distribution, first.dist_df
        self.members = dict(members)
        self.symbols = tuple(sorted(self.members))
        self.meta_: dict[str, Any] = {}
        self.fitted_ = True  # its members are

    @property
    def first(self) -> Forecaster:
        """The model of the first symbol trained: what the others have in common (family,
        packages, constructor arguments)."""
        return next(iter(self.members.values()))

    def _groups(self, symbols: Any, n: int) -> dict[str, np.ndarray]:
        if symbols is None:
            raise ValueError(f"{self.name} was trained per symbol (train.scope: per_symbol): "
                             "forecasting needs each row's symbol, predict(X, symbols)")
        symbols = np.asarray(symbols, dtype=object)
        if symbols.shape != (n,):
            raise ValueError(f"{self.name} (per_symbol): got {symbols.shape[0] if symbols.ndim else 0} "
                             f"symbols for {n} rows; expected one symbol per row")
        unknown = sorted(set(symbols.tolist()) - set(self.members))
        if unknown:
            raise ValueError(f"{self.name} was trained per symbol (train.scope: per_symbol) and has no model "
                             f"for {unknown[:10]}; trained symbols: {list(self.symbols[:20])}. Forecasting unseen "
                             "symbols needs train.scope: pooled")
        return {s: np.flatnonzero(symbols == s) for s in dict.fromkeys(symbols.tolist())}

    def _apply(self, method: str, X: Any, symbols: Any, shape: tuple[int, ...]) -> np.ndarray:
        out = np.full((len(X), *shape), np.nan)
        for s, idx in self._groups(symbols, len(X)).items():
            part = X.take(idx) if hasattr(X, "take") and not isinstance(X, np.ndarray) else np.asarray(X)[idx]
            out[idx] = getattr(self.members[s], method)(part)
        return out

    def _predict(self, X: Any) -> np.ndarray:
        raise TypeError(f"{self.name} was trained per symbol: forecast with predict(X, symbols)")

    def predict(self, X: Any, symbols: Any = None) -> np.ndarray:
        """(n, H) forecasts; row i by the model of ``symbols[i]``."""
        return self._apply("predict", X, symbols, (len(self.horizons),))

    def predict_proba(self, X: Any, symbols: Any = None) -> np.ndarray:
        """Classification only: (n, H, 3) class probabilities; row i by the model of ``symbols[i]``."""
        return self._apply("predict_proba", X, symbols, (len(self.horizons), 3))

    def predict_dist(self, X: Any, symbols: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each (n, H), of a distributional family; row i by the model of ``symbols[i]``."""
        mean, std = (np.full((len(X), len(self.horizons)), np.nan) for _ in range(2))
        for s, idx in self._groups(symbols, len(X)).items():
            part = X.take(idx) if hasattr(X, "take") and not isinstance(X, np.ndarray) else np.asarray(X)[idx]
            mean[idx], std[idx] = self.members[s].predict_dist(part)
        return mean, std

    def expected_return(self, proba: np.ndarray, symbols: Any = None) -> np.ndarray:
        """(n, H, 3) class probabilities → (n, H), row i under the class returns of the model of
        ``symbols[i]``."""
        return self._apply("expected_return", proba, symbols, (len(self.horizons),))

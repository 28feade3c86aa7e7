"""``train.scope: per_symbol``: one fitted model of a family per symbol, saved and loaded as one.

Each symbol's model is an ordinary registered :class:`~alphafactory.models.base.Model`, fitted on
that symbol's train rows and early-stopped on its val rows, and saved in its own subdirectory
``symbols/<k>/`` (native formats, its own manifest). The top ``manifest.json`` has the same keys
as a pooled model's (model, family, input_kind, horizons, task, init, meta) plus ``scope`` and
the symbol → subdirectory map, so bundling and loading treat both scopes alike.

Forecasting needs each row's symbol: ``predict(X, symbols)``. A symbol without a model is an
error that names it; forecasting symbols never seen in training needs ``train.scope: pooled``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from alphafactory.io import Directory, atomic_dir
from alphafactory.models.base import FORMAT_VERSION, MANIFEST, Model, _version
from alphafactory.models.onnx_model import write_export

SCOPE = "per_symbol"


class PerSymbolModel:
    scope = SCOPE

    def __init__(self, name: str, members: dict[str, Model]) -> None:
        if not members:
            raise ValueError(f"{name}: a per-symbol model needs at least one symbol")
        first = next(iter(members.values()))
        self.name, self.family, self.input_kind = first.name, first.family, first.input_kind
        self.horizons, self.task = first.horizons, first.task
        self.lookback = getattr(first, "lookback", None)  # sequence models: bars per window
        self.members = dict(members)
        self.meta_: dict[str, Any] = {}

    @property
    def classifier(self) -> bool:
        return self.task == "classification"

    @property
    def symbols(self) -> list[str]:
        return sorted(self.members)

    def _groups(self, symbols: Any, n: int) -> dict[str, np.ndarray]:
        symbols = np.asarray(symbols, dtype=object)
        if symbols.shape != (n,):
            raise ValueError(f"{self.name} (per_symbol): got {symbols.shape[0] if symbols.ndim else 0} "
                             f"symbols for {n} rows; expected one symbol per row")
        unknown = sorted(set(symbols.tolist()) - set(self.members))
        if unknown:
            raise ValueError(f"{self.name} was trained per symbol (train.scope: per_symbol) and has no model "
                             f"for {unknown[:10]}; trained symbols: {self.symbols[:20]}. Forecasting unseen "
                             "symbols needs train.scope: pooled")
        return {s: np.flatnonzero(symbols == s) for s in dict.fromkeys(symbols.tolist())}

    def _apply(self, method: str, X: Any, symbols: Any, shape: tuple[int, ...]) -> np.ndarray:
        out = np.full((len(X), *shape), np.nan)
        for s, idx in self._groups(symbols, len(X)).items():
            part = X.take(idx) if hasattr(X, "take") and not isinstance(X, np.ndarray) else np.asarray(X)[idx]
            out[idx] = getattr(self.members[s], method)(part)
        return out

    def predict(self, X: Any, symbols: Any) -> np.ndarray:
        """(n, H) forecasts; row i by the model of ``symbols[i]``."""
        return self._apply("predict", X, symbols, (len(self.horizons),))

    def predict_proba(self, X: Any, symbols: Any) -> np.ndarray:
        """Classification only: (n, H, 3) class probabilities."""
        return self._apply("predict_proba", X, symbols, (len(self.horizons), 3))

    def save(self, directory: str | Path, meta: dict[str, Any] | None = None, *, portable: bool = False) -> None:
        """Write every symbol's model and the top manifest atomically (``portable``: as
        :meth:`Model.save`, every symbol's PyTorch model exported to ONNX)."""
        first = next(iter(self.members.values()))
        with atomic_dir(directory) as tmp:
            paths, like = {}, None
            for k, s in enumerate(self.symbols):
                paths[s] = f"symbols/{k:04d}"  # symbol names may hold any character: numbered dirs
                self.members[s].save(tmp / paths[s], meta={"symbol": s})
                if portable and self.family == "neural":  # one trace; the other symbols reuse its graph
                    like = write_export(self.members[s], tmp / paths[s], like=like,
                                        where=Path(directory) / paths[s])
            manifest = {
                "format_version": FORMAT_VERSION, "scope": SCOPE, "model": self.name, "family": self.family,
                "input_kind": self.input_kind, "horizons": list(self.horizons), "task": self.task,
                "init": first._init_kwargs(), "symbols": paths, "meta": meta or {},
                "versions": {p: _version(p) for p in ("alphafactory", "numpy", *first.packages)},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        self.meta_ = meta or {}

    @classmethod
    def load(cls, directory: Directory, manifest: dict[str, Any], *, portable: bool = False) -> PerSymbolModel:
        members = {s: Model.load(directory.sub(rel), portable=portable) for s, rel in manifest["symbols"].items()}
        obj = cls(manifest["model"], members)
        obj.meta_ = manifest.get("meta", {})
        return obj

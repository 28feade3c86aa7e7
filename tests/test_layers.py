"""The package's layers, checked rather than trusted.

- Imports run one way: the graph of the package's imports, read from every module's source
  (function-level imports included: a cycle broken by a deferred import is still a cycle), has
  no cycle.
- ``models/`` and ``serving/`` never import ``evaluation/``.
- ``serving/`` never imports PyTorch or scikit-learn: no module it reaches imports them (read
  from the source), and in a fresh process, loading a bundle (tree, linear and PyTorch models,
  the latter through their ONNX export) and forecasting with it leaves neither in ``sys.modules``.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alphafactory.blend import BlendConfig, Stacker
from alphafactory.serving.bundle import build_bundle
from alphafactory.train import fit_models
from conftest import random_bars, small_dataset

PKG = "alphafactory"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG
SERVING_BANNED = ("torch", "sklearn")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement in module ``name``, at any depth; a
    ``from package import name`` counts as an import of ``package.name`` when that is a module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in MODULES else mod, node.lineno))
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {package module it imports: line}} over every module of the package."""
    graph: dict[str, dict[str, int]] = {}
    for name in MODULES:
        edges = graph.setdefault(name, {})
        for target, line in _imports(name):
            # ``import alphafactory.x.y`` names x.y, which imports its packages: x.y is the edge
            if target in MODULES and target != name:
                edges.setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def closure(graph: dict[str, dict[str, int]], roots: list[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    return seen


def _show(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle[:-1], cycle[1:], strict=True)) + f" -> {cycle[-1]}"


def test_find_cycle_finds_one():
    """The checker itself: a cycle through a deferred import is found and printed."""
    g = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 9}, "d": {"a": 1}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None
    # a deferred (function-level) import is an edge like any other: `alphafactory predict --db`
    # imports the SQL writer inside inference.run
    assert f"{PKG}.serving.db" in import_graph()[f"{PKG}.serving.inference"]


def test_the_package_imports_have_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph[f"{PKG}.models.persist"], "the graph reads the package"
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {_show(cycle, graph)}"


def test_models_and_serving_never_import_evaluation():
    """Neither directly nor through another module (function-level imports included)."""
    graph = import_graph()
    for layer in ("models", "serving"):
        roots = [m for m in graph if m.startswith(f"{PKG}.{layer}.") or m == f"{PKG}.{layer}"]
        assert roots
        for m in roots:
            bad = [(t, line) for t, line in graph[m].items() if t.startswith(f"{PKG}.evaluation")]
            assert not bad, f"{MODULES[m]}: imports {bad} (the evaluation layer sits above {layer}/)"
        reached = sorted(m for m in closure(graph, roots) if m.startswith(f"{PKG}.evaluation"))
        assert not reached, f"{layer}/ reaches {reached} through other modules"


def test_nothing_serving_reaches_imports_torch_or_sklearn():
    """Every package module that ``serving/`` reaches (function-level imports included), read
    from its source: none imports PyTorch or scikit-learn. Model families reached through the
    registry at run time (by name, not by an import statement) are checked by the next test."""
    graph = import_graph()
    reached = closure(graph, [m for m in graph if m.startswith(f"{PKG}.serving")])
    assert f"{PKG}.serving.onnx_runtime" in reached and f"{PKG}.models.persist" in reached
    assert f"{PKG}.serving.app" in reached and f"{PKG}.serving.describe" in reached
    bad = [(m, t, line) for m in sorted(reached) for t, line in _imports(m) if t.split(".")[0] in SERVING_BANNED]
    assert not bad, f"serving/ reaches modules that import {SERVING_BANNED}: {bad}"


# -- a bundle built here, loaded and forecast with in a fresh process ----------------------------

HORIZONS = (1, 5)
FAST = {"lightgbm": {"n_estimators": 20, "min_child_samples": 10, "early_stopping_rounds": 5}}
NEURAL = {"lookback": 8, "trainer": {"epochs": 1, "batch_size": 128}}


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle dir, bars parquet): lightgbm, ridge and an LSTM (sequence, exported to ONNX)
    trained on a random 3-symbol panel, stacked and bundled as the pipeline's stages do."""
    root = tmp_path_factory.mktemp("layers")
    bars = random_bars(n_symbols=3, n_bars=420)
    freq, features, label, labels, ds = small_dataset(bars, HORIZONS)
    results = []
    for family, names, extra in (("boosting", ("lightgbm",), None), ("classical", ("ridge",), None),
                                 ("neural", ("lstm",), NEURAL)):
        results += fit_models(ds, names, FAST, root / "models" / family, seed=0, extra=extra)
    preds = pd.concat([r.predictions for r in results], ignore_index=True)
    stacker = Stacker(BlendConfig(), [r.name for r in results], HORIZONS).fit(preds, labels)
    stacker.save(root / "models" / "blend")
    info = {"frequency": freq.to_dict(), "symbols": sorted(bars["symbol"].unique())}
    build_bundle([root / "models" / f for f in ("boosting", "classical", "neural")], root / "models" / "blend",
                 root / "bundle", features=features, label=label, lookback=NEURAL["lookback"], info=info)
    bars.to_parquet(root / "bars.parquet")
    return root / "bundle", root / "bars.parquet"


FORECAST = """
import json, sys
import pandas as pd
import alphafactory.serving.app  # the HTTP service (FastAPI, uvicorn) too
from alphafactory.serving.inference import load_bundle, predict
bundle = load_bundle(sys.argv[1])
out = predict(pd.read_parquet(sys.argv[2]), bundle)
print(json.dumps({"rows": len(out), "models": sorted(bundle.models),
                  "kinds": sorted(type(m).__name__ for m in bundle.models.values()),
                  "banned": sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[3].split(","))}))
"""


def test_loading_a_bundle_and_forecasting_imports_neither_torch_nor_sklearn(small_bundle):
    bundle, bars = small_bundle
    out = subprocess.run([sys.executable, "-c", FORECAST, str(bundle), str(bars), ",".join(SERVING_BANNED)],
                         check=True, capture_output=True, text=True).stdout
    got = json.loads(out.splitlines()[-1])
    assert got["models"] == ["lightgbm", "lstm", "ridge"] and got["rows"] == 3 * len(HORIZONS)
    assert got["kinds"] == ["LightGBMModel", "OnnxModel", "RidgeModel"]  # the LSTM ran through ONNX Runtime
    assert got["banned"] == [], f"serving imported {got['banned']}"
    # the check can fail: the same process, once a PyTorch model is loaded natively, has torch
    code = FORECAST.replace("out = predict", "import alphafactory.models as m; m.load(sys.argv[1] + '/models/lstm')\nout = predict")
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(bars), ",".join(SERVING_BANNED)],
                         check=True, capture_output=True, text=True).stdout
    assert "torch" in json.loads(out.splitlines()[-1])["banned"]



def test_the_families_a_bundle_runs_through_onnx_are_those_that_export():
    """serving decides from a manifest (without importing the class) which models run through
    ONNX Runtime: its list of families must be exactly those whose class writes an export."""
    from alphafactory import models
    from alphafactory.models.base import Model
    from alphafactory.models.portable import exported

    for spec in models.REGISTRY.values():
        exports = spec.cls._export is not Model._export
        assert exports == exported({"family": spec.family, "model": spec.name}), (spec.name, spec.family, exports)

"""The real pipeline: `dvc repro`, `dvc exp run`, `dvc metrics diff`, push/pull, in a temporary
git repo holding a copy of this project with a small config (bundled data from 2008)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv: `python` in dvc.yaml and `dvc` itself come from here
MODELS = ["lightgbm", "xgboost", "catboost", "lstm", "tcn"]
pytestmark = pytest.mark.slow

SMALL = {
    "data": {"start": "2008-01-01"},
    "boosting": {"lightgbm": {"n_estimators": 150}, "xgboost": {"n_estimators": 150},
                 "catboost": {"iterations": 150}},
    "neural": {"trainer": {"epochs": 3, "batch_size": 128}, "lstm": {"hidden": 16}, "tcn": {"channels": 16}},
    "train": {"lookback": 10},
    "blend": {"catboost": {"iterations": 100}},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def sh(cwd: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p.stdout + p.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_project(dest: Path, overrides: dict) -> Path:
    for item in ("dvc.yaml", "stages", "src", ".gitignore", ".dvcignore"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / item)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "dvc", "init", "-q")
    sh(dest, "dvc", "config", "core.analytics", "false")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "project")
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("proj"), SMALL)
    out = sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "first run")
    return repo, out


def test_full_repro_trains_every_model_and_scores_the_test_period(project):
    repo, out = project
    assert ran_stages(out) == {"prepare", "featurize", "label", "split", "train_boosting",
                               "train_neural", "blend", "evaluate"}
    m = json.loads((repo / "metrics/test.json").read_text())
    for model in [*MODELS, "ensemble", "zero", "train_mean", "momentum", "buy_and_hold"]:
        for h in ("h1", "h5", "h20"):
            fig = m[model][h]
            for key in ("mae", "rmse", "r2", "dir_acc", "ic", "rank_ic", "sharpe", "max_drawdown"):
                assert key in fig, (model, h, key)
    assert m["zero"]["h1"]["dir_acc"] == 0.0  # the zero forecast is never right about the sign
    # Test period only: predictions start at the test boundary and carry realised values.
    preds = pd.read_parquet(repo / "data/predictions/test.parquet")
    assert list(preds.columns) == ["symbol", "timestamp", "horizon", "model", "yhat", "y"]
    seg = pd.read_parquet(repo / "data/split/segments.parquet")
    test_start = seg.loc[seg["segment"] == "test", "timestamp"].min()
    assert preds["timestamp"].min() >= test_start
    assert set(preds["model"]) >= set(MODELS) | {"ensemble"}
    assert preds[["yhat", "y"]].notna().all().all()
    # one row per model, symbol, timestamp and horizon
    assert not preds.duplicated(["model", "symbol", "timestamp", "horizon"]).any()
    # models really trained: forecasts vary, saved artifacts are native formats
    for model in MODELS:
        assert preds.loc[preds["model"] == model, "yhat"].std() > 0, model
    assert list((repo / "models/boosting/lightgbm").glob("h*.txt"))
    assert list((repo / "models/boosting/xgboost").glob("h*.ubj"))
    assert list((repo / "models/boosting/catboost").glob("h*.cbm"))
    assert (repo / "models/neural/lstm/weights.pt").exists()
    assert not list(repo.glob("models/**/*.pkl"))


def test_second_repro_is_a_noop(project):
    repo, _ = project
    out = sh(repo, "dvc", "repro")
    assert ran_stages(out) == set()
    assert "up to date" in sh(repo, "dvc", "status")


def test_code_change_marks_only_its_stages(project):
    repo, _ = project
    cases = {"src/alphafactory/models/tcn.py": {"train_neural"},
             "src/alphafactory/models/lightgbm_model.py": {"train_boosting"},
             "src/alphafactory/evaluate.py": {"evaluate"},
             "src/alphafactory/labels.py": {"label"}}
    for path, expected in cases.items():
        f = repo / path
        original = f.read_text()
        f.write_text(original + "\n# touched\n")
        try:
            status = json.loads(sh(repo, "dvc", "status", "--json"))
        finally:
            f.write_text(original)
        changed = {stage for stage, items in status.items()
                   if any("changed deps" in i for i in items if isinstance(i, dict))}
        assert changed == expected, (path, status)


def test_outputs_are_deterministic(project):
    repo, _ = project
    before = (repo / "dvc.lock").read_text()
    sh(repo, "dvc", "repro", "-f", "-s", "featurize", "label", "split", "train_boosting", "train_neural")
    assert (repo / "dvc.lock").read_text() == before
    assert "up to date" in sh(repo, "dvc", "status")


def test_exp_run_lookback_reruns_only_neural_blend_evaluate(project):
    repo, _ = project
    out = sh(repo, "dvc", "exp", "run", "-n", "lookback6", "-S", "train.lookback=6")
    assert ran_stages(out) == {"train_neural", "blend", "evaluate"}
    assert "lookback6" in sh(repo, "dvc", "exp", "show", "--no-pager")
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json"))
    changed = diff["metrics/test.json"]
    assert any(k.startswith("lstm.") for k in changed), sorted(changed)[:10]
    assert not any(k.startswith("lightgbm.h1.mae") for k in changed)  # boosting did not rerun
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")


def test_push_then_pull_in_a_fresh_clone_is_up_to_date(project, tmp_path):
    repo, _ = project
    remote = tmp_path / "remote"
    sh(repo, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "remote")
    sh(repo, "dvc", "push", "-q")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull", "-q")
    assert (clone / "models/boosting/lightgbm/manifest.json").exists()
    assert "up to date" in sh(clone, "dvc", "status")
    assert ran_stages(sh(clone, "dvc", "repro")) == set()

"""Helpers for tests that run the real `dvc` on a copy of this project in a temporary git repo."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv: `python` in dvc.yaml and `dvc` itself come from here
MODELS = ["lightgbm", "xgboost", "catboost", "lstm", "tcn", "ridge", "random_forest"]

SMALL = {
    "data": {"start": "2008-01-01"},
    "boosting": {"lightgbm": {"n_estimators": 150}, "xgboost": {"n_estimators": 150},
                 "catboost": {"iterations": 150}},
    "neural": {"trainer": {"epochs": 3, "batch_size": 128}, "lstm": {"hidden": 16}, "tcn": {"channels": 16}},
    "classical": {"random_forest": {"n_estimators": 100}},
    "train": {"lookback": 10},
    "blend": {"catboost": {"iterations": 100}},
    "explain": {"perm_rows": 300, "perm_seeds": 2},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def sh(cwd: Path, *args: str, check: bool = True) -> str:
    """Run a command in ``cwd``. Python (the stage commands DVC runs included) imports the
    package from ``cwd/src`` when there is one: the copy whose files ``dvc.lock`` hashes, not
    the editable install's. The OpenMP wait policy is left to the package (no OMP_WAIT_POLICY)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("OMP_WAIT_POLICY", None)
    if (Path(cwd) / "src").is_dir():
        env["PYTHONPATH"] = str(Path(cwd) / "src")
    else:
        env.pop("PYTHONPATH", None)
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p.stdout + p.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_project(dest: Path, overrides: dict) -> Path:
    for item in ("dvc.yaml", "stages", "src", "data/raw", ".gitignore", ".dvcignore"):
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
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # the custom plot templates
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "project")
    return dest

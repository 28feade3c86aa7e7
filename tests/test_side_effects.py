"""Forecasting and the ONNX export write nothing outside the working directory and the system temp
dir: importing ONNX Runtime used to write a device id and a telemetry event store to
``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` (``alphafactory/__init__.py`` now sets
``ORT_DISABLE_TELEMETRY=1`` first). Each check runs in a fresh process whose ``HOME`` is an empty
directory, and asserts it stays empty."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_utils import BIN


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment with an empty HOME, and nothing that would move or switch off
    what the libraries write there (so the code under test has to do it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(home)
    return env


def _written(home: Path) -> list[str]:
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*"))


@pytest.mark.slow
def test_predict_writes_nothing_to_home(project, tmp_path):
    repo, _ = project
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    subprocess.run([str(BIN / "alphafactory"), "predict", "--bars", str(repo / "data/prepared/bars.parquet"),
                    "--models", str(repo / "bundle"), "--asof", "all", "--out", "preds.parquet"],
                   cwd=work, env=_clean_env(home), check=True, capture_output=True)
    assert (work / "preds.parquet").stat().st_size > 0
    assert _written(home) == []


def test_onnx_export_and_session_write_nothing_to_home(tmp_path):
    """A PyTorch model saved for a bundle (the export, and the ONNX Runtime session that checks
    it), then loaded and run as an ONNX model: the neural training stage's and predict's paths."""
    home = tmp_path / "home"
    home.mkdir()
    script = f"""
import numpy as np
from alphafactory import models
from alphafactory.dataset import Windows
from alphafactory.models.base import XY
from alphafactory.serving import onnx_runtime
from alphafactory.serving.onnx_runtime import OnnxModel

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4)).astype(np.float32)
Y = (0.5 * X[:, :1] + rng.normal(0, 1, (200, 1))).astype(np.float32)
m = models.create("lstm", {{"hidden": 4}}, horizons=(1,), lookback=5, trainer={{"epochs": 1, "batch_size": 64}})
m.fit(XY(Windows(X, np.arange(4, 150), 5), Y[4:150]), XY(Windows(X, np.arange(150, 200), 5), Y[150:]))
models.save(m, {str(tmp_path / "lstm")!r}, meta={{}}, portable=True)
onnx = onnx_runtime.load({str(tmp_path / "lstm")!r})
assert isinstance(onnx, OnnxModel)
print(onnx.predict(Windows(X, np.arange(4, 200), 5)).shape)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_clean_env(home), check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "(196, 1)"
    assert (tmp_path / "lstm/net.onnx").is_file()
    assert _written(home) == []


def test_report_figures_write_nothing_to_home(tmp_path):
    """matplotlib (the report stage's figures) keeps a font cache and config under ~/.cache and
    ~/.config unless MPLCONFIGDIR says otherwise; alphafactory.evaluation.report points it at the temp dir."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in _clean_env(home).items() if k != "MPLCONFIGDIR"}
    script = ("import alphafactory.evaluation.report as r\n"
              "fig, ax = r.plt.subplots(); ax.plot([0, 1], [1, 0]); ax.set_title('x')\n"
              "import io; fig.savefig(io.BytesIO(), format='svg')\n")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    assert _written(home) == []

"""The package pins the OpenMP wait policy itself, for `dvc repro` run without the Makefile."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _spin_counts(code: str, **env: str) -> list[str]:
    """GOMP_SPINCOUNT of every OpenMP runtime loaded by ``code`` in a fresh interpreter:
    libgomp prints its settings at start-up under OMP_DISPLAY_ENV=verbose; passive waiting is a
    spin count of 0 (the default is 300000 spins before sleeping)."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**base, "PYTHONPATH": str(SRC), "OMP_DISPLAY_ENV": "verbose", **env})
    return re.findall(r"GOMP_SPINCOUNT = '(\d+)'", p.stderr)


def test_openmp_waits_passively_unless_the_user_says_otherwise():
    # what the train stage loads: LightGBM, XGBoost, CatBoost and PyTorch model modules
    code = ("import alphafactory.models.lightgbm_model, alphafactory.models.xgboost_model, "
            "alphafactory.models.lstm")
    counts = _spin_counts(code)
    assert counts and set(counts) == {"0"}, counts
    assert set(_spin_counts("import lightgbm")) == {"300000"}  # without the package: the default
    assert set(_spin_counts(code, OMP_WAIT_POLICY="active")) == {"30000000000"}  # the user's choice wins


def _onednn_isa(code: str, **env: str) -> list[str]:
    """The instruction set oneDNN reports (ONEDNN_VERBOSE=1) when ``code`` runs a convolution."""
    base = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    run = code + "\nimport torch\ntorch.nn.Conv1d(8, 8, 3)(torch.randn(4, 8, 32))\n"
    p = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, check=True,
                       env={**base, "PYTHONPATH": str(SRC), "ONEDNN_VERBOSE": "1", **env})
    return re.findall(r"onednn_verbose,v\d+,info,cpu,isa:([^\n]*)", p.stdout + p.stderr)


def test_onednn_uses_avx2_kernels_on_every_machine_unless_the_user_says_otherwise():
    """Networks trained on AVX-512 and on AVX2 machines used to differ (other kernels, other
    rounding); with the package imported, oneDNN picks its AVX2 kernels on both."""
    assert _onednn_isa("import alphafactory") == ["Intel AVX2"]
    assert _onednn_isa("import alphafactory", ONEDNN_MAX_CPU_ISA="SSE41") == ["Intel SSE4.1"]  # the user's choice wins

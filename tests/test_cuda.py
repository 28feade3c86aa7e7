"""The CUDA path of the shared trainer (issue 18: every network "trains on CUDA when present").

Where a GPU is present, every neural family trains on it (its weights on the device during the
fit), learns the planted signal of the conformance panel as on CPU, forecasts within float32
noise of the same network moved to CPU, and exports to an ONNX graph that ONNX Runtime (on CPU,
as bundles serve) evaluates to the PyTorch forecasts. Without a GPU those tests are skipped, and
what remains checks that asking for one is a clear error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alphafactory import models
from alphafactory.models import trainer as trainer_mod
from test_models import FAST, HORIZONS, LOOKBACK, N_FEAT, NEEDS_MORE, TRAINER, panel, segments

CUDA = torch.cuda.is_available()
NETWORKS = sorted(n for n, s in models.REGISTRY.items() if s.family == "neural" and n not in NEEDS_MORE)
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")


def test_cuda_requested_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        trainer_mod.select_device("cuda")
    assert trainer_mod.select_device("auto").type == "cpu"


@needs_cuda
@pytest.mark.parametrize("name", NETWORKS)
def test_trains_on_cuda_and_exports(name, tmp_path, monkeypatch):
    from alphafactory.serving import onnx_runtime

    seen: set[str] = set()
    fit_network = trainer_mod.fit_network

    def spy(net, *args, **kwargs):  # where the weights are once the fit has put them on its device
        to = net.to

        def moved(*a, **k):
            out = to(*a, **k)
            seen.update(p.device.type for p in net.parameters())
            return out

        net.to = moved
        try:
            return fit_network(net, *args, **kwargs)
        finally:
            del net.to

    monkeypatch.setattr(trainer_mod, "fit_network", spy)
    X, Y, codes = panel()
    (train, val), test_X, rows = segments(name, X, Y, codes)
    model = models.create(name, FAST.get(name, {}), horizons=HORIZONS, seed=0, task="regression",
                          lookback=LOOKBACK, trainer={**TRAINER, "device": "cuda"}).fit(train, val)
    assert "cuda" in seen, f"{name}: the weights never were on the GPU ({seen})"
    on_gpu = model.predict(test_X)
    ok = ~np.isnan(Y[rows, 0])
    assert np.corrcoef(on_gpu[ok, 0], Y[rows, 0][ok])[0, 1] > 0.15
    on_cpu = model._predict(test_X, torch.device("cpu"))
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5 * np.abs(on_cpu).max())
    models.save(model, tmp_path / name, meta={"features": [f"f{i}" for i in range(N_FEAT)]}, portable=True)
    portable = onnx_runtime.load(tmp_path / name)
    np.testing.assert_allclose(portable.predict(test_X), on_cpu, rtol=1e-5, atol=1e-6 * np.abs(on_cpu).max())

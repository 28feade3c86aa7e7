"""neural.trainer.epoch_rows / val_rows: the per-epoch budget of the networks on wide panels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from alphafactory import models
from alphafactory.dataset import Windows
from alphafactory.models import trainer as trainer_mod
from alphafactory.models.base import XY
from alphafactory.models.trainer import TrainerConfig, fit_network


class Counting(nn.Module):
    """A linear net that records the batch sizes it sees, in training and in eval mode."""

    def __init__(self, F: int) -> None:
        super().__init__()
        self.lin = nn.Linear(F, 2)
        self.train_rows: list[int] = []
        self.eval_rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (self.train_rows if self.training else self.eval_rows).append(len(x))
        return self.lin(x)


def xy(n: int, F: int = 3, seed: int = 0) -> XY:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    return XY(X, (X[:, :2] * 0.1 + rng.normal(size=(n, 2)) * 0.1).astype(np.float32))


def test_an_epoch_steps_through_epoch_rows_windows_and_a_new_draw_each_epoch(monkeypatch):
    train, val = xy(1000), xy(300, seed=1)
    net = Counting(3)
    seen = []
    real_batch = trainer_mod._batch

    def spy(X, idx):
        if X is train.X:
            seen.append(np.asarray(idx).copy())
        return real_batch(X, idx)

    cfg = TrainerConfig(epochs=3, batch_size=64, patience=10, epoch_rows=200, device="cpu")
    monkeypatch.setattr(trainer_mod, "_batch", spy)
    fit_network(net, train, val, cfg, seed=0)
    assert sum(net.train_rows) == 3 * 200  # 200 rows an epoch: batches of 64, 64, 64, 8
    per_epoch = [np.concatenate(seen[i * 4:(i + 1) * 4]) for i in range(3)]
    for rows in per_epoch:
        assert len(rows) == 200 and len(np.unique(rows)) == 200  # without replacement
    assert not np.array_equal(np.sort(per_epoch[0]), np.sort(per_epoch[1]))  # drawn anew


def test_the_early_stopping_loss_is_taken_on_val_rows_evenly_spaced_rows():
    train, val = xy(500), xy(1000, seed=1)
    net = Counting(3)
    cfg = TrainerConfig(epochs=2, batch_size=500, patience=10, val_rows=100, device="cpu")
    fit_network(net, train, val, cfg, seed=0)
    assert net.eval_rows == [100, 100]  # one forward per epoch on the same 100 rows
    sub = trainer_mod._val_subset(val, 100)
    idx = np.linspace(0, 999, 100).round().astype(int)
    np.testing.assert_array_equal(sub.X, val.X[idx])
    np.testing.assert_array_equal(sub.Y, val.Y[idx])


def test_a_window_subset_stays_lazy_and_holds_the_same_windows():
    base = np.arange(200 * 2, dtype=np.float32).reshape(200, 2)
    w = Windows(base, np.arange(7, 200), 8)
    Y = np.zeros((len(w), 1), np.float32)
    sub = trainer_mod._val_subset(XY(w, Y), 10)
    assert isinstance(sub.X, Windows) and len(sub.X) == 10
    idx = np.linspace(0, len(w) - 1, 10).round().astype(int)
    np.testing.assert_array_equal(sub.X[np.arange(10)], w[idx])


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_a_budget_the_data_fits_within_changes_nothing(name):
    """The default pipeline's panels are smaller than the budget: the same weights, bit for bit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    Y = (X[:, :1] * 0.1 + rng.normal(size=(300, 1)) * 0.1).astype(np.float32)
    if name == "lstm":
        X = Windows(X, np.arange(3, 300), 4)
        Y = Y[3:]
    n = len(Y)
    train, val = XY(X[:200] if name == "mlp" else X.take(np.arange(200)), Y[:200]), \
        XY(X[200:] if name == "mlp" else X.take(np.arange(200, n)), Y[200:])
    out = []
    for budget in ({}, {"epoch_rows": 200, "val_rows": n - 200}, {"epoch_rows": 10**6, "val_rows": 10**6}):
        m = models.create(name, {"hidden": 4} if name == "lstm" else {"hidden": 4, "layers": 1},
                          horizons=(1,), lookback=4, seed=3,
                          trainer={"epochs": 3, "batch_size": 32, "device": "cpu", **budget})
        m.fit(train, val)
        out.append([p.detach().numpy().copy() for p in m.net_.parameters()])
    for other in out[1:]:
        for a, b in zip(out[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_budget_below_one_row_is_a_config_error_naming_the_key():
    from alphafactory.errors import ConfigError

    with pytest.raises(ConfigError, match="neural.trainer.epoch_rows"):
        models.create("mlp", {}, horizons=(1,), lookback=1, trainer={"epoch_rows": 0})

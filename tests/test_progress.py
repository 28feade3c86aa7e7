"""Progress bars (alphafactory.progress): drawn on a terminal or when forced, silent otherwise,
and never a change to what is fitted."""
from __future__ import annotations

import io
import logging
import os
import pty
import re
import select

import numpy as np
import pytest

from alphafactory import models
from alphafactory.errors import ConfigError
from alphafactory.evaluation.explain import permutation_importance, shap_values
from alphafactory.progress import ENV, LogHandler, progress
from alphafactory.train import fit_models
from test_models import make, panel, segments
from test_per_symbol import FAST as PER_SYMBOL_FAST
from test_per_symbol import dataset

# what each family's bar shows: "<model> h<horizon>" and the val score per round, or per epoch
# the train and val loss
BARS = {
    "lightgbm": r"lightgbm h1: .*\d+/40 .*round.*val_l2=\d",
    "xgboost": r"xgboost h3: .*/40 .*round.*val_rmse=\d",
    "catboost": r"catboost h1: .*/40 .*round.*val_RMSE=\d",
    "random_forest": r"random_forest h3: .*40/40 .*round.*val_l2=\d",
    "lstm": r"lstm: .*\d+/15 .*epoch.*train_loss=[\d.]+, val_loss=[\d.]+, best=\d+, early stop",
}


def fit(name: str):
    (train, val), test, _ = segments(name, *panel())
    return make(name).fit(train, val), test


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", sorted(BARS))
def test_forced_bars_show_rounds_or_epochs_with_the_val_score(name, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    fit(name)
    err = capsys.readouterr().err
    assert re.search(BARS[name], err), err[-500:]


def test_no_bars_without_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)  # pytest's captured stderr is not a terminal
    for name in ("lightgbm", "catboost", "lstm"):
        fit(name)
    assert capsys.readouterr().err == ""


def test_no_bars_when_turned_off_even_on_a_terminal(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    for name in ("lightgbm", "catboost", "lstm"):
        fit(name)
    assert term.getvalue() == ""


def test_bars_are_drawn_on_a_terminal_by_default(monkeypatch):
    """On a real pseudo-terminal, as ``dvc repro`` run in a shell gives the stage; a new one
    reports a size of 0 x 0 (as under ``script`` without a terminal), where tqdm alone would
    draw empty lines."""
    monkeypatch.delenv(ENV, raising=False)
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as term:
        assert term.isatty() and os.get_terminal_size(slave).columns == 0
        monkeypatch.setattr("sys.stderr", term)
        fit("lightgbm")
        term.flush()
        out = b""
        while select.select([master], [], [], 0.5)[0]:
            out += os.read(master, 1 << 16)
    os.close(master)
    assert re.search(BARS["lightgbm"], out.decode("utf-8", "replace")), out[-500:]


@pytest.mark.parametrize("name", sorted(BARS))
def test_bars_do_not_change_the_fit(name, monkeypatch, tmp_path, capsys):
    fitted = {}
    for value in ("0", "1"):
        monkeypatch.setenv(ENV, value)
        model, test = fit(name)
        models.save(model, tmp_path / value)
        fitted[value] = (model.predict(test), model.history_)
    assert capsys.readouterr().err  # the second fit did draw bars
    np.testing.assert_array_equal(fitted["0"][0], fitted["1"][0])
    assert fitted["0"][1] == fitted["1"][1]
    files = sorted(p.relative_to(tmp_path / "0") for p in (tmp_path / "0").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*")
                                     if p.is_file())
    for f in files:
        assert (tmp_path / "0" / f).read_bytes() == (tmp_path / "1" / f).read_bytes(), f


def test_per_symbol_fits_and_explain_loops_draw_bars(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(ENV, "1")
    fit_models(dataset(), ("lightgbm",), PER_SYMBOL_FAST, tmp_path, seed=0, scope="per_symbol")
    model, test = fit("lightgbm")
    shap_values(model, test)
    Y = np.zeros((len(test), 2), np.float32) + np.arange(len(test))[:, None]
    permutation_importance(model, test, Y, {"f0": [0], "f1": [1]}, n_seeds=2)
    err = capsys.readouterr().err
    assert re.search(r"lightgbm per symbol: .*3/3 .*symbol", err), err[-500:]
    assert re.search(r"lightgbm SHAP: .*2/2 .*horizon", err)
    assert re.search(r"lightgbm permutation: .*2/2 .*group", err)  # one step per feature group (its shuffles)


def test_log_lines_are_written_above_an_open_bar(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    logger = logging.getLogger("test_progress")
    logger.propagate, handler = False, LogHandler(term)
    logger.addHandler(handler)
    try:
        with progress(desc="folds", total=3) as bar:
            bar.update(1)
            logger.warning("fold 2 of 3")
            bar.update(1)
    finally:
        logger.removeHandler(handler)
    text = term.getvalue()
    # the line starts at column 0 (a plain StreamHandler appends it to the bar: "...1/3 [...]fold 2")
    assert re.search(r"[\r\n]fold 2 of 3\n", text), repr(text)
    assert "3/3" not in text and "2/3" in text


def test_a_bad_setting_is_an_error_that_names_it(monkeypatch):
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ConfigError, match=f"{ENV}: got 'yes', expected 1"):
        progress(range(3), desc="x")

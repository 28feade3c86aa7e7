"""The pages of `dvc plots show` and `dvc plots diff` render every plot of dvc.yaml, in a real
browser: headless Chromium with the Vega, Vega-Lite and Vega-Embed versions the page asks for,
served from tests/browser/node_modules (scripts/render_check.py). A missing browser or package
fails these tests; .ci/run and `make test` install both.

Each plot must be embedded without error and draw data marks; the line charts draw every row of
their data; titles are not file paths and hold no quote; the time axes show dates. The first two
tests check the data files behind the plots without DVC."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from alphafactory.evaluation.evaluate import EvaluateConfig, plot_tables
from alphafactory.stage import write_csv
from alphafactory.train import log_curves
from pipeline_utils import MODELS, ROOT, sh

_spec = importlib.util.spec_from_file_location("render_check", ROOT / "scripts" / "render_check.py")
render_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_check)

# Warnings of DVC's own templates, not of a broken plot: the built-in scatter and confusion fill
# their unused `shape` and `row` anchors with {}, bar_horizontal_sorted binds zoom to a nominal
# scale; vega-embed notes that the spec's "$schema" names v5 and not the exact version.
HARMLESS = re.compile(r'Dropping \{\} from channel "(shape|row)"|Scale bindings are currently only supported'
                      r"|The (input|compiled) spec uses Vega(-Lite)? v5, but (the )?current version")
DATE_LABEL = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*( \d{1,2})?$|^\d{4}$")


def div_id(name: str) -> str:
    """The element id DVC gives a plot (dvc_render's Renderer.remove_special_chars)."""
    return name.translate({ord(c): "_" for c in r"!@#$%^&*()[]{};,<>?\/:.|`~=_+ "})


def declared_plots(repo: Path) -> dict[str, str]:
    """{div id: plot name} of every plot dvc.yaml declares: an entry with y files is one plot
    named by its title; an entry naming a directory is one plot per file in it."""
    out = {}
    for entry in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]:
        name, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        if (repo / name).is_dir() and not isinstance((props or {}).get("y"), dict):
            files = sorted(p.relative_to(repo).as_posix() for p in (repo / name).rglob("*") if p.is_file())
            assert files, f"plot directory {name} is empty"
            out.update({div_id(f): f for f in files})
        else:
            out[div_id(name)] = name
    return out


def check_page(repo: Path, html: Path, revs: list[str]) -> list[dict]:
    result = render_check.render(html, "plots")
    declared = declared_plots(repo)
    bad = render_check.problems(result, "plots", expected=len(declared))
    assert not bad, "\n".join(bad)
    plots = result["plots"]
    assert {p["id"] for p in plots} == set(declared), sorted({p["id"] for p in plots} ^ set(declared))
    assert [w for w in result["warnings"] if not HARMLESS.search(w)] == []
    for p in plots:
        name = declared[p["id"]]
        assert p["revs"] == revs, (name, p["revs"])
        assert p["title"] and not re.search(r"\.(csv|tsv|json)\b", p["title"]), (name, p["title"])
        assert not set("'\"") & set(name + p["title"]), name  # a quote breaks DVC's inline script
        assert len(set(p["axis_titles"])) >= 2, (name, p["axis_titles"])  # x and y are labelled
        if all(m["type"] == "line" for m in p["marks"]):  # every row of a line chart is a vertex
            assert sum(m["items"] for m in p["marks"]) == p["rows"], (name, p["marks"], p["rows"])
        if name.startswith(("Cumulative", "Rolling")):
            assert any(DATE_LABEL.match(label) for label in p["axis_labels"]), (name, p["axis_labels"])
            assert {"model", "kind"} <= set(p["legend_titles"]), (name, p["legend_titles"])
    return plots


def test_plot_tables_are_long_with_iso_dates_and_byte_stable(tmp_path):
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2021-01-04", periods=40)
    table = pd.DataFrame({"symbol": np.repeat(["A", "B"], 40), "timestamp": np.tile(days, 2)})
    table["y"] = table["ret"] = rng.normal(0, 0.01, 80)
    table["lightgbm"], table["zero"] = table["y"] + rng.normal(0, 0.01, 80), 0.0
    tables = plot_tables(table, ["lightgbm", "zero"], 1, EvaluateConfig(ic_window=5))
    cum, roll = tables["cumulative_return.csv"], tables["rolling_ic.csv"]
    assert list(cum.columns) == ["timestamp", "model", "kind", "cumulative_return"]
    assert list(roll.columns) == ["timestamp", "model", "kind", "rolling_ic"]
    assert set(cum["model"]) == {"lightgbm", "zero"} and set(roll["model"]) == {"lightgbm"}  # zero has no IC
    assert dict(zip(cum["model"], cum["kind"], strict=True)) == {"lightgbm": "model", "zero": "baseline"}
    assert cum["timestamp"].iloc[0] == "2021-01-04T00:00:00" and roll["rolling_ic"].notna().all()
    blobs = []
    for run in range(2):
        write_csv(plot_tables(table, ["lightgbm", "zero"], 1, EvaluateConfig(ic_window=5))["rolling_ic.csv"],
                  str(tmp_path / f"{run}.csv"))
        blobs.append((tmp_path / f"{run}.csv").read_bytes())
    assert blobs[0] == blobs[1]


def test_log_curves_one_file_per_model_with_a_curve(tmp_path):
    boost = SimpleNamespace(symbols=None, classifier=False, history_={"h1": {"train": [3.0, 2.0, 1.0], "val": [3.5, 3.0, 3.2]},
                                                        "h5": {"train": [4.0, 3.0], "val": [4.5, 4.4]}})
    net = SimpleNamespace(symbols=None, classifier=True, history_={"train_loss": [1.1, 0.9], "val_loss": [1.2, 1.0],
                                                     "best_epoch": [1]})
    ridge = SimpleNamespace(symbols=None, classifier=False, history_={"h1": {"train": [1.0], "val": [1.5]}})
    results = [SimpleNamespace(name=n, model=m) for n, m in (("gbm", boost), ("net", net), ("ridge", ridge))]
    for run in ("a", "b"):
        log_curves(results, tmp_path / run)
    files = sorted(p.name for p in (tmp_path / "a/plots/custom").iterdir())
    assert files == ["gbm.json", "net.json"]  # ridge: one point per curve, no chart
    gbm = json.loads((tmp_path / "a/plots/custom/gbm.json").read_text())
    assert gbm[0] == {"model": "gbm", "horizon": "h1", "split": "train", "step": 1, "MSE": 3.0}
    assert len(gbm) == 10 and {(r["horizon"], r["split"]) for r in gbm} == {
        (h, s) for h in ("h1", "h5") for s in ("train", "val")}
    net_rows = json.loads((tmp_path / "a/plots/custom/net.json").read_text())
    assert list(net_rows[-1]) == ["model", "horizon", "split", "step", "log loss"]  # DVC's y: the last key
    assert {r["horizon"] for r in net_rows} == {"all"} and {r["split"] for r in net_rows} == {"train", "val"}
    for name in files:
        assert (tmp_path / "a/plots/custom" / name).read_bytes() == (tmp_path / "b/plots/custom" / name).read_bytes()


@pytest.fixture(scope="module")
def pages(project, tmp_path_factory) -> dict[str, Path]:
    """The `dvc plots show` page of the pipeline's run, and the `dvc plots diff HEAD` page after
    an experiment that changes the rolling-IC window (reruns evaluate and report only)."""
    repo, _ = project
    out = tmp_path_factory.mktemp("plots")
    sh(repo, "dvc", "plots", "show", "-o", str(out / "show"))
    sh(repo, "dvc", "exp", "run", "-n", "icwindow", "-S", "evaluate.ic_window=42")
    try:
        sh(repo, "dvc", "plots", "diff", "HEAD", "-o", str(out / "diff"))
    finally:
        sh(repo, "git", "checkout", "--", ".")
        sh(repo, "dvc", "checkout", "-q")
    return {"show": out / "show" / "index.html", "diff": out / "diff" / "index.html"}


@pytest.mark.slow
def test_plots_show_renders_every_plot(project, pages):
    repo, _ = project
    plots = check_page(repo, pages["show"], ["workspace"])
    titles = " ".join(p["title"] for p in plots)
    # one training-curve chart per model with a curve; ridge is fitted once and has none
    curves = {m for m in MODELS if f"Training curves: {m}" in titles}
    assert curves == set(MODELS) - {"ridge"}, curves
    bars = next(p for p in plots if p["id"].startswith("Top_features"))
    features = [label for label in bars["axis_labels"] if not re.match(r"^[\d.−-]+$", label)]
    top = (repo / "metrics/explain/top_features.csv").read_text().splitlines()[1:]
    assert features == [line.split(",")[1] for line in top]  # sorted by importance, largest first


@pytest.mark.slow
def test_plots_diff_renders_every_plot_of_both_revisions(project, pages):
    repo, _ = project
    plots = check_page(repo, pages["diff"], ["workspace", "HEAD"])
    # the revisions differ: a 42-bar window (workspace) starts earlier than HEAD's 63-bar one
    head_rows = len((repo / "metrics/plots/rolling_ic.csv").read_text().splitlines()) - 1  # HEAD again
    roll = next(p for p in plots if p["id"].startswith("Rolling_IC"))
    assert roll["rows"] > 2 * head_rows > 0, (roll["rows"], head_rows)

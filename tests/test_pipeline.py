"""The real pipeline: `dvc repro`, `dvc exp run`, `dvc metrics diff`, push/pull, in a temporary
git repo holding a copy of this project with a small config (bundled data from 2008).

The `project` fixture (conftest.py) runs the pipeline once per session; tests that change the
repo put it back as they found it."""
from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest

from pipeline_utils import MODELS, ran_stages, sh

pytestmark = pytest.mark.slow
TRAIN = {"train@boosting", "train@neural", "train@classical"}
STAGES = {"check_params", "prepare", "featurize", "label", "split", "tune", *TRAIN, "blend", "bundle", "backtest",
          "evaluate", "cv", "explain", "report"}


def test_stage_commands_run_the_code_dvc_hashes(project):
    """The stages import the package from the project's own src/ (whose files dvc.lock hashes),
    not from wherever the package is installed."""
    repo, _ = project
    out = sh(repo, "python", "-c", "import alphafactory, os; print(alphafactory.__file__, os.environ['OMP_WAIT_POLICY'])")
    path, policy = out.split()
    assert path == str(repo / "src/alphafactory/__init__.py") and policy == "passive"


def test_full_repro_trains_every_model_and_scores_the_test_period(project):
    repo, out = project
    assert ran_stages(out) == STAGES
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


def test_cv_metrics_per_fold_mean_and_std(project):
    repo, _ = project
    cv = json.loads((repo / "metrics/cv.json").read_text())
    spans = json.loads((repo / "metrics/cv_folds.json").read_text())  # bookkeeping, not metrics
    folds = [f"fold{i}" for i in range(4)]  # split.cv_folds expanding folds
    assert sorted(spans) == folds and set(cv) == {"lightgbm", "ridge"}
    # every fold lies before the test segment
    seg = pd.read_parquet(repo / "data/split/segments.parquet")
    test_start = seg.loc[seg["segment"] == "test", "timestamp"].min()
    for span in spans.values():
        assert span["train_end"] < span["val_start"] and pd.Timestamp(span["test_end"]) < test_start
    for model in ("lightgbm", "ridge"):  # cv.models
        for h in ("h1", "h5", "h20"):
            entry = cv[model][h]
            assert set(entry) == {*folds, "mean", "std"}
            for part in entry.values():
                assert all(math.isfinite(v) for v in part.values()), (model, h, part)
    # not a declared metrics file (only the headline is), yet `--targets` reads it: cv.val_frac
    # reruns cv alone and `dvc metrics diff --targets` shows the change
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))
    assert set(shown[""]["data"]) == {"metrics/headline.json"}
    out = sh(repo, "dvc", "exp", "run", "-n", "cvval", "-S", "cv.val_frac=0.3")
    assert ran_stages(out) == {"check_params", "tune", "cv"}  # tune reads cv.val_frac (nothing tuned: a no-op)
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json", "--targets", "metrics/cv.json"))
    assert "lightgbm.h1.mean.ic" in diff["metrics/cv.json"], sorted(diff["metrics/cv.json"])[:10]
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")


def test_walk_forward_refits_are_scored_beside_the_single_fits(project):
    repo, _ = project
    m = json.loads((repo / "metrics/test.json").read_text())
    assert m["_models"]["walk_forward"] == ["lightgbm_wf", "ridge_wf"]  # backtest.models
    assert {"lightgbm_wf", "ridge_wf"} <= set(m["_selection"]["candidates"])  # counted in the DSR trials
    blocks = json.loads((repo / "metrics/backtest_folds.json").read_text())
    wf = pd.read_parquet(repo / "data/preds/backtest.parquet")
    single = pd.read_parquet(repo / "data/preds/boosting.parquet")
    single = single[(single["model"] == "lightgbm") & (single["segment"] == "test")]
    # the blocks forecast exactly the single fit's test rows, each once
    lgb = wf[wf["model"] == "lightgbm_wf"]
    keys = ["symbol", "timestamp", "horizon"]
    assert not lgb.duplicated(keys).any() and len(lgb) == len(single)
    assert len(lgb.merge(single[keys], on=keys)) == len(single)
    assert sum(b["test_rows"] for b in blocks.values()) * 3 == len(lgb)  # 3 horizons
    for b in blocks.values():  # each refit fits (train, then val) before the block it forecasts
        assert b["train_end"] < b["val_start"] <= b["val_end"] < b["test_start"]
    for h in ("h1", "h5", "h20"):
        assert math.isfinite(m["lightgbm_wf"][h]["ic"]) and m["lightgbm_wf"][h]["n"] == m["lightgbm"][h]["n"]
    head = json.loads((repo / "metrics/headline.json").read_text())
    assert head["h1"]["walk_forward"]["model"] in ("lightgbm_wf", "ridge_wf")
    assert head["h1"]["walk_forward"]["single_fit"]["model"] == head["h1"]["walk_forward"]["model"][:-3]
    assert "Does the edge survive refitting?" in (repo / "reports/index.html").read_text()


def test_second_repro_is_a_noop(project):
    repo, _ = project
    out = sh(repo, "dvc", "repro")
    assert ran_stages(out) == set()
    assert "up to date" in sh(repo, "dvc", "status")


def test_code_change_marks_only_its_stages(project):
    repo, _ = project
    # The stages that pick models at run time (train@<family> by its params, cv by cv.models,
    # explain by the saved manifests) depend on the whole model directory; blend and bundle
    # import a few model modules by name (tests/test_dvc_deps.py derives all of them).
    picks_models = {*TRAIN, "cv", "backtest", "tune", "explain"}
    cases = {"src/alphafactory/models/tcn.py": picks_models,
             "src/alphafactory/models/catboost_model.py": picks_models | {"blend"},
             "src/alphafactory/models/persist.py": picks_models | {"blend", "bundle"},
             # the ONNX export: only what trains networks (the bundle copies their export)
             "src/alphafactory/models/export.py": picks_models,
             "src/alphafactory/evaluation/cv.py": {"cv", "backtest", "tune"},  # tune builds the cv stage's folds
             "src/alphafactory/evaluation/backtest.py": {"backtest"},
             # report prints its table; tune reads evaluate's cost and threshold
             "src/alphafactory/evaluation/evaluate.py": {"evaluate", "report", "tune"},
             "src/alphafactory/data/validate.py": {"prepare"},
             # every stage writes through io.py
             "src/alphafactory/io.py": STAGES,
             # labels.py: imported by dataset.py and models/base.py, hence by every stage
             "src/alphafactory/labels.py": STAGES}
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
        assert changed == expected | {"check_params"}, (path, status)  # it imports the whole package


def _file_hashes(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_outputs_are_deterministic(project):
    """`dvc repro -f` reruns every stage with nothing changed: every output comes out byte for
    byte the same (dvc.lock records the hash of each; the ONNX exports and the bundle, which the
    forecaster artifact is, also compared file by file), so a rerun never makes anything
    downstream stale."""
    repo, _ = project
    before = (repo / "dvc.lock").read_text()
    onnx = {p: p.read_bytes() for p in sorted((repo / "models/neural").rglob("net.onnx"))}
    assert onnx, "no ONNX export under models/neural"
    bundle = _file_hashes(repo / "bundle")
    out = sh(repo, "dvc", "repro", "-f")
    assert ran_stages(out) == STAGES
    after = {p: p.read_bytes() for p in sorted((repo / "models/neural").rglob("net.onnx"))}
    assert list(after) == list(onnx) and all(after[p] == onnx[p] for p in onnx), "net.onnx bytes changed"
    assert _file_hashes(repo / "bundle") == bundle
    assert (repo / "dvc.lock").read_text() == before
    assert "up to date" in sh(repo, "dvc", "status")


def test_onnx_exports_carry_no_provenance(project):
    """The exporter's stack traces name this checkout's absolute paths and line numbers: a
    clone elsewhere, or an edit anywhere in trainer.py, would change the file's bytes."""
    repo, _ = project
    for p in (repo / "models/neural").rglob("net.onnx"):
        raw = p.read_bytes()
        assert str(repo).encode() not in raw and b"stack_trace" not in raw and b"pkg.torch" not in raw, p


def test_exp_run_lookback_reruns_only_neural_blend_evaluate(project):
    repo, _ = project
    out = sh(repo, "dvc", "exp", "run", "-n", "lookback6", "-S", "train.lookback=6")
    # nothing upstream of train@neural reruns; everything downstream of it does
    assert ran_stages(out) == {"check_params", "train@neural", "blend", "evaluate", "bundle", "explain", "report"}
    assert "lookback6" in sh(repo, "dvc", "exp", "show", "--csv")
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json", "--targets", "metrics/test.json"))
    changed = diff["metrics/test.json"]
    assert any(k.startswith("lstm.") for k in changed), sorted(changed)[:10]
    assert not any(k.startswith("lightgbm.h1.mae") for k in changed)  # boosting did not rerun
    # the default diff is the headline: the ensemble's figures moved, a few dozen rows at most
    headline = json.loads(sh(repo, "dvc", "metrics", "diff", "--json"))["metrics/headline.json"]
    assert "h1.ic" in headline and len(headline) <= 40, sorted(headline)
    assert not any(k.startswith("h1.baseline.") for k in headline)  # baselines did not move
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


def test_exp_run_classification_per_symbol_end_to_end(project, tmp_path):
    """train.task=classification with train.scope=per_symbol through every stage, then forecast
    from the bundle: class metrics, a 3-class confusion table, per-symbol model dirs, class
    probabilities in predict's output, and a clear error for a symbol without a model."""
    from alphafactory.serving.inference import load_bundle, predict

    repo, _ = project
    out = sh(repo, "dvc", "exp", "run", "-n", "cls", "-S", "train.task=classification",
             "-S", "train.scope=per_symbol", "-S", "boosting.models=[lightgbm]", "-S", "neural.models=[lstm]",
             "-S", "classical.models=[logistic]", "-S", "cv.models=[lightgbm]", "-S", "backtest.models=[lightgbm]")
    assert TRAIN | {"blend", "backtest", "evaluate", "cv"} <= ran_stages(out)
    m = json.loads((repo / "metrics/test.json").read_text())
    for model in ("lightgbm", "lstm", "logistic", "ensemble"):
        fig = m[model]["h1"]
        assert 0 < fig["accuracy"] <= 1 and fig["log_loss"] > 0 and math.isfinite(fig["ic"]), model
    assert "accuracy" not in m["momentum"]["h1"]  # baselines have no class probabilities
    assert 0 < m["lightgbm_wf"]["h1"]["accuracy"] <= 1  # per-symbol refits of a classifier
    conf = pd.read_csv(repo / "metrics/plots/confusion.csv")
    assert set(conf["actual"]) == {"SHORT", "NEUTRAL", "LONG"}
    cv = json.loads((repo / "metrics/cv.json").read_text())
    assert math.isfinite(cv["lightgbm"]["h1"]["mean"]["accuracy"])
    manifest = json.loads((repo / "models/boosting/lightgbm/manifest.json").read_text())
    assert manifest["scope"] == "per_symbol" and manifest["task"] == "classification"
    assert len(manifest["symbols"]) == 4

    bars = pd.read_parquet(repo / "data/prepared/bars.parquet")
    bundle = load_bundle(repo / "bundle")
    fc = predict(bars, bundle)
    probs = fc[["p_short", "p_neutral", "p_long"]].to_numpy()
    assert (abs(probs.sum(1) - 1) < 1e-6).all()
    # the same rows as the evaluate stage's test forecasts of the ensemble, to float tolerance
    last = fc["timestamp"].max()
    test = pd.read_parquet(repo / "data/preds/blend.parquet")
    test = test[(test["model"] == "ensemble") & (test["timestamp"] == last)]
    merged = fc.merge(test, on=["symbol", "timestamp", "horizon"], suffixes=("", "_eval"))
    assert len(merged) == len(fc) > 0  # every forecast row was also forecast by the pipeline
    # the bundle runs each symbol's lstm through its ONNX export (float32, other kernels than
    # PyTorch's): forecasts agree to ~1e-7 of their scale, probabilities to ~1e-7
    assert (abs(merged["yhat"] - merged["yhat_eval"]) < 1e-6 * merged["yhat_eval"].abs().max()).all()
    for c in ("p_short", "p_neutral", "p_long"):
        assert (abs(merged[c] - merged[f"{c}_eval"]) < 1e-6).all(), c
    assert (repo / "bundle/models/lstm/symbols/0000/net.onnx").is_file()
    other = bars[bars["symbol"] == bars["symbol"].iloc[0]].assign(symbol="NEW")
    with pytest.raises(ValueError, match="NEW"):
        predict(pd.concat([bars, other], ignore_index=True), bundle)
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "-q")


def test_unknown_key_or_bad_value_fails_the_run_before_any_output_is_deleted(project):
    repo, _ = project
    metrics = (repo / "metrics/test.json").read_text()
    try:
        # a key no stage reads used to be recorded as a valid experiment that reran nothing
        out = sh(repo, "dvc", "exp", "run", "-S", "+data.nosuch=1", check=False)
        assert "error: data: unknown key(s) ['nosuch']" in out and ran_stages(out) == {"check_params"}, out
        sh(repo, "git", "checkout", "--", "params.yaml")
        # a bad value for a late stage fails first, before DVC deletes that stage's outputs
        out = sh(repo, "dvc", "exp", "run", "-S", "evaluate.cost_bps=-5", check=False)
        assert "error: evaluate.cost_bps: got -5.0, expected >= 0" in out and "Traceback" not in out, out
        assert ran_stages(out) == {"check_params"}
        assert (repo / "metrics/test.json").read_text() == metrics
    finally:
        sh(repo, "git", "checkout", "--", ".")
        sh(repo, "dvc", "checkout", "-q")

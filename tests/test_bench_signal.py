"""bench/bench_signal.py: the planted-signal table (members, the blend stage's ensemble, the
oracle), in its --quick mode."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_signal", ROOT / "bench" / "bench_signal.py")
bench_signal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_signal)


def _rows(out: str, width: int = 13) -> list[list[str]]:
    """The table rows of ``width`` cells (13: the per-setting rows; 7: side by side, 2 settings)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| panel")]
    return [r for r in rows if len(r) == width]


def test_quick_mode_scores_members_ensemble_and_oracle(capsys) -> None:
    assert bench_signal.main(["--quick", "--threads", "1", "--setting",
                              "ic:lightgbm.early_stopping_metric=ic;label.normalize=cs_rank"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    # per setting: oracle, ridge, lightgbm (the --quick members), ensemble
    assert [(r[1], r[3]) for r in rows] == [(s, m) for s in ("new", "ic") for m in
                                           ("oracle", "ridge", "lightgbm", "ensemble")]
    assert {r[0] for r in rows} == {"mixed"}
    assert [r[2] for r in rows] == ["none"] * 4 + ["cs_rank"] * 4
    for r in rows:
        ic, se = (float(x) for x in r[7].split(" ± "))
        assert abs(ic) < 1 and se > 0
        share = float(r[9])
        if r[3] == "oracle":
            assert share == 1.0
        else:
            assert share == pytest.approx(ic / float(rows[0][7].split(" ± ")[0]), abs=0.01)
    assert all(r[11].isdigit() for r in rows if r[3] == "lightgbm")  # trees kept by early stopping
    # the ensemble is not a copy of one member
    by = {(r[1], r[3]): r[7] for r in rows}
    assert by[("new", "ensemble")] not in (by[("new", "ridge")], by[("new", "lightgbm")])
    # and the same figures side by side, one row per model, the settings in run order
    side = _rows(out, 7)
    assert [r[1] for r in side] == ["oracle", "ridge", "lightgbm", "ensemble"]
    for r in side:
        assert r[3] == f"{by[('new', r[1])]} ({next(x[9] for x in rows if x[1] == 'new' and x[3] == r[1])})"
        assert r[5].startswith(by[("ic", r[1])])


def test_side_by_side_from_a_saved_run(tmp_path, capsys) -> None:
    saved = tmp_path / "run.md"
    saved.write_text("| panel | setting | target | model | h | a | b | c | d | e | f | g | h |\n"
                     "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
                     "| mixed | old | none | ridge | 1 | +0.1 | +0.1 | +0.0500 ± 0.0100 | +0.0400 ± 0.0100 | 0.90 | 0.80 |  | 1 |\n"
                     "| mixed | wide | cs_zscore | ridge | 1 | +0.1 | +0.1 | +0.0300 ± 0.0100 | +0.0450 ± 0.0100 | 0.50 | 0.95 |  | 1 |\n")
    assert bench_signal.main(["--from", str(saved)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| panel | model | h | old: IC ± SE (share)")
    assert out[2] == ("| mixed | ridge | 1 | +0.0500 ± 0.0100 (0.90) | +0.0400 ± 0.0100 (0.80) "
                      "| +0.0300 ± 0.0100 (0.50) | +0.0450 ± 0.0100 (0.95) |")


def test_apply_sets_label_features_and_model_keys() -> None:
    params = {"label": {"normalize": "none"}, "features": {"cs_normalize": "none"},
              "boosting": {"lightgbm": {"n_estimators": 1000}}}
    name, over = bench_signal.parse_setting(
        "w:label.normalize=cs_rank;features.cs_normalize=rank;lightgbm.early_stopping_metric=ic")
    out = bench_signal.apply(params, over)
    assert name == "w" and out["label"]["normalize"] == "cs_rank" and out["features"]["cs_normalize"] == "rank"
    assert out["boosting"]["lightgbm"] == {"n_estimators": 1000, "early_stopping_metric": "ic"}
    assert params["label"]["normalize"] == "none"  # a copy
    with pytest.raises(SystemExit, match="nosuch"):
        bench_signal.apply(params, {"nosuch.x": 1})

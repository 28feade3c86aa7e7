"""The model zoo, measured: every registered family's fit time, test IC and calibration.

    nice -n 10 python bench/bench_zoo.py [--models lightgbm,ridge,...] [--panels bundled,synthetic]
        [--symbols 30] [--bars N] [--strength S] [--signal linear] [--horizons 1,5,20] [--threads 2]

Panels, built in process with the prepare/featurize/label/split stages' library functions
(``load_bars``, then the audit's ``build_panel``):

* ``bundled``: the default data (``data`` of params.yaml with ``source: bundled``); no oracle;
* ``synthetic``: ``make_synthetic`` with ``--symbols`` symbols and params.yaml's
  ``data.synthetic`` (bars, seed, signal, strength) unless ``--bars``/``--strength``/``--signal``
  say otherwise; its oracle gives each model's share of the best achievable IC.

Each family (``--models``, default every registered one that supports regression; ``logistic`` is
classification only) is fitted with its params.yaml block by ``train.fit_models`` exactly as the train
stage does (seed ``train.seed``, early stopping on val, every thread count set to ``--threads``),
and timed (wall and process CPU seconds of ``fit_models``: the fit, the val/test forecasts, the
calibration and the save, ONNX export included for the networks). Its test rows are scored as the
evaluate stage does (``evaluate.score``: pooled IC against the raw forward return with its date-block
bootstrap SE; the oracle's IC on the same rows and the share of it, null where the oracle's IC is
not significant, ``oracle_share_status``; ``calibration_scores``: coverage of ``yhat ± 1·yhat_std``
(nominal 0.683) and the Gaussian CRPS, in the training target's units). ``yhat_std`` comes from
the same code path as the pipeline's: the volatility scale fitted on val (``vol-scale``), or the
model's own predictive distribution (``own``: deepar, or any network under
``neural.trainer.quantiles``).

Prints a markdown table, one row per family and panel, and the load average (others may share
the machine: timings are of this run only).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # see bench_boosting.py: spinning threads on a busy box

ROOT = Path(__file__).resolve().parents[1]
PANELS = ("bundled", "synthetic")
COLUMNS = ("family", "panel", "fit s (wall / CPU)", "IC h1 ± SE", "IC h5 ± SE", "oracle share h1",
           "±1σ coverage h1", "CRPS h1", "std source", "load")


def regression_models() -> tuple[str, ...]:
    """Every registered model that supports ``train.task: regression``, in registry order, but
    those that read the bars themselves (``reads_bars``: the zero-shot chronos, which also needs a
    local checkpoint, ``neural.chronos.path``, which the bench has none of)."""
    from alphafactory import models

    return tuple(n for n, s in models.REGISTRY.items()
                 if "regression" in s.tasks and not getattr(s.cls, "reads_bars", False))


def build_panels(params: dict[str, Any], panels: tuple[str, ...], st: Any, symbols: int,
                 synthetic: dict[str, Any]) -> dict[str, Any]:
    """{panel name: (audit ``Panel``, periods per year, bars)} of the requested panels, through
    ``load_bars`` and ``build_panel`` (features with the warm-up dropped, labels, segments, oracle
    or None; the bars they came from, for bench_raw_inputs.py's raw windows)."""
    from alphafactory.config import section
    from alphafactory.data.frequency import infer_frequency
    from alphafactory.data.sources import DataConfig, load_bars
    from alphafactory.evaluation.audit import build_panel, make_featurizer

    base = section(params, "data", DataConfig)
    out = {}
    for name in panels:
        if name == "bundled":
            cfg = replace(base, source="bundled")
        elif name == "synthetic":
            syn = replace(base.synthetic, symbols=symbols, **synthetic)
            cfg = replace(base, source="synthetic", synthetic=syn, min_bars=min(base.min_bars, syn.bars))
        else:
            raise ValueError(f"--panels: got {name!r}, expected some of {list(PANELS)}")
        bars, oracle = load_bars(cfg, horizons=st.label.horizons)
        out[name] = (build_panel(bars, oracle, st, make_featurizer(st.features, None)),
                     infer_frequency(bars).periods_per_year, bars)
    return out


def measure(panel: Any, ppy: float, name: str, st: Any, eval_cfg: Any, work: Path) -> dict[str, Any]:
    """Fit one model on ``panel`` as the train stage does and score its test rows as the evaluate
    stage does: {wall, cpu, std_source, h<k>: {ic, ic_se, share, share_status, cover_1, crps, n}}."""
    import numpy as np

    from alphafactory import models
    from alphafactory.dataset import assemble
    from alphafactory.evaluation.audit import with_oracle
    from alphafactory.evaluation.evaluate import calibration_scores, oracle_share_status, score, scored_rows
    from alphafactory.train import fit_models

    horizons = st.label.horizons
    ds = assemble(panel.features, panel.labels, panel.segments, horizons)
    extra = {"lookback": st.lookback, "trainer": st.trainer} if models.get(name).family == "neural" else None
    w0, c0 = time.perf_counter(), time.process_time()
    (res,) = fit_models(ds, (name,), st.blocks, work / name, seed=st.seed, extra=extra)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    test = res.predictions[res.predictions["segment"] == "test"].drop(columns="segment")
    scored = test if panel.oracle is None else with_oracle(test, panel.oracle)
    out: dict[str, Any] = {"wall": wall, "cpu": cpu, "std_source": "own" if res.model.distribution else "vol-scale"}
    for h in horizons:
        table = scored_rows(scored, panel.labels, h)
        f = score(table, name, h, ppy, eval_cfg)
        cal = calibration_scores(test, table, name, h)
        row = {"ic": f["ic"], "ic_se": f["ic_se"], "cover_1": cal.get("cover_1.00", np.nan),
               "crps": cal.get("crps", np.nan), "n": f["n"], "share": np.nan, "share_status": "no oracle"}
        if panel.oracle is not None:
            o = score(table, "oracle", h, ppy, eval_cfg)
            ok, why = oracle_share_status(o)
            row.update(share=f["ic"] / o["ic"] if ok else np.nan, share_status=why, oracle_ic=o["ic"])
        out[f"h{h}"] = row
    return out


def _ic(r: dict[str, Any] | None) -> str:
    return "n/a" if r is None else f"{r['ic']:+.4f} ± {r['ic_se']:.4f}"


def format_row(name: str, panel: str, m: dict[str, Any], load: float) -> str:
    """One markdown row of ``COLUMNS`` (``load``: the 1-minute load average after the fit)."""
    h1, h5 = m.get("h1"), m.get("h5")
    share = "" if panel != "synthetic" or h1 is None else (
        "null" if h1["share"] != h1["share"] else f"{h1['share']:.2f}")
    cells = [name, panel, f"{m['wall']:.1f} / {m['cpu']:.1f}", _ic(h1), _ic(h5), share,
             "n/a" if h1 is None else f"{h1['cover_1']:.3f}", "n/a" if h1 is None else f"{h1['crps']:.5f}",
             m["std_source"], f"{load:.1f}"]
    return "| " + " | ".join(cells) + " |"


def header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def run(params: dict[str, Any], names: tuple[str, ...], panels: tuple[str, ...], *, symbols: int,
        synthetic: dict[str, Any], horizons: tuple[int, ...] | None, threads: int,
        echo: bool = True) -> list[str]:
    """Build the panels, measure every model on each, and return the table's rows (printed as
    they come when ``echo``)."""
    from alphafactory import models
    from alphafactory.config import section
    from alphafactory.evaluation.audit import Settings
    from alphafactory.evaluation.evaluate import EvaluateConfig

    for n in names:
        if "regression" not in models.get(n).tasks:
            raise ValueError(f"--models: {n!r} supports only {list(models.get(n).tasks)}, not regression")
    st = Settings.from_params(params, horizons).with_threads(threads)
    eval_cfg = section(params, "evaluate", EvaluateConfig)
    t0 = time.perf_counter()
    built = build_panels(params, panels, st, symbols, synthetic)
    rows = []
    if echo:
        for p, (pan, _, _) in built.items():
            print(f"panel {p}: {pan.features['symbol'].nunique()} symbols, {len(pan.features)} rows, "
                  f"{pan.features.shape[1] - 2} features; built in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"horizons {list(st.label.horizons)}, {threads} threads per fit; load average at start "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)
        print(header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        for p, (pan, ppy, _) in built.items():
            for n in names:
                m = measure(pan, ppy, n, st, eval_cfg, Path(tmp) / p)
                rows.append(format_row(n, p, m, os.getloadavg()[0]))
                if echo:
                    print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="", help="comma-separated (default: every regression model)")
    ap.add_argument("--panels", default=",".join(PANELS))
    ap.add_argument("--symbols", type=int, default=30)
    ap.add_argument("--bars", type=int, help="synthetic bars (default data.synthetic.bars)")
    ap.add_argument("--strength", type=float, help="synthetic signal_strength (default params.yaml's)")
    ap.add_argument("--signal", help="synthetic signal (default params.yaml's)")
    ap.add_argument("--horizons", default="", help="label horizons (default label.horizons)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from alphafactory.config import load_params

    names = tuple(m for m in args.models.split(",") if m) or regression_models()
    synthetic = {k: v for k, v in (("bars", args.bars), ("signal_strength", args.strength),
                                   ("signal", args.signal)) if v is not None}
    horizons = tuple(int(h) for h in args.horizons.split(",") if h) or None
    t0 = time.perf_counter()
    run(load_params(args.params), names, tuple(p for p in args.panels.split(",") if p), symbols=args.symbols,
        synthetic=synthetic, horizons=horizons, threads=args.threads)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

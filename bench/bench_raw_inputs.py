"""Do raw multi-resolution OHLCV windows help the sequence networks? (``neural.inputs``)

    nice -n 19 python bench/bench_raw_inputs.py [--models lstm,tcn] [--kinds features,raw,both]
        [--panels bundled,synthetic] [--symbols 30] [--horizons 1,5,20] [--threads 2] [--epochs N]
        [--seed S]

The panels are bench_zoo.py's (``bundled``: the default data; ``synthetic``: ``make_synthetic``
with ``--symbols`` symbols and params.yaml's ``data.synthetic``), built with the same library
functions as the prepare/featurize/label/split stages, and the bars they came from are attached
for the raw windows (``raw_windows.with_bars``, as the train stage does). Each model is fitted
by ``train.fit_models`` exactly as the train stage does, with params.yaml's blocks and
``neural.trainer`` (``--epochs`` overrides its epochs, ``--seed`` the seed ``train.seed``), once per ``--kinds`` value of
``neural.inputs.kind`` with params.yaml's ``neural.inputs.resolutions``.

Every kind is scored on the same test rows: those with the raw windows' history (252 bars with
the default resolutions), so the features-only fit is not scored on extra early rows. Test IC
is the evaluate stage's (``evaluate.score``: pooled IC against the raw forward return, SE from
its date-block bootstrap). Prints one markdown row per (panel, model, kind).
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

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def panels_with_bars(params: dict[str, Any], panels: tuple[str, ...], st: Any, symbols: int) -> dict[str, Any]:
    """{panel: (audit Panel, periods per year, bars)}: bench_zoo's panels (params.yaml's
    ``data.synthetic`` but ``--symbols``) and the bars they came from."""
    from bench_zoo import build_panels

    return build_panels(params, panels, st, symbols, {})


def measure(panel: Any, ppy: float, bars: Any, name: str, kind: str, st: Any, inputs: dict[str, Any],
            eval_cfg: Any, work: Path) -> dict[str, Any]:
    """Fit ``name`` with ``neural.inputs.kind`` = ``kind`` and score its test forecasts on the
    rows with the raw windows' history: {wall, h<k>: {ic, ic_se, n}}."""
    import numpy as np

    from alphafactory.dataset import assemble
    from alphafactory.evaluation.evaluate import score, scored_rows
    from alphafactory.raw_windows import history_rows, inputs_config, with_bars
    from alphafactory.train import fit_models

    ds = with_bars(assemble(panel.features, panel.labels, panel.segments, st.label.horizons), bars)
    cfg = inputs_config({**inputs, "kind": kind})
    extra = {"lookback": st.lookback, "trainer": st.trainer, "inputs": cfg}
    t0 = time.perf_counter()
    (res,) = fit_models(ds, (name,), st.blocks, work / f"{name}-{kind}", seed=st.seed, extra=extra)
    wall = time.perf_counter() - t0
    # the rows every kind forecasts: with the raw windows' history (kind raw's rule)
    keep = history_rows(ds, np.arange(len(ds.keys)), replace(cfg, kind="raw"))
    common = ds.keys.iloc[keep]
    test = res.predictions[res.predictions["segment"] == "test"].drop(columns="segment")
    test = test.merge(common, on=["symbol", "timestamp"], how="inner")
    out: dict[str, Any] = {"wall": wall, "epochs": len(res.model.history_.get("val_loss", []))}
    for h in st.label.horizons:
        f = score(scored_rows(test, panel.labels, h), name, h, ppy, eval_cfg)
        out[f"h{h}"] = {"ic": f["ic"], "ic_se": f["ic_se"], "n": f["n"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lstm,tcn")
    ap.add_argument("--kinds", default="features,raw,both")
    ap.add_argument("--panels", default="bundled,synthetic")
    ap.add_argument("--symbols", type=int, default=30)
    ap.add_argument("--horizons", default="1,5,20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, help="neural.trainer.epochs (default params.yaml's)")
    ap.add_argument("--seed", type=int, help="train.seed (default params.yaml's)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from alphafactory.config import load_params, section
    from alphafactory.evaluation.audit import Settings
    from alphafactory.evaluation.evaluate import EvaluateConfig

    params = load_params(args.params)
    horizons = tuple(int(h) for h in args.horizons.split(",") if h)
    st = Settings.from_params(params, horizons).with_threads(args.threads)
    if args.seed is not None:
        st = replace(st, seed=args.seed)
    if args.epochs:
        st = replace(st, trainer={**dict(st.trainer or {}), "epochs": args.epochs})
    inputs = dict((params.get("neural") or {}).get("inputs") or {})
    eval_cfg = section(params, "evaluate", EvaluateConfig)
    built = panels_with_bars(params, tuple(p for p in args.panels.split(",") if p), st, args.symbols)
    for p, (pan, _, _) in built.items():
        print(f"panel {p}: {pan.features['symbol'].nunique()} symbols, {len(pan.features)} rows, "
              f"{pan.features.shape[1] - 2} features", flush=True)
    print(f"resolutions {inputs.get('resolutions')}, lookback {st.lookback}, horizons {list(horizons)}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)
    cols = ["panel", "model", "inputs", *[f"IC h{h} ± SE" for h in horizons], "test rows", "epochs", "fit s"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        for p, (pan, ppy, bars) in built.items():
            for name in (m for m in args.models.split(",") if m):
                for kind in (k for k in args.kinds.split(",") if k):
                    m = measure(pan, ppy, bars, name, kind, st, inputs, eval_cfg, Path(tmp) / p)
                    ics = [f"{m[f'h{h}']['ic']:+.4f} ± {m[f'h{h}']['ic_se']:.4f}" for h in horizons]
                    print("| " + " | ".join([p, name, kind, *ics, str(m[f"h{horizons[0]}"]["n"]),
                                             str(m["epochs"]), f"{m['wall']:.0f}"]) + " |", flush=True)
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

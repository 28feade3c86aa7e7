"""How the pipeline's cost grows with the universe: wall time and peak memory of each stage.

    python bench/bench_scale.py [--symbols 100,500] [--bars 2520]
                                [--cluster none,local] [--pipeline light|full|target]
                                [--rounds N]

For each universe size it clones the committed HEAD into a temporary directory, sets
``data.source: synthetic`` with that many symbols x ``--bars`` daily bars, and runs the stages one
at a time (``dvc repro -f -s <stage>``, in ``dvc repro``'s order) in process (``compute.cluster:
null``) and on a ``compute.cluster: local`` Dask cluster of 2 worker processes. Per stage it
prints:

* wall seconds of ``dvc repro -f -s``;
* peak RSS of the largest single process (``ru_maxrss`` of the children: the stage itself, a
  joblib or Dask worker, or dvc) and the peak of the summed RSS of the whole process tree
  (sampled every 0.2 s with psutil, so a peak shorter than that can be missed).

``--pipeline light`` (the default) runs the chain the scale target names: prepare, featurize,
label, split, one pooled LightGBM (``boosting.models: [lightgbm]``), ridge as the only classical
model, the one-bar ``mlp`` as the only network, the blend and bundle stages, a ridge walk-forward
backtest and evaluate (tune, cv, explain and report are not run). Featurize runs in batches of
``--symbol-batch`` symbols (default 250), the pieces of work a cluster spreads over its workers. ``--pipeline full`` runs the
default ``dvc repro`` of every stage with the default models, the 500-symbol target's workload.
``--pipeline target`` runs exactly the stages of the memory target: prepare, featurize, label,
split, train@boosting with the pooled LightGBM alone (which then reads the features in parts,
``dataset.load(lazy=True)``) and evaluate, the last run by its own script on the boosting
forecasts (no blend and no walk-forward: the families and stages in between are not run).
``--rounds N`` caps ``boosting.lightgbm.n_estimators`` (the peak memory is that of the binned
data, not of the trees; the wall time is not comparable then).

Targets on 2 cores / 24 GiB (issue 19): full pipeline for 500 symbols within 20 min; 5,000 symbols
through the light chain within 8 GiB peak per process. A size whose stage fails (out of memory,
for instance) is reported as such and the next sizes are skipped; ``--max-rss-gib`` stops a stage
whose process tree grows beyond that many GiB (default 20, below this machine's 24 GiB).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3

LIGHT = {
    "boosting.models": ["lightgbm"],
    "classical.models": ["ridge"],
    "neural.models": ["mlp"],
    "backtest.models": ["ridge"],
}
LIGHT_TARGET = "evaluate"
TARGET = LIGHT  # the other families are set but not run
TARGET_STAGES = ["check_params", "prepare", "featurize", "label", "split", "tune", "train@boosting"]  # tune: a no-op
EVALUATE = [  # stages/evaluate.py on the boosting forecasts alone (see --pipeline target)
    "python", "stages/evaluate.py", "--preds", "data/preds/boosting.parquet",
    "--blend", "{empty}/blend.parquet", "--walk-forward", "{empty}/backtest.parquet",
    "--bars", "data/prepared/bars.parquet", "--info", "data/prepared/info.json",
    "--labels", "data/labels/labels.parquet", "--segments", "data/split/segments.parquet",
    "--oracle", "data/prepared/oracle.parquet", "--metrics", "{empty}/test.json",
    "--oracle-metrics", "{empty}/oracle.json", "--headline", "{empty}/headline.json",
    "--predictions", "{empty}/test.parquet", "--plots", "{empty}/plots", "--tune", "{empty}/tune.json",
]


def set_key(params: dict, dotted: str, value) -> None:
    node = params
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


def stage_order(repo: Path, env: dict, target: str | None) -> list[str]:
    """The stages ``dvc repro [target]`` would run, in its order (``--dry`` of a fresh clone)."""
    cmd = ["dvc", "repro", "--dry", "-f"] + ([target] if target else [])
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=True).stdout
    return re.findall(r"Running stage '([^']+)'", out)


def _kill_tree(proc: subprocess.Popen, ps: psutil.Process) -> None:
    try:
        for p in ps.children(recursive=True):
            p.kill()
    except psutil.Error:
        pass
    proc.kill()


def _watch(proc: subprocess.Popen, ps: psutil.Process, max_rss: float) -> tuple[float, str]:
    """Sample the summed RSS of ``proc``'s tree until it exits: (peak GiB, '' or why it was stopped)."""
    peak_tree = 0.0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
        except psutil.Error:
            rss = 0
        peak_tree = max(peak_tree, rss / GIB)
        if peak_tree > max_rss:
            _kill_tree(proc, ps)
            return peak_tree, f"stopped at {peak_tree:.1f} GiB (--max-rss-gib {max_rss:g})"
        time.sleep(0.2)
    return peak_tree, ""


def empty_inputs(repo: Path) -> str:
    """A folder of the empty blend and walk-forward tables (the boosting forecasts' columns) and
    the tune summary that evaluate reads in ``--pipeline target``; its outputs go there too."""
    import pandas as pd

    out = repo / "bench_empty"
    out.mkdir(exist_ok=True)
    empty = pd.read_parquet(repo / "data/preds/boosting.parquet").iloc[:0]
    for name in ("blend", "backtest"):
        empty.to_parquet(out / f"{name}.parquet", index=False)
    (out / "tune.json").write_text('{"extra_trials": 0}\n')
    return str(out)


def run_stage(repo: Path, env: dict, stage: str, max_rss: float,
              command: list[str] | None = None) -> tuple[float, float, float, str]:
    """(wall s, peak single-process RSS GiB, peak tree RSS GiB, error or '') of ``dvc repro -f -s``
    (or of ``command``, run in the clone)."""
    # a fresh wrapper per stage, so that its RUSAGE_CHILDREN max is this stage's alone
    wrapper = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    cmd = [sys.executable, "-c", wrapper, *(command or ["dvc", "repro", "-f", "-s", stage])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    try:
        peak_tree, killed = _watch(proc, ps, max_rss)
    except BaseException:  # Ctrl-C or SIGTERM: leave no stage running behind us
        _kill_tree(proc, ps)
        raise
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    lines = err.strip().splitlines()
    try:
        peak_one = int(lines[-1]) * 1024 / GIB  # ru_maxrss is in KiB on Linux
    except (IndexError, ValueError):
        peak_one = float("nan")
    if killed:
        return wall, peak_one, peak_tree, killed
    if proc.returncode:
        tail = [ln for ln in (out + "\n" + err).splitlines() if ln.strip()][-3:]
        return wall, peak_one, peak_tree, "failed: " + " | ".join(tail)[:300]
    return wall, peak_one, peak_tree, ""


def main() -> None:
    # SIGTERM unwinds like Ctrl-C: the running stage is killed and the temporary clone removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", default="100,500",
                    help="comma-separated universe sizes (the issue-19 table: 100,500,2000,5000)")
    ap.add_argument("--bars", type=int, default=2520, help="daily bars per symbol")
    ap.add_argument("--cluster", default="none,local", help="comma-separated: none (in process), local")
    ap.add_argument("--pipeline", choices=("light", "full", "target"), default="light")
    ap.add_argument("--rounds", type=int, default=None, help="cap boosting.lightgbm.n_estimators")
    ap.add_argument("--symbol-batch", type=int, default=250,
                    help="features.symbol_batch and label.symbol_batch: symbols per featurize and label batch, "
                         "the pieces a cluster runs (0: one)")
    ap.add_argument("--max-rss-gib", type=float, default=20.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.symbols.split(",")]
    clusters = args.cluster.split(",")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        # the stages import the clone's own src/ (the code its dvc.lock hashes)
        env["PYTHONPATH"] = str(repo / "src")
        base = yaml.safe_load((repo / "params.yaml").read_text())
        failed_at = None
        for n in sizes:
            if failed_at is not None:
                break
            for cluster in clusters:
                params = yaml.safe_load(yaml.safe_dump(base))
                set_key(params, "data.source", "synthetic")
                set_key(params, "data.synthetic.symbols", n)
                set_key(params, "data.synthetic.bars", args.bars)
                set_key(params, "data.synthetic.freq", "1D")
                set_key(params, "compute.cluster", None if cluster == "none" else cluster)
                set_key(params, "compute.workers", 2)
                set_key(params, "features.symbol_batch", args.symbol_batch)
                set_key(params, "label.symbol_batch", args.symbol_batch)
                if args.pipeline != "full":
                    for k, v in (LIGHT if args.pipeline == "light" else TARGET).items():
                        set_key(params, k, v)
                if args.rounds:
                    set_key(params, "boosting.lightgbm.n_estimators", args.rounds)
                (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                if args.pipeline == "target":
                    stages = [*TARGET_STAGES, "evaluate"]
                else:
                    stages = stage_order(repo, env, LIGHT_TARGET if args.pipeline == "light" else None)
                total = 0.0
                for stage in stages:
                    command = None
                    if args.pipeline == "target" and stage == "evaluate":
                        empty = empty_inputs(repo)
                        command = [a.format(empty=empty) for a in EVALUATE]
                        command[0] = sys.executable
                    wall, one, tree, err = run_stage(repo, env, stage, args.max_rss_gib, command)
                    total += wall
                    rows.append((n, cluster, stage, wall, one, tree, err))
                    print(f"{n} symbols, {cluster}: {stage} {wall:.1f} s, {one:.2f} / {tree:.2f} GiB {err}",
                          file=sys.stderr, flush=True)
                    if err:
                        failed_at = n
                        break
                rows.append((n, cluster, "total", total, max(r[4] for r in rows if r[:2] == (n, cluster)),
                             max(r[5] for r in rows if r[:2] == (n, cluster)), ""))
                if failed_at is not None:
                    break
    print(f"\n{os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB, "
          f"{args.bars} daily bars per symbol, pipeline {args.pipeline}"
          f"{f', lightgbm n_estimators {args.rounds}' if args.rounds else ''}\n")
    print("| symbols | compute | stage | wall s | peak RSS, one process GiB | peak RSS, all processes GiB | note |")
    print("|---|---|---|---|---|---|---|")
    for n, cluster, stage, wall, one, tree, err in rows:
        name = f"**{stage}**" if stage == "total" else stage
        print(f"| {n} | {cluster} | {name} | {wall:.1f} | {one:.2f} | {tree:.2f} | {err} |")
    print(f"\nmax RSS of this script: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB")


if __name__ == "__main__":
    main()

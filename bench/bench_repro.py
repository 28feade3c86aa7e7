"""Time a full `dvc repro` (every stage forced) and a no-op `dvc repro` on the bundled data.

Runs in a fresh clone of the committed HEAD (so the numbers are those a new user gets after
`make install`), with the current environment's `python` and `dvc`. Prints a markdown table with
the median, min and max over repeats; targets on 2 cores: full <= 180 s, no-op <= 2 s.

    python bench/bench_repro.py [--full 3] [--noop 5]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    # the stages import the clone's own src/ (the code its dvc.lock hashes), not the editable install
    p = subprocess.run(cmd, cwd=cwd, env={**ENV, "PYTHONPATH": str(cwd / "src")}, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return secs, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", type=int, default=3, help="full (forced) repro runs")
    ap.add_argument("--noop", type=int, default=5, help="no-op repro runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        full, per_stage = [], {}
        for i in range(args.full):
            secs, out = timed(["dvc", "repro", "-f"], repo)
            ran = re.findall(r"Running stage '([^']+)'", out)
            print(f"full run {i + 1}: {secs:.1f} s ({len(ran)} stages)", file=sys.stderr)
            full.append(secs)
        for name in ("train@boosting", "train@neural"):
            per_stage[name], _ = timed(["dvc", "repro", "-f", "-s", name], repo)
        noop = []
        for _ in range(args.noop):
            secs, out = timed(["dvc", "repro"], repo)
            assert "Running stage" not in out, out
            noop.append(secs)
    rows = [("full `dvc repro -f` (all stages)", full, 180.0), ("no-op `dvc repro`", noop, 2.0)]
    print(f"\n{os.cpu_count()} cores, python {sys.version.split()[0]}\n")
    print("| run | repeats | median s | min s | max s | target s | ok |")
    print("|---|---|---|---|---|---|---|")
    for name, xs, target in rows:
        med = statistics.median(xs)
        print(f"| {name} | {len(xs)} | {med:.2f} | {min(xs):.2f} | {max(xs):.2f} | {target:.0f} | "
              f"{'yes' if med <= target else 'NO'} |")
    for name, secs in per_stage.items():
        print(f"| `dvc repro -f -s {name}` | 1 | {secs:.2f} | | | | |")


if __name__ == "__main__":
    main()

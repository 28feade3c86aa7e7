"""A stage killed (SIGKILL) at any of its renames leaves every output whole and nothing behind.

Each stage script runs, as ``dvc repro`` would run its command, in a copy of the session's
pipeline workspace, under a bootstrap that counts the renames of the process (``os.replace``,
``os.rename`` and ``alphafactory.io``'s directory exchange) and kills it with SIGKILL just before,
or just after, the N-th. Before each killed run every output is set to a recognisable old
version (other bytes for a file, an extra file in a directory). After each kill:

* every output is whole: its old version or the new one (the bytes of an unkilled run), never
  absent, never a mix;
* the system temp directory the process saw is empty;
* anything else the kill left in the workspace is a temporary named ``.NAME.<pid>.<hex>.tmp``
  next to one of the stage's outputs ``NAME``.

After all the kills one unkilled run succeeds and leaves exactly the files of a clean run: the
leftovers of every killed run are gone.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alphafactory import io
from alphafactory.serving.inference import load_bundle

# Runs a stage script with every rename counted; AF_KILL_AT=N kills the process just before
# (AF_KILL_WHEN=before) or just after (after) the N-th; AF_RENAMES names a file that gets the
# count at exit (an unkilled run, AF_KILL_AT=0).
BOOT = r"""
import atexit, os, runpy, signal, sys
at, when, calls = int(os.environ["AF_KILL_AT"]), os.environ["AF_KILL_WHEN"], [0]
def counted(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = fn(*args, **kwargs)
        if calls[0] == at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapper
os.replace, os.rename = counted(os.replace), counted(os.rename)
import alphafactory.io as io
if hasattr(io, "_rename_exchange"):
    io._rename_exchange = counted(io._rename_exchange)
atexit.register(lambda: open(os.environ["AF_RENAMES"], "w").write(str(calls[0])))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
TMP_NAME = re.compile(r"\.(.+)\.\d+\.[0-9a-f]{8}\.tmp")
SKIP = {".git", ".dvc", "__pycache__"}


def stage_argv(repo: Path, name: str) -> list[str]:
    """The stage's command from dvc.yaml, as an argument list."""
    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][name]["cmd"].split()


def tree(root: Path) -> set[str]:
    """Every file and directory below ``root`` (posix, relative), without .git, .dvc, bytecode."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP]
        rel = Path(dirpath).relative_to(root)
        out.update((rel / n).as_posix() for n in dirnames + filenames)
    return out


def digest(path: Path) -> str | None:
    """sha256 of a file, or of a directory's (relative path, file sha256) list; None if absent."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256("".join(f"{p.relative_to(path)}:{digest(p)}\n" for p in files).encode()).hexdigest()
    return None


class Workspace:
    """A copy of the pipeline workspace (no .git, no DVC cache) where one stage is run."""

    def __init__(self, project: Path, dest: Path, stage: str) -> None:
        shutil.copytree(project, dest / "ws", ignore=shutil.ignore_patterns(*SKIP))
        self.root, self.tmp, self.argv = dest / "ws", dest / "systmp", stage_argv(project, stage)
        self.tmp.mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(self.root / "src"), "TMPDIR": str(self.tmp),
                    "PYTHONDONTWRITEBYTECODE": "1", "AF_RENAMES": str(dest / "renames")}
        self.env.pop("OMP_WAIT_POLICY", None)
        self.renames_file = dest / "renames"

    def run(self, kill_at: int = 0, when: str = "before") -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", BOOT, *self.argv[1:]]
        env = {**self.env, "AF_KILL_AT": str(kill_at), "AF_KILL_WHEN": when}
        return subprocess.run(argv, check=False, cwd=self.root, env=env, capture_output=True, text=True)

    def clean_run(self) -> int:
        """An unkilled run; returns the number of renames it made."""
        p = self.run()
        assert p.returncode == 0, f"{self.argv[1]} failed ({p.returncode}):\n{p.stderr[-3000:]}"
        return int(self.renames_file.read_text())


OLD_MARK = "OLD_VERSION"


def set_old(path: Path, new: Path) -> str:
    """Make ``path`` a recognisable old version of ``new``, whatever a kill left there: ``new``'s
    tree plus one file for a directory, other bytes for a file. Returns its digest."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if new.is_dir():
        shutil.copytree(new, path)
        (path / OLD_MARK).write_text("old\n")
    else:
        path.write_bytes(b"old version\n")
    return digest(path)


def kill_everywhere(ws: Workspace, outputs: list[str], points: Callable[[int], list[tuple[str, int]]]) -> int:
    """Kill the stage at each (when, N) of ``points(total renames)`` and check what it leaves
    (module docstring). Returns the number of renames of an unkilled run."""
    total = ws.clean_run()
    new = {o: digest(ws.root / o) for o in outputs}
    assert None not in new.values(), f"an unkilled run left an output absent: {new}"
    pristine = ws.root.parent / "new"
    for o in outputs:  # a copy of each new output, to reset the old versions from
        (pristine / o).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ws.root / o).is_dir() else shutil.copy2)(ws.root / o, pristine / o)
    clean = tree(ws.root)
    targets = {ws.root / o for o in outputs}
    problems = []
    for when, n in dict.fromkeys(points(total)):
        old = {o: set_old(ws.root / o, pristine / o) for o in outputs}
        p = ws.run(n, when)
        where = f"killed {when} rename {n}/{total}"
        assert p.returncode == -9, f"{where}: expected SIGKILL, got {p.returncode}:\n{p.stderr[-2000:]}"
        for o in outputs:
            got = digest(ws.root / o)
            state = {old[o]: "old", new[o]: "new", None: "absent"}.get(got, "neither old nor new")
            if state not in ("old", "new"):
                problems.append(f"{where}: {o} is {state}")
        if os.listdir(ws.tmp):
            problems.append(f"{where}: left in the system temp dir: {sorted(os.listdir(ws.tmp))}")
            shutil.rmtree(ws.tmp)
            ws.tmp.mkdir()
        left = sorted(tree(ws.root) - clean - {f"{o}/{OLD_MARK}" for o in outputs})
        for rel in (r for r in left if not any(r.startswith(q + "/") for q in left)):
            m = TMP_NAME.fullmatch(Path(rel).name)
            if not (m and (ws.root / rel).with_name(m.group(1)) in targets):
                problems.append(f"{where}: left {rel}, not a temporary named after one of the stage's outputs")
    ws.clean_run()
    for o in outputs:
        if digest(ws.root / o) != new[o]:
            problems.append(f"after a rerun, {o} differs from an unkilled run's")
    left = sorted(tree(ws.root) - clean)
    if left:
        problems.append(f"a rerun after the kills left {[r for r in left if not any(r.startswith(q + '/') for q in left)]}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
    return total


def every(total: int) -> list[tuple[str, int]]:
    """Kill before each rename, and after the last one."""
    return [("before", n) for n in range(1, total + 1)] + [("after", total)]


@pytest.fixture
def workspace(project, tmp_path):
    return lambda stage: Workspace(project[0], tmp_path, stage)


def test_bundle_killed_at_every_rename(workspace):
    """The bundle directory is swapped whole: ``bundle`` is the old tree or the new one, which
    verifies against its manifest, at every instant; killed also just after each rename."""
    ws = workspace("bundle")
    def points(total: int) -> list[tuple[str, int]]:
        return every(total) + [("after", n) for n in range(1, total + 1)]

    kill_everywhere(ws, ["bundle"], points)
    load_bundle(ws.root / "bundle")


def test_evaluate_killed_at_every_rename(workspace):
    """Evaluate writes its metrics, predictions and each plot table by rename: each one is the old
    file or the new one, and a kill leaves only temporaries the next run removes."""
    ws = workspace("evaluate")
    plots = sorted(p.relative_to(ws.root).as_posix() for p in (ws.root / "metrics/plots").iterdir())
    outputs = ["metrics/test.json", "metrics/oracle.json", "metrics/headline.json",
               "data/predictions/test.parquet", *plots]
    assert kill_everywhere(ws, outputs, every) == len(outputs)  # one rename each


def test_prepare_killed_at_every_rename(workspace):
    ws = workspace("prepare")
    outputs = ["data/prepared/bars.parquet", "data/prepared/oracle.parquet", "data/prepared/info.json"]
    assert kill_everywhere(ws, outputs, every) == len(outputs)


def test_cv_killed_at_its_renames(workspace):
    """cv fits its fold models in a scratch directory next to metrics/cv.json, not in the system
    temp directory: a kill while fitting leaves it behind, and the next run removes it. Killed at
    the first rename (a fold model's), one in the middle, and around its two metrics files."""
    def points(t: int) -> list[tuple[str, int]]:
        return [("before", 1), ("after", 1), ("before", t // 2), ("before", t - 1), ("before", t), ("after", t)]

    kill_everywhere(workspace("cv"), ["metrics/cv.json", "metrics/cv_folds.json"], points)


def test_stale_temporaries_of_dead_writers_only(tmp_path):
    """A writer removes the temporaries of its own target left by dead processes, and nothing
    else: not a live process's (a concurrent writer), not another target's, not other files."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    names = {
        f".x.json.{dead}.0123abcd.tmp": False,   # dead writer of x.json: removed
        f".x.json.{dead}.4567cdef.tmp/": False,  # its directory (atomic_dir, scratch_dir): removed
        f".x.json.{os.getpid()}.89abcdef.tmp": True,  # this (live) process's
        f".x.json.1.{dead}.00000000.tmp": True,  # a temporary of target x.json.1, not of x.json
        f".y.json.{dead}.0123abcd.tmp": True,    # another target's
        ".x.json.k2j_3x8a.tmp": True,            # not our naming: not ours to judge
        "x.json": True,
    }
    for name in names:
        if name.endswith("/"):
            (tmp_path / name / "sub").mkdir(parents=True)
        else:
            (tmp_path / name).write_text("")
    io.write_json({"a": 1}, tmp_path / "x.json")
    kept = {n: (tmp_path / n.rstrip("/")).exists() for n in names}
    assert kept == names
    assert io.read_json(tmp_path / "x.json") == {"a": 1}


def test_atomic_dir_swaps_in_one_step(tmp_path):
    """On Linux, replacing a directory is one renameat2(RENAME_EXCHANGE): the old tree is never
    renamed aside (the two-rename fallback, where ``path`` is briefly absent)."""
    target = tmp_path / "d"
    with io.atomic_dir(target) as tmp:
        (tmp / "f").write_text("old")
    renames = []
    real = os.replace
    try:
        os.replace = lambda a, b: renames.append((a, b)) or real(a, b)
        with io.atomic_dir(target) as tmp:
            (tmp / "f").write_text("new")
    finally:
        os.replace = real
    assert renames == []
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]

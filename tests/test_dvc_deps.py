"""`dvc.yaml` tells the truth about code: each stage's code deps are exactly what its script
imports inside ``alphafactory`` (read with :mod:`ast`, deferred imports included), plus the model
modules it can load at run time (from the registry), so touching a module reruns the stages
that use it and no other. Also: every path in a stage's command is one of its deps or outs, and
every family the ``train`` foreach generates reaches the stages that gather the families.

Rules the check applies (DVC has no globs):
- a file dep under ``src/`` or ``stages/`` must be in the stage's closure;
- a directory dep must cover a module of the closure, and every ``.py`` file in it must be in
  the closure, except ``src/alphafactory/models`` for a stage that picks its models at run time
  (``RUNTIME_MODELS``): adding a model there is one new file, and nothing in dvc.yaml changes;
- every module of the closure must be covered by a file or directory dep.
"""
from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = "alphafactory"
MODELS_DIR = "src/alphafactory/models"


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]  # paths as written in dvc.yaml (params excluded)
    outs: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.cmd)

    @property
    def script(self) -> str:
        scripts = [a for a in self.argv if a.startswith("stages/") and a.endswith(".py")]
        assert len(scripts) == 1, (self.name, self.cmd)
        return scripts[0]

    def option(self, flag: str) -> str | None:
        argv = self.argv
        return argv[argv.index(flag) + 1] if flag in argv else None


def load_stages(root: Path = ROOT) -> dict[str, Stage]:
    """The stages of ``root``'s dvc.yaml as DVC resolves them (foreach expanded, ``${}`` filled)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.addressing: Stage(s.addressing, s.cmd,
                                    tuple(d.def_path for d in s.deps if not isinstance(d, ParamsDependency)),
                                    tuple(o.def_path for o in s.outs))
                for s in repo.index.stages}


# --- the import closure ---------------------------------------------------------------------

def module_file(name: str) -> Path | None:
    """The source file of module ``name`` under src/, or None (not a module: a name in one)."""
    base = SRC.joinpath(*name.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (module level or inside functions:
    a deferred import runs when its function does), with their parent packages, which Python
    imports first."""
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            named.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the check reads absolute imports only"
            named.add(node.module)
            named.update(f"{node.module}.{a.name}" for a in node.names)  # kept if a submodule
    out = set()
    for name in named:
        parts = name.split(".")
        if parts[0] != PKG:
            continue
        out.update(n for n in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if module_file(n))
    return out


def closure(start: set[str] | Path) -> set[str]:
    """Modules of the package imported, directly or not, by a script (a path) or by modules."""
    todo = list(imports_of(start) if isinstance(start, Path) else start)
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports_of(module_file(m)) - seen)
    return seen


def discovery_imports() -> set[str]:
    """Model modules the registry imports as soon as the package loads: those whose
    ``@register`` arguments it cannot read from the source (see models/__init__.py)."""
    from alphafactory.models import registry

    out = set()
    for f in sorted((SRC / PKG / "models").glob("*.py")):
        name = f"{PKG}.models.{f.stem}"
        if f.stem != "__init__" and registry._registrations(name, f.read_text(encoding="utf-8")) is None:
            out.add(name)
    return out


def registry_modules(families: set[str]) -> set[str]:
    from alphafactory import models

    return {s.module for s in models.REGISTRY.values() if s.family in families}


def runtime_families(stage: Stage) -> set[str]:
    """Families of the models a stage creates or loads by name at run time (the registry imports
    their modules then): ``--family F`` (train@F) fits the models of F that its params enable;
    explain loads every saved model under its ``--models`` family directories; cv refits any
    model of ``cv.FAMILIES`` that ``cv.models`` (backtest: ``backtest.models``, tune: ``tune.models``) names;
    check_params builds every enabled one."""
    from alphafactory.evaluation import cv

    if stage.option("--family"):
        return {stage.option("--family")}
    if stage.script == "stages/explain.py":
        return {Path(d).name for d in stage.option("--models").split(",")}
    if stage.script in ("stages/cv.py", "stages/backtest.py", "stages/tune.py"):  # backtest/tune.models: as cv
        return set(cv.FAMILIES)
    if stage.script == "stages/check_params.py":  # builds every enabled model from its params block
        from alphafactory.params_check import FAMILIES

        return set(FAMILIES)
    return set()


RUNTIME_MODELS = "stages that pick models at run time may depend on the whole models directory"


def needed_files(stage: Stage) -> set[str]:
    """The stage's script and the source files of its closure, relative to the repo root."""
    mods = closure(ROOT / stage.script)
    families = runtime_families(stage)
    if families:
        mods |= closure(registry_modules(families))
    if f"{PKG}.models" in mods:
        mods |= closure(discovery_imports())
    return {stage.script} | {str(module_file(m).relative_to(ROOT)) for m in mods}


def dep_problems(stage: Stage, needed: set[str]) -> list[str]:
    """What is wrong with the stage's code deps given the files it needs (empty: nothing)."""
    code = [d.rstrip("/") for d in stage.deps if d.startswith(("src/", "stages/"))]
    dirs = [d for d in code if (ROOT / d).is_dir()]
    files = [d for d in code if d not in dirs]
    problems = []
    for f in sorted(needed):
        if f not in files and not any(f.startswith(d + "/") for d in dirs):
            problems.append(f"misses {f}")
    for f in files:
        if f not in needed:
            problems.append(f"lists {f}, which it does not import")
    for d in dirs:
        inside = {str(p.relative_to(ROOT)) for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
        if not inside & needed:
            problems.append(f"lists directory {d}, none of whose modules it imports")
        elif inside - needed and not (d == MODELS_DIR and runtime_families(stage)):
            problems.append(f"lists directory {d}, but does not import {sorted(inside - needed)}; "
                            f"list the files it does import ({RUNTIME_MODELS})")
    return problems


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return load_stages()


def test_code_deps_are_the_import_closure(stages):
    problems = {name: p for name, s in stages.items() if (p := dep_problems(s, needed_files(s)))}
    assert not problems, "\n".join(f"{n}: {'; '.join(p)}" for n, p in problems.items())


def test_the_check_fails_on_a_missing_or_unused_dep(stages):
    """The check itself can fail: drop a needed dep, add an unused one, widen a file to its
    directory where no model is picked at run time."""
    s = stages["featurize"]
    needed = needed_files(s)
    assert dep_problems(s, needed) == []
    dropped = Stage(s.name, s.cmd, tuple(d for d in s.deps if d != "src/alphafactory/io.py"), s.outs)
    assert dep_problems(dropped, needed) == ["misses src/alphafactory/io.py"]
    extra = Stage(s.name, s.cmd, (*s.deps, "src/alphafactory/evaluation/report.py"), s.outs)
    assert dep_problems(extra, needed) == ["lists src/alphafactory/evaluation/report.py, which it does not import"]
    b = stages["blend"]
    widened = Stage(b.name, b.cmd, (*(d for d in b.deps if not d.startswith(MODELS_DIR)), MODELS_DIR), b.outs)
    assert any(p.startswith(f"lists directory {MODELS_DIR}, but") for p in dep_problems(widened, needed_files(b)))


def test_every_model_module_reruns_the_train_stage_of_its_family(stages):
    """Adding a model is one file: the registry finds it, and train@<family> already depends on
    the directory it is in."""
    from alphafactory import models

    for spec in models.REGISTRY.values():
        if spec.family in ("boosting", "neural", "classical"):
            f = str(module_file(spec.module).relative_to(ROOT))
            assert any(f.startswith(d.rstrip("/") + "/") or f == d for d in stages[f"train@{spec.family}"].deps), spec


def test_command_paths_are_deps_or_outs(stages):
    """Every path a command names is declared, so DVC knows what the stage reads and writes."""
    for s in stages.values():
        argv = s.argv
        declared = {p.rstrip("/") for p in (*s.deps, *s.outs)}
        for flag, value in pairwise(argv):
            if flag.startswith("--") and flag != "--family":
                for path in value.split(","):
                    assert path.rstrip("/") in declared, (s.name, flag, path)


def test_every_trained_family_reaches_blend_bundle_evaluate_explain(stages):
    """The train foreach is the one list of families; the stages that gather them name each
    family's outputs in their command and deps (DVC cannot build a deps list from a variable)."""
    trains = [s for n, s in stages.items() if n.startswith("train@")]
    assert {s.option("--family") for s in trains} == {"boosting", "neural", "classical"}
    for t in trains:
        models_dir, preds = t.option("--models"), t.option("--preds")
        for name, flag, path in (("bundle", "--models", models_dir), ("explain", "--models", models_dir),
                                 ("blend", "--preds", preds), ("evaluate", "--preds", preds)):
            assert path in stages[name].option(flag).split(","), (name, path)
            assert path in stages[name].deps, (name, path)


def test_prepare_depends_on_the_data_path():
    """data.path is a dep of prepare (dvc.yaml ``${data.path}``), whatever the source."""
    import yaml

    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "${data.path}" in raw["stages"]["prepare"]["deps"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert (ROOT / params["data"]["path"]).exists()

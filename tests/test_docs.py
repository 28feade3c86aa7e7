"""The documentation stays true to the code: the params reference is regenerated and compared,
and every relative link in README.md and docs/ points at a file that exists."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_params_reference_is_generated_from_the_current_params_and_dvc_yaml():
    p = subprocess.run([sys.executable, "scripts/gen_params_doc.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = (ROOT / "docs/params-reference.md").read_text()
    assert "| `train.lookback` | `32` |" in text and "train@neural" in text.split("`train.lookback`")[1].split("\n")[0]


def test_relative_links_resolve():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_models_table_lists_the_registry():
    """docs/models.md's table has one row per registered base model and ensemble, with the
    registry's family, input kind, tasks and params block."""
    from alphafactory import models

    text = (ROOT / "docs/models.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (\w+) \| ([\w, ]+) \| `([\w.]+)` \|", text, re.M)
    want = [(s.name, s.family, s.input_kind, ", ".join(s.tasks), f"{s.family}.{s.name}")
            for s in sorted(models.REGISTRY.values(), key=lambda s: (s.family, s.name))]
    want += [(e.name, e.family, e.input_kind, ", ".join(e.tasks), e.params) for e in models.ENSEMBLES.values()]
    assert rows == want


def test_feature_table_lists_every_group_with_its_column_count():
    """README.md's feature table: one row per feature group, in FEATURE_GROUPS' order, saying
    whether it is a default group and how many columns it adds under the default windows."""
    import pandas as pd

    from alphafactory.features import DEFAULT_GROUPS, FEATURE_GROUPS, FeatureConfig, compute_features
    from test_features import make_bars

    rows = re.findall(r"^\| `(\w+)` \| (yes|no) \| (\d+) \|", (ROOT / "README.md").read_text(), re.M)
    assert [g for g, _, _ in rows] == list(FEATURE_GROUPS)
    bars = make_bars(pd.bdate_range("2019-01-01", periods=300), n_symbols=3, seed=0)

    def width(groups: tuple[str, ...]) -> int:
        return compute_features(bars, FeatureConfig(groups=groups)).shape[1] - 2

    counts = {g: width((g,)) for g in FEATURE_GROUPS if g != "cross_sectional"}
    counts["cross_sectional"] = width(DEFAULT_GROUPS) - sum(counts[g] for g in DEFAULT_GROUPS if g != "cross_sectional")
    assert {g: (d, int(n)) for g, d, n in rows} == {g: ("yes" if g in DEFAULT_GROUPS else "no", counts[g])
                                                   for g in FEATURE_GROUPS}

"""The whole of ``params.yaml`` checked at once, before any stage runs.

Each stage reads only its own keys (listed one by one in ``dvc.yaml``), so a key that no stage
reads (``dvc exp run -S +data.nosuch=1``, a typo in a new section) would rerun nothing and be
recorded as a valid experiment; and a bad value found by a late stage (``evaluate.cost_bps: -5``)
fails only after DVC has deleted that stage's old outputs. The ``check_params`` stage depends on
the whole file and runs first, so both fail in one line before anything else runs.
"""
from __future__ import annotations

from typing import Any

from alphafactory.blend import BlendConfig
from alphafactory.compute import ComputeConfig
from alphafactory.config import section
from alphafactory.data.sources import DataConfig
from alphafactory.errors import ConfigError
from alphafactory.evaluation.backtest import BacktestConfig
from alphafactory.evaluation.cv import CVConfig
from alphafactory.evaluation.evaluate import EvaluateConfig
from alphafactory.evaluation.explain import ExplainConfig
from alphafactory.evaluation.report import ReportConfig
from alphafactory.features import FeatureConfig
from alphafactory.labels import LabelConfig
from alphafactory.split import SplitConfig
from alphafactory.train import TrainConfig
from alphafactory.tune import TuneConfig

# Sections parsed by a dataclass; the model-family sections are checked against the registry.
SECTIONS: dict[str, type] = {"data": DataConfig, "features": FeatureConfig, "label": LabelConfig,
                             "split": SplitConfig, "train": TrainConfig, "blend": BlendConfig,
                             "evaluate": EvaluateConfig, "cv": CVConfig, "backtest": BacktestConfig,
                             "explain": ExplainConfig, "report": ReportConfig, "tune": TuneConfig,
                             "compute": ComputeConfig}
FAMILIES = ("boosting", "neural", "classical")


def check_params(params: dict[str, Any]) -> list[str]:
    """Raise ``ConfigError`` on the first unknown section or key, or bad value, anywhere in
    ``params``; return the names of the enabled models, each built from its params block (which
    checks its hyperparameters) without training."""
    from alphafactory import models
    from alphafactory.train import distributed, family_inputs

    unknown = sorted(set(params) - set(SECTIONS) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"params.yaml: unknown section(s) {unknown}; expected some of "
                          f"{sorted([*SECTIONS, *FAMILIES])}")
    configs = {name: section(params, name, cls) for name, cls in SECTIONS.items()}  # cv.models too
    train, horizons = configs["train"], configs["label"].horizons
    for key in ("cv", "backtest", "tune"):  # the stages that refit models of their own list
        _check_task(f"{key}.models", configs[key].models, train.task)
    tune_h = configs["tune"].horizon
    if tune_h is not None and tune_h not in horizons:
        raise ConfigError(f"tune.horizon: got {tune_h}, expected one of label.horizons {list(horizons)}")
    enabled = []
    for family in FAMILIES:
        names, blocks, extra = family_inputs(params, family, train, task=train.task)
        for name in names:
            models.create(name, blocks.get(name), horizons=horizons, seed=train.seed, task=train.task,
                          **(extra or {}))
            enabled.append(name)
            if distributed(blocks.get(name)):
                _check_distributed(f"{family}.{name}", train.scope, configs["compute"])
    return enabled


def _check_distributed(key: str, scope: str, compute: ComputeConfig) -> None:
    """``<key>.distributed: true`` trains the pooled model on the compute cluster: it needs one."""
    from alphafactory.models.distributed import need_client

    if scope != "pooled":
        raise ConfigError(f"{key}.distributed: true with train.scope {scope}; expected train.scope: pooled "
                          "(per_symbol fans the symbols' fits out instead)")
    need_client(compute.cluster, key)


def _check_task(key: str, names: tuple[str, ...], task: str) -> None:
    """Every model ``key`` lists supports ``train.task`` (a refit stage would fail on it only
    after the stages before it have run)."""
    from alphafactory import models

    for name in names:
        spec = models.REGISTRY.get(name)
        if spec is not None and task not in spec.tasks:
            able = sorted(n for n, s in models.REGISTRY.items() if task in s.tasks and s.family in FAMILIES)
            raise ConfigError(f"{key}: {name!r} does not support train.task {task!r}; models that do: {able}")

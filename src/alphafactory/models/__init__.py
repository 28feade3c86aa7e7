"""Every model family, behind one registry and one on-disk format.

Adding a model is one new module in this package (a class decorated with ``@register(...)``) plus
its params block in ``params.yaml`` (see docs/models.md).

- :mod:`~alphafactory.models.base`: the contract (:class:`~alphafactory.models.base.Forecaster`,
  what callers forecast with; :class:`~alphafactory.models.base.Model`, what a family trains);
- :mod:`~alphafactory.models.registry`: ``register``, ``get``, ``create``, ``REGISTRY`` (lazy:
  listing models imports no model library), and ``ENSEMBLES``, the blend methods;
- :mod:`~alphafactory.models.persist`: ``save`` and ``load`` (manifests and native artifacts);
- :mod:`~alphafactory.models.per_symbol`: one model per symbol (``train.scope: per_symbol``);
- :mod:`~alphafactory.models.export`: a PyTorch model's forward pass as ONNX, for bundles;
- :mod:`~alphafactory.models.portable`: the ONNX files' names and the ONNX Runtime import that
  the export check and :mod:`alphafactory.serving.onnx_runtime` share.
"""
from alphafactory.errors import NotFittedError
from alphafactory.models import registry
from alphafactory.models.base import Forecaster, Model
from alphafactory.models.persist import load, save
from alphafactory.models.registry import ENSEMBLES, REGISTRY, EnsembleSpec, ModelSpec, create, get, register

registry.discover()  # last: a module that discovery imports finds ``register`` bound here

__all__ = ["REGISTRY", "ENSEMBLES", "ModelSpec", "EnsembleSpec", "Forecaster", "Model", "NotFittedError", "register", "get", "create",
           "load", "save"]

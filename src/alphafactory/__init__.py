"""alphafactory: multi-horizon asset-return forecasters as a reproducible DVC pipeline.

Importing any part of the package first sets ``OMP_WAIT_POLICY=passive`` unless the user set it.
The OpenMP runtime of LightGBM, XGBoost and PyTorch reads it once, when the first of them loads
(always after this import: the package imports them lazily, in the model modules). Its default
makes idle threads spin for a while: harmless on an idle machine, but on a busy 2-core one the
spinning threads take the cores from the threads doing the work (LightGBM ~10x slower when
another process runs beside it). Passive waiting costs little on an idle machine. Setting it
here, not only in the Makefile, covers ``dvc repro``, ``dvc exp run`` and ``python stages/...``
called directly.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

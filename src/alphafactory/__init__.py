"""alphafactory: multi-horizon asset-return forecasters, trained and compared by a DVC pipeline.

Importing any part of the package first sets a few environment variables, each unless the user
set it already. The libraries read them once, when they load or first compute, which is always
after this import: the package imports them lazily, in the modules that use them. Setting them
here, not only in the Makefile, covers ``dvc repro``, ``dvc exp run`` and ``python stages/...``
called directly.

- ``OMP_WAIT_POLICY=passive``: the OpenMP runtime of LightGBM, XGBoost and PyTorch otherwise
  makes idle threads spin for a while: harmless on an idle machine, but on a busy 2-core one the
  spinning threads take the cores from the threads doing the work (LightGBM ~10x slower when
  another process runs beside it). Passive waiting costs little on an idle machine.
- ``ORT_DISABLE_TELEMETRY=1``: ONNX Runtime's library writes a device id and a telemetry event
  store under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` the moment it is imported (and
  would upload the events); this turns it off.
- ``ONEDNN_MAX_CPU_ISA=AVX2``: PyTorch's CPU kernels (oneDNN: convolutions, linear layers) pick
  their instruction set by the machine's CPU, and AVX-512 kernels round differently from AVX2
  ones, so a network trained on an AVX-512 machine came out different from the same training on
  one without (a TCN's test IC 0.0234 against 0.0255). Capping oneDNN at AVX2, which every x86-64
  machine of the last decade has, gives both the same kernels; measured here, training time did
  not change (TCN and LSTM fits of 8 epochs, within noise).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

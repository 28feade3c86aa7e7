"""alphafactory: multi-horizon asset-return forecasters, trained and compared by a DVC pipeline."""
import os

# ONNX Runtime's library writes a device id and a telemetry event store under
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime the moment it is imported (and would upload the
# events); ORT_DISABLE_TELEMETRY=1, read at that import, turns it off. Set here, before any
# alphafactory module can import it; an explicit value in the environment is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

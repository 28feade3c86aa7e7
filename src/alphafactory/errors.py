"""Every exception type the package raises on purpose, in one module that imports nothing.

Two families: :class:`ConfigError` (a bad params value) and :class:`InputError` (bad data,
arguments or artifacts). Stages and the CLI end on either with one line naming the problem,
never a traceback (:func:`alphafactory.stage.run`); anything else is a bug."""
from __future__ import annotations


class ConfigError(ValueError):
    """Invalid params: names the key, the bad value and what was expected."""


class InputError(ValueError):
    """Bad user input (data or arguments): names the input, the bad value and what was expected.
    Stages end on it, as on :class:`ConfigError`, with one line instead of a traceback."""


class DataValidationError(InputError):
    """Invalid input data: names the file, column, symbol and first offending row."""


class ArtifactError(InputError):
    """A saved artifact (model directory, blender, bundle) that cannot be read or trusted: names
    the file and what was expected."""


class BundleError(ArtifactError):
    """A bundle that cannot be built, trusted or read: names the file and what was expected."""


class NotFittedError(ValueError):
    """predict/save called on a model that has not been fitted."""

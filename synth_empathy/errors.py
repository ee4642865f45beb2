"""Every error the package raises on purpose, in one place.

:class:`BadInputError` is the base of everything a user can fix by changing what they
give the tool (a config key, a seed file, a bucket, a model folder, an input column):
every command catches it, prints one ``error:`` line and exits with code 2, before Ray
starts or a model loads wherever the check can be made that early. Anything else that
escapes is a bug or an infrastructure failure and keeps its traceback.
"""

from __future__ import annotations


class SynthEmpathyError(Exception):
    """Base of the package's own errors."""


class EngineStartError(SynthEmpathyError, RuntimeError):
    """A shared engine (a Ray Serve deployment) failed to start; the message has Ray
    Serve's reason. Not bad input as such: the cause may be memory, a driver, a model."""


class BadInputError(SynthEmpathyError, ValueError):
    """Something the user gave is wrong; the message is one line saying what and where."""


class ConfigError(BadInputError):
    """A configuration key or value is wrong (unknown key, bad type, impossible value)."""


class SeedError(BadInputError):
    """A seed file cannot be read or holds no usable seed."""


class StorageError(BadInputError):
    """The output or input location cannot be used (missing bucket, no permission)."""


class ModelNotFoundError(BadInputError):
    """A model name resolves to nothing loadable (no package, no folder, no weights)."""


class SelectionError(BadInputError):
    """k-center selection cannot run on what it was given (NaN rows, empty input, bad k)."""


class JudgeInputError(BadInputError):
    """A corpus given to ``synth-empathy judge`` lacks what the judge needs."""


class ClusterError(ConfigError):
    """The cluster cannot be reached or cannot hold the configured engines."""


class TrainingInputError(BadInputError):
    """Training data, the base model or the output folder cannot be used for training."""


class EvaluationInputError(BadInputError):
    """A held-out set or a model to evaluate cannot be used."""


class StageInputError(BadInputError):
    """A stage's input lacks a column the stage declares it requires."""


class DuplicateRowsError(SynthEmpathyError, RuntimeError):
    """A stage's parts hold the same id twice; the stage is not marked done.

    Not bad input: it means a write went wrong, and the run stops rather than mark it done.
    """


class CalibrationInputError(BadInputError):
    """The reference dialogues of a calibration cannot give a measurement (too few of them)."""


class JudgeValidationError(BadInputError):
    """The judge's reference set cannot give a validation (too few dialogues)."""

"""The exception tree of medsi: every error it raises on purpose derives from MedsiError."""

__all__ = [
    "MedsiError",
    "ConfigError",
    "InputDataError",
    "NotPiecewiseLinearError",
    "InferenceError",
    "ExportError",
    "PacsError",
]


class MedsiError(Exception):
    """Base class of all errors raised deliberately by medsi."""


class ConfigError(MedsiError, ValueError):
    """An argument or option has a value medsi cannot use."""


class InputDataError(MedsiError, ValueError):
    """An input file is unreadable or its geometry is inconsistent."""


class NotPiecewiseLinearError(MedsiError, TypeError):
    """A model contains an operation that is not piecewise linear in its input."""


class InferenceError(MedsiError, RuntimeError):
    """The selective-inference search stalled, ran over budget or broke a guard rail."""


class ExportError(MedsiError, ValueError):
    """A DICOM object would not be standard-compliant."""


class PacsError(MedsiError, RuntimeError):
    """A DICOM network service cannot run or be reached (port taken, node not startable)."""

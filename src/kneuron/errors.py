"""The one exception family users catch: every message says what was wrong and what to do."""

from __future__ import annotations


class KneuronError(Exception):
    """Base class for every error kneuron raises on purpose."""


class ModelLoadError(KneuronError):
    """A model could not be found or loaded."""


class UnsupportedArchitectureError(KneuronError):
    """The model's architecture has no registered spec."""


class FactError(KneuronError):
    """A fact, template, prompt or answer is malformed."""


class NeuronIndexError(KneuronError):
    """A layer or neuron index lies outside the model."""

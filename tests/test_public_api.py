"""What ``import kneuron`` offers: the estimators, the atlas, edits and every error, and the installed version."""

from __future__ import annotations

from importlib.metadata import version

import kneuron
from kneuron import errors


def test_the_version_is_the_package_metadata():
    assert kneuron.__version__ == version("kneuron")


def test_estimators_atlas_edit_and_errors_are_exported():
    for name in ("IntegratedGradients", "GradientTimesActivation", "LogProbIncrease", "ScreenedIntegratedGradients",
                 "Estimator", "Atlas", "Edit"):
        assert name in kneuron.__all__ and getattr(kneuron, name) is not None
    defined = {name for name, value in vars(errors).items() if isinstance(value, type) and
               issubclass(value, errors.KneuronError) and value.__module__ == errors.__name__}
    for name in ("KneuronError", "InputError", "FactError", "AtlasError", "EditError", "StudyError"):
        assert name in defined and getattr(kneuron, name) is getattr(errors, name)


def test_input_errors_are_value_errors():
    for error in (errors.InputError, errors.FactError, errors.NeuronIndexError, errors.ProbeInputError):
        assert issubclass(error, ValueError) and issubclass(error, errors.KneuronError)

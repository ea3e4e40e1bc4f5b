"""kneuron: find, test and edit the knowledge neurons of transformer language models."""

from kneuron.errors import KneuronError
from kneuron.facts import Fact, Prompt, answer_probability, encode, top_predictions
from kneuron.models import LanguageModel, NeuronPatch, capture, from_model, load, patch

__version__ = "0.1.0"

__all__ = [
    "Fact", "KneuronError", "LanguageModel", "NeuronPatch", "Prompt", "__version__", "answer_probability",
    "capture", "encode", "from_model", "load", "patch", "top_predictions",
]

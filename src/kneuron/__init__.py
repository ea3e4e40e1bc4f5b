"""kneuron: find, test and edit the knowledge neurons of transformer language models.

Example:
    >>> import kneuron
    >>> lm = kneuron.load()                                   # embedded SmolLM2-135M
    >>> kn = kneuron.find_knowledge_neurons(lm, ["The capital of France is", "France's capital is"], "Paris")
    >>> print(kn.neurons)
"""

from kneuron.attribution import (
    KnowledgeNeurons,
    Neuron,
    NeuronScores,
    activation_baseline,
    coarse_neurons,
    find_knowledge_neurons,
    integrated_gradients,
    integrated_gradients_many,
    refine,
)
from kneuron.errors import KneuronError
from kneuron.facts import Fact, Prompt, answer_probability, encode, top_predictions
from kneuron.models import LanguageModel, NeuronPatch, capture, from_model, load, patch

__version__ = "0.1.0"

__all__ = [
    "Fact", "KneuronError", "KnowledgeNeurons", "LanguageModel", "Neuron", "NeuronPatch", "NeuronScores", "Prompt",
    "__version__", "activation_baseline", "answer_probability", "capture", "coarse_neurons", "encode",
    "find_knowledge_neurons", "from_model", "integrated_gradients", "integrated_gradients_many", "load", "patch",
    "refine", "top_predictions",
]

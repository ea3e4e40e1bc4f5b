"""kneuron: find, test and edit the knowledge neurons of transformer language models.

Example:
    >>> import kneuron
    >>> lm = kneuron.load()                                   # embedded SmolLM2-135M
    >>> kn = kneuron.find_knowledge_neurons(lm, ["The capital of France is", "France's capital is"], "Paris")
    >>> print(kn.neurons)
"""


from kneuron.attribution import (
    Estimator,
    GradientTimesActivation,
    IntegratedGradients,
    KnowledgeNeurons,
    LogProbIncrease,
    Neuron,
    NeuronScores,
    ScreenedIntegratedGradients,
    activation_baseline,
    coarse_neurons,
    estimator_named,
    find_knowledge_neurons,
    integrated_gradients,
    integrated_gradients_many,
    refine,
)
from kneuron.errors import (
    AtlasError,
    EditError,
    FactError,
    InputError,
    KneuronError,
    ModelLoadError,
    NeuronIndexError,
    StudyError,
    UnsupportedArchitectureError,
    VocabularyError,
)
from kneuron.facts import Fact, Prompt, answer_probability, encode, top_predictions
from kneuron.interventions import Edit
from kneuron.models import LanguageModel, NeuronPatch, capture, from_model, load, patch
from kneuron.store import Atlas
from kneuron.version import __version__

__all__ = [
    "Atlas", "AtlasError", "Edit", "EditError", "Estimator", "Fact", "FactError", "GradientTimesActivation",
    "InputError", "IntegratedGradients", "KneuronError", "KnowledgeNeurons", "LanguageModel", "LogProbIncrease",
    "ModelLoadError", "Neuron", "NeuronIndexError", "NeuronPatch", "NeuronScores", "Prompt",
    "ScreenedIntegratedGradients", "StudyError", "UnsupportedArchitectureError", "VocabularyError", "__version__",
    "activation_baseline", "answer_probability", "capture", "coarse_neurons", "encode", "estimator_named",
    "find_knowledge_neurons", "from_model", "integrated_gradients", "integrated_gradients_many", "load", "patch",
    "refine", "top_predictions",
]

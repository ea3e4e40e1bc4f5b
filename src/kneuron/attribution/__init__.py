"""Attribution: scores of FFN neurons (integrated gradients or a cheaper estimator) and knowledge-neuron selection."""

from kneuron.attribution.estimators import (
    Estimator,
    GradientTimesActivation,
    IntegratedGradients,
    LogProbIncrease,
    ScreenedIntegratedGradients,
    estimator_from_params,
    estimator_named,
    screen_layers,
)
from kneuron.attribution.integrated_gradients import (
    alpha_points,
    integrated_gradients,
    integrated_gradients_many,
)
from kneuron.attribution.knowledge import attribute_bag, find_knowledge_neurons
from kneuron.attribution.selection import activation_baseline, coarse_neurons, refine
from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores

__all__ = [
    "Estimator", "GradientTimesActivation", "IntegratedGradients", "LogProbIncrease", "ScreenedIntegratedGradients",
    "estimator_from_params", "estimator_named", "screen_layers",
    "KnowledgeNeurons", "Neuron", "NeuronScores", "activation_baseline", "alpha_points", "attribute_bag",
    "coarse_neurons", "find_knowledge_neurons", "integrated_gradients", "integrated_gradients_many", "refine",
]

"""Attribution: integrated-gradients scores of FFN neurons and knowledge-neuron selection."""

from kneuron.attribution.selection import activation_baseline, coarse_neurons, refine
from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores

__all__ = ["KnowledgeNeurons", "Neuron", "NeuronScores", "activation_baseline", "coarse_neurons", "refine"]

"""The paper's studies as plain functions: (model, facts, neurons by fact id) in, long-format result rows out.

Each row is ``{"study", "variant", "relation", "fact_id", "metric", "value"}``, the shape the atlas stores;
:func:`summarize` averages a metric over facts, overall and per relation.

Example:
    >>> rows = suppress_amplify(lm, facts, neurons_by_fact, generic=generic_neurons(neurons_by_fact))
    >>> summarize(rows, "kn", "suppress").mean
"""

from kneuron.studies.discrimination import discrimination, prompt_discrimination, sentence_discrimination
from kneuron.studies.generic import GenericNeuron, generic_neurons, generic_rows, probe_generic
from kneuron.studies.layer_distribution import layer_distribution, top_layers, top_third_share
from kneuron.studies.metrics import (
    Summary,
    activations_at,
    answer_probabilities,
    patched_probabilities,
    relative_change,
    roc_auc,
    summarize,
)
from kneuron.studies.suppress_amplify import random_control, suppress_amplify
from kneuron.studies.vocabulary import vocabulary_study

__all__ = [
    "GenericNeuron", "Summary", "activations_at", "answer_probabilities", "discrimination", "generic_neurons",
    "generic_rows", "layer_distribution", "patched_probabilities", "probe_generic", "prompt_discrimination",
    "random_control", "relative_change", "roc_auc", "sentence_discrimination", "summarize", "suppress_amplify",
    "top_layers", "top_third_share", "vocabulary_study",
]

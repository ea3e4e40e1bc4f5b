"""Weight edits through knowledge neurons: update a fact, erase a relation; and ROME's rank-one update of one layer
(:mod:`kneuron.interventions.rome`). An edit is data (print, apply, undo bit-exactly, save, load).

Example:
    >>> from kneuron.interventions import Edit, update_fact, erase_relation
    >>> edit = update_fact(lm, kn, "Paris", "Rome")
    >>> with edit.applied(lm):
    ...     ...
"""

from kneuron.errors import EditError
from kneuron.interventions.edits import AppliedEdit, Edit, SlotGroup, fingerprint
from kneuron.interventions.erase import count_neurons, erase_relation, top_neurons
from kneuron.interventions.rome import RomeSettings, default_layer, rome_update
from kneuron.interventions.rome_stats import KeyStats, key_second_moment
from kneuron.interventions.update import (
    answer_embedding,
    answer_ids,
    neuron_keys,
    output_embeddings,
    shared_neurons,
    update_fact,
)
from kneuron.interventions.vocabulary import NeuronVocabulary, neuron_vocabulary, slot_logits

__all__ = [
    "AppliedEdit", "Edit", "EditError", "KeyStats", "NeuronVocabulary", "RomeSettings", "SlotGroup",
    "answer_embedding", "answer_ids", "count_neurons", "default_layer", "erase_relation", "fingerprint",
    "key_second_moment", "neuron_keys", "neuron_vocabulary", "output_embeddings", "rome_update", "shared_neurons",
    "slot_logits", "top_neurons", "update_fact",
]

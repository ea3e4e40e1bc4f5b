"""Weight edits through knowledge neurons: update a fact, erase a relation; an edit is data (print, apply,
undo bit-exactly, save, load).

Example:
    >>> from kneuron.interventions import Edit, update_fact, erase_relation
    >>> edit = update_fact(lm, kn, "Paris", "Rome")
    >>> with edit.applied(lm):
    ...     ...
"""

from kneuron.errors import EditError
from kneuron.interventions.edits import AppliedEdit, Edit, SlotGroup, fingerprint
from kneuron.interventions.erase import count_neurons, erase_relation, top_neurons
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
    "AppliedEdit", "Edit", "EditError", "NeuronVocabulary", "SlotGroup", "answer_embedding", "answer_ids",
    "count_neurons", "erase_relation", "fingerprint", "neuron_keys", "neuron_vocabulary", "output_embeddings",
    "shared_neurons", "slot_logits", "top_neurons", "update_fact",
]

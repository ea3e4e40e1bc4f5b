"""The vocabulary views of ``kneuron atlas --fact`` and ``kneuron find --vocab N``: what a fact's knowledge neurons
write, from the atlas's ``vocabulary`` table, and the projection columns of ``find``. The study that fills the table,
``kneuron study vocabulary``, is :mod:`kneuron.studies.catalog.vocabulary`."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from kneuron.cli.app import console, show_token
from kneuron.studies.catalog.vocabulary import SHOWN_TOKENS, neuron_name, tokens


def show_fact_vocabulary(atlas, fact_id: str, neurons: Sequence) -> None:
    """``kneuron atlas --fact``: what the fact's knowledge neurons write, from the atlas's vocabulary table (or how
    to get it)."""
    from kneuron.store.vocabulary import read_vocabulary

    if not neurons:
        return
    stored = read_vocabulary(atlas, fact_id)
    if not stored:
        console.print(Text(f"What its neurons write: `kneuron study vocabulary --run {atlas.path}` projects their "
                           "value slots onto the vocabulary.", style="dim"), soft_wrap=True)
        return
    table = Table(show_edge=False)
    for column in ("neuron", "activation", "answer rank", "promotes most", "suppresses most"):
        table.add_column(column, justify="right" if column in ("activation", "answer rank") else "left")
    for entry in stored:
        table.add_row(neuron_name(entry), f"{entry['activation']:+.3g}", str(entry["answer_rank"]),
                      Text(tokens(entry["promoted"], SHOWN_TOKENS + 2)), Text(tokens(entry["suppressed"])))
    console.print(Text(f"What its knowledge neurons write (value slot × the sign of its activation, projected onto the "
                       f"vocabulary; answer token {show_token(stored[0]['answer_token'])}, rank 0 = promoted most)",
                       style="bold"), soft_wrap=True)
    console.print(table)
    if {(e["layer"], e["neuron"]) for e in stored} != {n.key for n in neurons}:
        console.print(Text("These are not the fact's knowledge neurons now: run `kneuron study vocabulary` again.",
                           style="yellow"), soft_wrap=True)


def find_projection(lm, kn, prompt, answer: str, top: int) -> list | str:
    """For ``kneuron find --vocab N``: each knowledge neuron's :class:`~kneuron.interventions.vocabulary.
    NeuronVocabulary` (its slot times the sign of its mean activation over the prompts, the answer's first token
    after ``prompt`` ranked), or why the model has no projection."""
    from kneuron.interventions.update import answer_ids
    from kneuron.interventions.vocabulary import (
        VocabularyError,
        activation_signs,
        neuron_vocabulary,
        normalised_unembedding,
    )

    keys = [n.key for n in kn.neurons]
    if not keys:
        return []
    try:
        normalised_unembedding(lm)  # first: the answer's ids need output embeddings too, and would say less
    except VocabularyError as exc:
        return str(exc)
    means = [sum(float(s.activations[layer, index]) for s in kn.scores) / len(kn.scores) for layer, index in keys]
    return neuron_vocabulary(lm, keys, activation_signs(means), top=top, answer_id=answer_ids(lm, answer, prompt)[0])


def projection_cells(lm, found: Sequence) -> dict[tuple[int, int], str]:
    """One table cell per neuron: its promoted tokens and the answer's rank."""
    from kneuron.interventions.vocabulary import token_text

    return {v.key: " ".join(show_token(token_text(lm, t)) for t, _ in v.promoted) + f" (answer rank {v.answer_rank})"
            for v in found}


def projection_json(lm, found: Sequence) -> dict[str, object]:
    """Per neuron ``{"sign", "answer_rank", "promoted", "suppressed"}`` (token lists of ``[id, text, logit]``)."""
    from kneuron.interventions.vocabulary import token_text

    return {str(v): {"sign": v.sign, "answer_rank": v.answer_rank,
                     "promoted": [[t, token_text(lm, t), x] for t, x in v.promoted],
                     "suppressed": [[t, token_text(lm, t), x] for t, x in v.suppressed]} for v in found}

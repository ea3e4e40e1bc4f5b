"""``kneuron study vocabulary --run ATLAS``: what each knowledge neuron writes, its value slot projected onto the
vocabulary (:mod:`kneuron.studies.vocabulary`), stored as the ``vocabulary`` study's rows and the atlas's
``vocabulary`` table (:mod:`kneuron.store.vocabulary`) and printed as a short table; also the projection columns of
``kneuron atlas --fact`` and ``kneuron find --vocab N``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.cli.app import atlas_model, console, err_console, require_done_facts, show_token

#: facts whose neurons the study's printout shows as examples
EXAMPLE_FACTS = 6
#: tokens per neuron in the examples and the ``--fact`` display
SHOWN_TOKENS = 6
#: neurons per fact in the examples (the best ones)
EXAMPLE_NEURONS = 4


def vocabulary_study_command(run: Path, model: str | None, device: str, seed: int) -> list[dict]:
    """Run the study on the atlas's done facts, store its rows and the neurons' top tokens, print its summary."""
    from kneuron.store import Atlas

    with Atlas.open(run) as atlas:
        require_done_facts(atlas, run)
        lm = atlas_model(atlas, model, device)
        rows, stored = run_vocabulary_study(atlas, lm, seed)
    print_vocabulary_summary(rows, stored, run)
    return rows


def run_vocabulary_study(atlas, lm, seed: int = 0) -> tuple[list[dict], list[Mapping]]:
    """Compute the study on the atlas's done facts with ``lm``, write its rows and the neurons' top tokens, and
    return ``(rows, stored top tokens)`` (what :func:`print_vocabulary_summary` prints)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.interventions.vocabulary import token_text
    from kneuron.store.vocabulary import read_vocabulary, write_vocabulary
    from kneuron.studies.vocabulary import STUDY, study_vocabularies, vocabulary_rows

    with atlas.snapshot():  # the facts and their neurons of one moment, also while a run writes
        facts = atlas.facts()
        neurons = atlas.all_refined()
    start = time.perf_counter()
    columns = (TextColumn("vocabulary"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("facts", total=len(facts))
        found = study_vocabularies(lm, facts, neurons, seed=seed, on_fact=lambda _fact: progress.advance(task))
    rows = vocabulary_rows(found, seed=seed)
    err_console.print(f"[dim]vocabulary {time.perf_counter() - start:.1f} s[/dim]", highlight=False)
    atlas.write_results(STUDY, rows, facts=[fact.id for fact in facts])
    write_vocabulary(atlas, found, lambda token: token_text(lm, token))
    with atlas.snapshot():
        stored = read_vocabulary(atlas)
    return rows, stored


def print_vocabulary_summary(rows: Sequence[dict], stored: Sequence[Mapping], run: Path | str) -> None:
    """Print the study's summary table and examples."""
    for part in vocabulary_tables(rows, stored, run):
        console.print(part, soft_wrap=isinstance(part, Text))


def _num(value: float, spec: str) -> str:
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def tokens(entries: Sequence[tuple[int, str, float]], count: int = SHOWN_TOKENS) -> str:
    """Tokens as their quoted texts, e.g. ``' Paris' ' France'``."""
    return " ".join(show_token(text) for _, text, _ in entries[:count])


def vocabulary_tables(rows: Sequence[dict], stored: Sequence[Mapping], run: Path | str) -> list[Table | Text]:
    """The summary (knowledge neurons against the random control) and a few facts' neurons as examples."""
    from kneuron.studies.vocabulary import study_params, vocabulary_summary

    summary = vocabulary_summary(rows)
    params = study_params(rows)
    top, wide = int(params.get("top", 10)), int(params.get("wide", 100))
    n_facts = summary["kn"]["neurons"][1]
    parts: list[Table | Text] = [Text(f"What the knowledge neurons write: {n_facts} fact(s), value slots projected "
                                      f"onto {params.get('vocab_size', 0):.0f} tokens, stored in {run}",
                                      style="bold")]
    table = Table(show_edge=False)
    for column in ("measure", "knowledge neurons", "random, same layers"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for metric, label, spec in (
            (f"answer_top{top}", f"facts: answer among a neuron's {top} most promoted tokens", ".1%"),
            (f"answer_top{wide}", f"facts: answer among a neuron's {wide} most promoted", ".1%"),
            (f"suppressed_top{top}", f"facts: answer among a neuron's {top} most suppressed", ".1%"),
            (f"suppressed_top{wide}", f"facts: answer among a neuron's {wide} most suppressed", ".1%"),
            ("best_rank", "median over facts of the best answer rank", ".0f"),
            ("neuron_rank", "median answer rank over (fact, neuron) pairs", ".0f"),
            ("raises_answer", "neurons that raise the answer's logit (at any rank)", ".1%"),
            ("negative", "neurons with a negative activation (slot taken as −slot)", ".1%"),
            ("neurons", "neurons per fact", ".2f")):
        cells = [f"{_num(summary[v][metric][0], spec)} (n={summary[v][metric][1]})" for v in ("kn", "random")]
        table.add_row(label, *cells)
    parts.append(table)
    parts.append(Text("rank 0 = the token a neuron promotes most; the answer is the first token of the fact's answer; "
                      "each slot is taken with the sign of its neuron's mean activation on the fact's prompts",
                      style="dim"))
    if stored:
        examples = Table(show_edge=False)
        for column in ("fact", "neuron", "sign", "answer rank", "promotes most", "suppresses most"):
            examples.add_column(column, justify="right" if column == "answer rank" else "left")
        shown: list[str] = []
        for entry in stored:
            if entry["fact_id"] not in shown:
                if len(shown) == EXAMPLE_FACTS:
                    break
                shown.append(entry["fact_id"])
            if entry["idx"] >= EXAMPLE_NEURONS:
                continue
            examples.add_row(entry["fact_id"] if entry["idx"] == 0 else "", neuron_name(entry), _sign(entry["sign"]),
                             str(entry["answer_rank"]), Text(tokens(entry["promoted"])),
                             Text(tokens(entry["suppressed"], 4)))
        facts = len({entry["fact_id"] for entry in stored})
        parts += [Text(""), Text(f"Examples ({len(shown)} of {facts} facts, their {EXAMPLE_NEURONS} best neurons at "
                                 f"most; `kneuron atlas --run {run} --fact ID` shows all of one fact's)",
                                 style="bold"), examples]
    return parts


def neuron_name(entry: Mapping) -> str:
    return f"L{entry['layer']}.N{entry['neuron']}"


def _sign(sign: float) -> str:
    return "−" if sign < 0 else "+"


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

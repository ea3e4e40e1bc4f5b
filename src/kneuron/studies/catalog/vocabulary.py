"""``vocabulary``: what each knowledge neuron writes, its value slot projected onto the vocabulary with the sign of
its activation (Geva et al. 2022; :mod:`kneuron.studies.vocabulary`): does it promote the fact's answer (top 10 /
100), against random neurons of the same layers? Stores the top tokens per neuron in the atlas's ``vocabulary``
table (:mod:`kneuron.store.vocabulary`; ``kneuron atlas --fact`` shows them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.interventions.vocabulary import token_text
from kneuron.studies.base import SEED, Study, StudyContext, StudyOutput, show_token
from kneuron.studies.base import number as _num
from kneuron.studies.registry import register_study
from kneuron.studies.vocabulary import study_params, study_vocabularies, vocabulary_rows, vocabulary_summary

#: facts whose neurons the study's printout shows as examples
EXAMPLE_FACTS = 6
#: tokens per neuron in the examples and the ``--fact`` display
SHOWN_TOKENS = 6
#: neurons per fact in the examples (the best ones)
EXAMPLE_NEURONS = 4


@register_study
class Vocabulary(Study):
    """What each knowledge neuron writes: its value slot projected onto the vocabulary, against random neurons
    of the same layers.

    Control: the knowledge neurons' vocabulary measures against as many random neurons of the same layers, per
    fact (``kn`` vs ``random``) and per neuron (``kn_neuron`` vs ``random_neuron``: a fact's value is the mean over
    its neurons)."""

    name = "vocabulary"
    title = "What the knowledge neurons write"
    group = "beyond"
    controls = {"kn": "random", "kn_neuron": "random_neuron"}
    options = (SEED,)

    def run(self, context: StudyContext) -> StudyOutput:
        seed, lm = context.options["seed"], context.lm
        advance = context.progress("vocabulary", len(context.facts))
        found = study_vocabularies(lm, context.facts, context.atlas.all_refined(), seed=seed,
                                   on_fact=lambda _fact: advance())
        rows = vocabulary_rows(found, seed=seed)
        return StudyOutput(rows, tables={"vocabulary": (found, lambda token: token_text(lm, token))})

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        return vocabulary_tables(output.rows, output.extra.get("vocabulary", []), context.run_path)



def tokens(entries: Sequence[tuple[int, str, float]], count: int = SHOWN_TOKENS) -> str:
    """Tokens as their quoted texts, e.g. ``' Paris' ' France'``."""
    return " ".join(show_token(text) for _, text, _ in entries[:count])


def vocabulary_tables(rows: Sequence[dict], stored: Sequence[Mapping], run: Path | str) -> list[Table | Text]:
    """The summary (knowledge neurons against the random control) and a few facts' neurons as examples."""
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



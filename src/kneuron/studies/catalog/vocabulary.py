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
from kneuron.studies.display import fit_table
from kneuron.studies.registry import register_study
from kneuron.studies.vocabulary import (
    study_params,
    study_vocabularies,
    summary_figures,
    vocabulary_rows,
    vocabulary_summary,
)

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
        return vocabulary_tables(output.rows, output.extra.get("vocabulary", []), context.run_path,
                                 output.aggregates, context.width)



def tokens(entries: Sequence[tuple[int, str, float]], count: int = SHOWN_TOKENS) -> str:
    """Tokens as their quoted texts, e.g. ``' Paris' ' France'``."""
    return " ".join(show_token(text) for _, text, _ in entries[:count])


def vocabulary_tables(rows: Sequence[dict], stored: Sequence[Mapping], run: Path | str,
                      aggregates: Sequence[dict] = (), width: int | None = None) -> list[Table | Text]:
    """The summary (knowledge neurons against the random control: each mean over facts with its stored interval,
    n and paired p, :func:`~kneuron.studies.vocabulary.summary_figures`; one measure per line on a terminal too
    narrow for the table, ``width``) and a few facts' neurons as examples."""
    summary = vocabulary_summary(rows)
    params = study_params(rows)
    n_facts = summary["kn"]["neurons"][1]
    parts: list[Table | Text] = [Text(f"What the knowledge neurons write: {n_facts} fact(s), value slots projected "
                                      f"onto {params.get('vocab_size', 0):.0f} tokens, stored in {run}",
                                      style="bold")]
    parts.append(fit_table("Knowledge neurons against random neurons of the same layers",
                           ["measure", "knowledge neurons (p vs random)", "random, same layers"],
                           [list(line) for line in summary_figures(rows, aggregates)], width))
    parts.append(Text("rank 0 = the token a neuron promotes most; the answer is the first token of the fact's answer; "
                      "each slot is taken with the sign of its neuron's mean activation on the fact's prompts; means "
                      "over facts [95% interval: bootstrap over facts; Wilson's for a share of facts], n facts, "
                      "paired p against the random neurons", style="dim"))
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



"""The report's "What the neurons write" section: each knowledge neuron's value slot projected onto the vocabulary
(Geva et al. 2022), from the ``vocabulary`` study's rows (:mod:`kneuron.studies.vocabulary`) and the atlas's
``vocabulary`` table of top tokens (:mod:`kneuron.store.vocabulary`): does a knowledge neuron write its fact's
answer, or something else (a format, a topic), against random neurons of the same layers?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from kneuron.report.parts import escape as _e
from kneuron.report.parts import image as _image
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.report.plots import COLORS, LABELS, to_png
from kneuron.studies.display import stored_figure
from kneuron.studies.metrics import summarize
from kneuron.studies.vocabulary import STUDY, study_params, summary_figures, vocabulary_summary

TITLE = "What the neurons write"
#: what ../shared/PAPER.md says of Geva et al. (the report quotes nothing beyond it)
PAPER = ("Geva et al. (2022): a value slot projected onto the vocabulary (unembedding × slot) shows which tokens a "
         "neuron promotes.")
#: facts whose neurons the examples table shows, and tokens per neuron there
EXAMPLE_FACTS, EXAMPLE_TOKENS = 16, 8
#: below this many facts the section warns that its shares are anecdotes
FEW_FACTS = 10


def _tokens(entries: Sequence[Sequence], count: int = EXAMPLE_TOKENS) -> str:
    return " ".join(f"<code>{_e(repr(entry[1]))}</code>" for entry in entries[:count])


def rank_figure(rows: Sequence[dict]) -> bytes | None:
    """The answer's rank among each neuron's promoted tokens, knowledge neurons against the random control: the
    share of (fact, neuron) pairs with a rank below each bound (log scale), up to the whole vocabulary."""
    ranks = {v: [r["value"] for r in rows if r["variant"] == f"{v}_neuron" and r["metric"] == "answer_rank"]
             for v in ("kn", "random")}
    if not ranks["kn"]:
        return None
    vocab = max(study_params(rows).get("vocab_size", 0), max(ranks["kn"] + ranks["random"]) + 1)
    bounds = np.unique(np.geomspace(1, vocab, 200).round())
    figure = Figure(figsize=(7.0, 3.6))
    axis = figure.subplots()
    for variant, values in ranks.items():
        if values:
            sorted_values = np.sort(np.asarray(values))
            axis.step(bounds, np.searchsorted(sorted_values, bounds, side="left") / len(values), where="post",
                      color=COLORS[variant], label=f"{LABELS[variant]} (n={len(values)})", linewidth=2)
    axis.plot(bounds, bounds / vocab, color="#999999", linestyle=":", label="uniform rank (chance)")
    axis.set_xscale("log")
    axis.set_xlabel("k (tokens)")
    axis.set_ylabel("share of (fact, neuron) pairs")
    axis.set_title("Answer among a neuron's k most promoted tokens")
    axis.set_ylim(0, 1)
    axis.legend(loc="upper left", fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)


def vocabulary_section(rows: Sequence[dict], stored: Sequence[Mapping] = (),
                       covered: Mapping[str, object] | None = None, done_facts: int = 0, source: str = "ATLAS",
                       aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; says how to run the study when the atlas has no ``vocabulary`` rows.
    ``stored``: the atlas's vocabulary table (the examples); ``covered``: the facts the study covered;
    ``aggregates``: the study's stored ones (each mean's interval, n and paired p)."""
    rows = list(rows)
    parts = [f"<h2>{TITLE}</h2>"]
    if not rows:
        return parts[0] + f"<p>Not run: <code>kneuron study vocabulary --run {_e(source)}</code></p>"
    params = study_params(rows)
    top, wide = int(params.get("top", 10)), int(params.get("wide", 100))
    summary = vocabulary_summary(rows)
    n_facts = summary["kn"]["neurons"][1]
    facts = covered.get("facts") if covered else None
    scope = f" (the study covered {facts} of the atlas's {done_facts} done facts)" if facts is not None else ""
    parts.append(
        f'<p class="note">{_e(PAPER)} Each knowledge neuron\'s value slot is projected onto the model\'s '
        f"{params.get('vocab_size', 0):.0f} tokens: the unembedding times the slot, through the final norm's weight "
        "(centred for a LayerNorm; biases left out), with the sign of the neuron's mean activation at the answer "
        "position over the fact's prompts (a neuron that is negative there writes −slot, so its promoted and "
        "suppressed tokens swap). The answer is the first token of the fact's answer; its rank is 0 when it is the "
        "token the neuron promotes most. The control: as many random neurons of the same layers per fact (seed "
        f"{params.get('seed', 0):.0f}), signed the same way. {n_facts} facts with knowledge neurons{scope}.</p>")
    if n_facts < FEW_FACTS:
        parts.append(f'<div class="warn"><b>Only {n_facts} fact(s).</b> The shares below are over {n_facts} facts: '
                     "read them as examples, not as findings.</div>")
    table = [[_e(cell) for cell in line] for line in summary_figures(rows, aggregates)]
    parts.append(_table(["measure", "knowledge neurons (p vs random)", "random neurons, same layers"], table))
    parts.append('<p class="note">Means over facts with their 95% interval (bootstrap over facts; Wilson\'s for a '
                 "share of facts), n and, for the knowledge neurons, the paired p against the random neurons on the "
                 "same facts, as the study stored them; a neuron's measures are averaged over the fact's neurons "
                 "first. The ranks are medians (no interval).</p>")
    parts.append(_image(rank_figure(rows), "answer rank among each neuron's promoted tokens"))
    parts.append(_per_relation(rows, top, wide, aggregates))
    parts.append(_examples(stored))
    return "".join(parts)


def _per_relation(rows: Sequence[dict], top: int, wide: int, aggregates: Sequence[dict] = ()) -> str:
    metrics = (f"answer_top{top}", f"answer_top{wide}")
    counts = summarize(rows, "kn", metrics[0]).per_relation
    relations = sorted(counts)
    if len(relations) < 2 or max(n for _, n in counts.values()) < 2:  # one fact per relation: the rows say nothing
        return ""
    body = []
    for relation in relations:
        cells = [str(summarize(rows, "kn", "neurons").per_relation.get(relation, (math.nan, 0))[1])]
        for metric in metrics:
            for variant in ("kn", "random"):
                cells.append(_e(stored_figure(aggregates, rows, STUDY, variant, metric, relation, signed=False)))
        best = [r["value"] for r in rows if r["variant"] == "kn" and r["metric"] == "best_rank"
                and r["relation"] == relation]
        cells.append(_num(float(np.median(best)), ".0f") if best else "–")
        body.append([_e(relation), *cells])
    return ("<h3>Per relation</h3>"
            + _table(["relation", "facts", f"KN: top {top} (p vs random)", f"random: top {top}",
                      f"KN: top {wide} (p vs random)", f"random: top {wide}", "KN: median best rank"], body))


def _examples(stored: Sequence[Mapping]) -> str:
    if not stored:
        return ""
    shown: list[str] = []
    body = []
    for entry in stored:
        first = entry["fact_id"] not in shown
        if first:
            if len(shown) == EXAMPLE_FACTS:
                break
            shown.append(entry["fact_id"])
        body.append([_e(entry["fact_id"]) if first else "", f"<code>{_e(repr(entry['answer_token']))}</code>"
                     if first else "", f"L{entry['layer']}.N{entry['neuron']}", "−" if entry["sign"] < 0 else "+",
                     str(entry["answer_rank"]), _tokens(entry["promoted"]), _tokens(entry["suppressed"], 5)])
    facts = len({entry["fact_id"] for entry in stored})
    return (f"<h3>Examples</h3><p class=\"note\">The knowledge neurons of {len(shown)} of {facts} facts: the tokens "
            "each one writes most (its slot times its sign) and lowers most. <code>kneuron atlas --fact ID</code> "
            "shows one fact's.</p>"
            + _table(["fact", "answer token", "neuron", "sign", "answer rank", "promotes most", "suppresses most"],
                     body, left=3))

"""The report's section on cheaper estimators: how far each agrees with exact integrated gradients, and how specific
its neurons are (own fact against other relations' facts, generic neurons), from the ``estimators`` study's rows
(:mod:`kneuron.studies.estimator_agreement`), with one figure."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence

from kneuron.report import plots
from kneuron.studies.catalog.estimators import agreement_cells
from kneuron.studies.estimator_agreement import agreement_summary
from kneuron.studies.intervals import find, format_interval

TITLE = "Cheaper estimators against integrated gradients"


def _e(text: object) -> str:
    return html.escape(str(text))


def _num(value: object, spec: str) -> str:
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _specificity(rows: Sequence[dict], aggregates: Sequence[dict]) -> str:
    """The specificity table: per estimator and IG, refined neurons per fact, identical sets and Jaccard against
    IG, suppression of the fact and of other relations' facts (with the stored interval and paired p-value
    against IG where ``aggregates`` has them), the generic neurons."""
    table = []
    for entry in agreement_summary(rows):
        label = str(entry["estimator"])
        cells = []
        for metric in ("suppress", "suppress_other"):
            stored = find(aggregates, label, metric)
            cells.append(_e(format_interval(stored, percent=True)) if stored.n else _num(entry[metric], "+.1%"))
        ig = label == "ig"
        table.append(["ig (the atlas's)" if ig else _e(label), _num(entry["neurons"], ".1f"),
                      "–" if ig else f"{entry['identical_facts']:.0f} of {entry['facts']}",
                      "–" if ig else _num(entry["refined_jaccard"], ".2f"), *cells,
                      _num(entry["generic_fraction"], ".0%"), _num(entry["generic_neurons"], ".0f"),
                      _num(entry["most_shared"], ".0%")])
    return (_table(["estimator", "refined neurons / fact", "sets identical to IG's", "mean Jaccard with IG",
                    "suppress: own fact", "suppress: other relations' facts", "generic share of its neurons",
                    "generic neurons", "most shared neuron in"], table)
            + '<p class="note"><b>Specificity.</b> Suppressing a fact\'s refined neurons (set to 0 at the answer '
              "position): the mean Δp/p of the fact's own prompts, and of one prompt of each of several facts of "
              "other relations (drawn as in the suppress / amplify study); neurons that matter as much for their "
              "fact but also lower other relations' facts are less specific. <b>Generic</b>: a neuron refined for "
              "more than the atlas's generic share of the compared facts (the generic study's definition) under "
              "the estimator's own sets; <b>generic share</b>: of a fact's refined neurons, the share that are "
              "generic, averaged over facts; <b>most shared</b>: the share of the facts whose refined set holds "
              "the most shared neuron. Intervals: 95% bootstrap over facts; p: paired test against exact IG on the "
              "same facts.</p>")


def estimators_section(rows: Sequence[dict], covered: Mapping[str, object] | None = None, done_facts: int = 0,
                       source: str = "ATLAS", aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; says how to run the study when ``rows`` is empty. ``covered``: the
    facts the study covered (``Atlas.coverage()["estimators"]``), against the atlas's ``done_facts``;
    ``aggregates``: the study's stored ones, whose intervals (and, for an estimator's own suppression, p against
    random neurons) replace the bare means where they were stored."""

    def cell(estimator: str, metric: str, value: object, spec: str) -> str:
        stored = find(aggregates, estimator, metric)
        if not stored.n:
            return _num(value, spec)
        return _e(format_interval(stored, percent=spec.endswith("%"), digits=2 if spec.endswith("%") else 3))

    if not rows:
        return (f"<h2>{TITLE}</h2><p>Not run: <code>kneuron study estimators --run {_e(source)}</code> (not part of "
                "<code>study all</code>: it recomputes attributions).</p>")
    table = []
    for entry in agreement_summary(rows):
        if entry["estimator"] == "ig":
            table.append(["ig (the atlas's)", str(entry["facts"]), "", "", "",
                          cell("ig", "suppress", entry["suppress"], "+.2%"), "",
                          cell("ig", "suppress_random", entry["suppress_random"], "+.2%"),
                          _num(entry["seconds_per_prompt"], ".3f"), "1"])
            continue
        over = "all neurons" if entry["spearman_over"] == "all" else f"{entry['spearman_neurons']:.0f} kept"
        name = str(entry["estimator"])
        table.append([_e(name), str(entry["facts"]), f"{_num(entry['spearman'], '.3f')} ({over})",
                      *agreement_cells(name, entry, cell)])
    facts = covered.get("facts") if covered else None
    scope = (f" on {facts} of the atlas's {done_facts} done facts" if facts is not None and done_facts else "")
    png = plots.estimators_figure(rows, aggregates)
    image = (f'<img alt="estimators against integrated gradients" '
             f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">' if png else "")
    return (f"<h2>{TITLE}</h2>"
            f'<p class="note">Each estimator scored the prompts anew{scope} and is compared with the exact '
            "integrated-gradients scores and refined neurons of the atlas.</p>"
            + _table(["estimator", "facts", "Spearman with IG", "top-10 recall", "refined Jaccard",
                      "suppress: its neurons", "suppress: IG's", "suppress: random", "s / prompt",
                      "× faster than IG"], table)
            + _specificity(rows, aggregates)
            + image
            + '<p class="note"><b>Spearman</b>: rank correlation of the scores with IG\'s per prompt, averaged over '
              "the prompts, then over facts; over every neuron when the atlas keeps full score matrices, otherwise "
              "over the neurons a sparse atlas keeps (those at least 0.05 of a prompt's maximum in some prompt of "
              "the fact; the count is shown), which leaves out the many near-zero scores. <b>Top-10 recall</b>: "
              "the share of IG's ten best neurons of a prompt among the estimator's ten best. <b>Refined "
              "Jaccard</b>: overlap of the estimator's refined neurons (its scores through the atlas's threshold "
              "and share) with IG's, 1 when both are empty. <b>Suppress</b>: mean Δp/p of the fact's prompts when "
              "the refined neurons (or as many random ones of the same layers, seeded) are set to 0 at the answer "
              "position, as in the suppress / amplify study; facts without neurons are left out of a column. Where "
              "the study stored them, each mean carries its 95% interval (bootstrap over facts), n and, for an "
              "estimator's own suppression, the paired p against random neurons on the same facts. "
              "<b>s / prompt</b>: measured in the study for the estimators; IG's is the atlas's own "
              "(compute seconds of its facts / their prompts, measured when the atlas was made, with refining and "
              "probabilities included), so the speed-up compares two moments of the machine.</p>")

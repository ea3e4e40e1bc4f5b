"""The report's sections of the paper's studies: the headline, suppress/amplify, generic neurons, layers and
discrimination (each registered under its study's name, :mod:`kneuron.report.sections`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kneuron.report import plots
from kneuron.report.data import ReportData, fmt, headline, layer_value
from kneuron.report.parts import escape, image
from kneuron.report.parts import table as html_table
from kneuron.report.sections import report_section
from kneuron.studies.display import stored_figure
from kneuron.studies.generic import MEMBERS, UNRELATED, by_word_rows
from kneuron.studies.intervals import find, format_interval
from kneuron.studies.metrics import summarize

#: the paper's BERT-base-cased figures (Dai et al. 2022), shown next to ours
PAPER = {"suppress": -29.03, "amplify": 31.17}
#: rows of the table of coarse-generic neurons
MAX_COARSE_ROWS = 15
#: rows of each probed neuron's table (last words, most frequent first)
MAX_WORD_ROWS = 10


def _pct(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "–"
    css = "neg" if value < 0 else "pos"
    text = f"{value * 100:+.2f}%" if signed else f"{value * 100:.1f}%"
    return f'<span class="{css}">{text}</span>' if signed else text


def stat(data: ReportData, study: str, variant: str, metric: str, relation: str = "", *, percent: bool = True,
         digits: int = 1, pooled: float | None = None) -> str:
    """One mean as an HTML cell: its stored interval, n and p (:meth:`ReportData.stat`), coloured by sign when it
    is a signed change."""
    text = escape(data.stat(study, variant, metric, relation, percent=percent, digits=digits, pooled=pooled))
    mean = data.interval(study, variant, metric, relation).mean
    if not percent or pooled is not None or not math.isfinite(mean):
        return text
    return f'<span class="{"neg" if mean < 0 else "pos"}">{text}</span>'


#: the note under every table of stored intervals
INTERVAL_NOTE = ('<p class="note">Each mean with its 95% interval (a seeded bootstrap over facts, 10,000 resamples; '
                 "Wilson's interval for a share of facts), its number of facts n and, against its control, the "
                 "paired sign-flip permutation test's p-value over the same facts: read from the atlas's stored "
                 "aggregates (see the statistics guide).</p>")


def headline_section(data: ReportData) -> str:
    h = headline(data)
    layers = data.rows("layers")
    rows = [
        ["suppress (KN set to 0): mean Δp / p", stat(data, "suppress_amplify", "kn", "suppress"),
         f"{PAPER['suppress']:+.2f}%"],
        ["amplify (KN doubled): mean Δp / p", stat(data, "suppress_amplify", "kn", "amplify"),
         f"+{PAPER['amplify']:.2f}%"],
        ["share of KN in the top third of the layers",
         stat(data, "layers", "kn", "top_third", pooled=layer_value(layers, "kn", "top_third")) if layers else
         fmt(h.top_third, ".1f", "%"), "most in the top layers (figure only)"],
        ["ROC AUC, KN activation: own vs other facts' prompts", stat(data, "discrimination", "kn", "auc",
                                                                     percent=False), "not reported"],
        ["ROC AUC, activation baseline", stat(data, "discrimination", "baseline", "auc", percent=False),
         "not reported"],
        ["ROC AUC, KN activation signed by its direction on the fact's prompts",
         stat(data, "discrimination", "kn", "auc_signed", percent=False), "not reported"],
        ["suppress, KN without generic neurons", stat(data, "suppress_amplify", "kn_no_generic", "suppress"), "–"],
        ["amplify, KN without generic neurons", stat(data, "suppress_amplify", "kn_no_generic", "amplify"), "–"],
    ]
    return ("<h2>Headline</h2>"
            + html_table(["measure", "this run", "paper (BERT-base-cased, PARAREL)"], rows)
            + '<p class="note">Means over facts of the per-fact mean over its prompts. Negative is a drop of the '
              "correct answer's probability. See the sections below for the controls and the generic neurons, "
              "which change how these numbers should be read.</p>" + INTERVAL_NOTE)


def median_figure(data: ReportData, op: str, variant: str = "kn") -> str:
    """The stored median over facts of ``op`` with its bootstrap interval and n (``−85.1% [−92.0, −70.3], n =
    16``); on an atlas studied before medians were stored, the bare median with its n and what to re-run."""
    from kneuron.studies.intervals import format_interval

    stored = data.interval("suppress_amplify", variant, f"{op}:median")
    if stored.n:
        return format_interval(stored, percent=True)
    summary = summarize(data.rows("suppress_amplify"), variant, op)
    if not summary.n:
        return "–"
    median = f"{summary.median * 100:+.1f}%".replace("-", "−")
    return f"{median}, n = {summary.n}, no interval stored (re-run `kneuron study suppress-amplify`)"


def _summary_rows(data: ReportData, op: str, variants: Sequence[str], relations: Sequence[str],
                  ) -> list[list[str]]:
    n = summarize(data.rows("suppress_amplify"), variants[0], op)
    rows = [["all facts", str(n.n)] + [stat(data, "suppress_amplify", v, op) for v in variants]]
    for relation in relations:
        count = n.per_relation.get(relation, (math.nan, 0))[1]
        rows.append([escape(relation), str(count)] + [stat(data, "suppress_amplify", v, op, relation)
                                                      for v in variants])
    return rows


def _suppress_section(data: ReportData, generic_names: Sequence[str]) -> str:
    rows = data.rows("suppress_amplify")
    if not rows:
        return "<h2>Suppress / amplify</h2><p>Not run: <code>kneuron study suppress-amplify --run ...</code></p>"
    parts = ["<h2>Suppress / amplify</h2>",
             '<p class="note">Each fact\'s knowledge neurons are zeroed (suppress) or doubled (amplify) at the '
             "answer position only (the position whose output predicts the first answer token, the one "
             "attribution scored), and the correct answer's probability is compared with the unpatched one: "
             "(p<sub>after</sub> − p<sub>before</sub>) / p<sub>before</sub>, averaged over the fact's prompts, "
             "then over facts. The control patches as many random neurons drawn from the same layers "
             "(seeded).</p>"]
    relations = _relations(rows)
    variants = ("kn", "random", "kn_no_generic", "random_no_generic")
    for op in ("suppress", "amplify"):
        parts.append(f"<h3>{op.capitalize()}</h3>")
        parts.append(html_table(["relation", "facts", "knowledge neurons", "random (same layers)",
                             "KN without generic", "random, without generic"],
                            _summary_rows(data, op, variants, relations)))
        parts.append(f'<p class="note">Median over facts for the knowledge neurons: '
                     f"{escape(median_figure(data, op))}. The p-values test each set against its random control on "
                     "the same facts.</p>")
    parts.append(INTERVAL_NOTE)
    aggregates = data.aggregates.get("suppress_amplify", ())
    parts.append(image(plots.suppress_amplify_figure(rows, aggregates), "suppress and amplify per relation"))
    dropped = sum(1 for r in rows if r["variant"] == "kn_no_generic" and r["metric"] == "neurons" and r["value"] == 0)
    if generic_names:
        parts.append(f'<p class="note">Without generic neurons ({", ".join(map(escape, generic_names))}): '
                     f"{dropped} fact(s) have no knowledge neuron left and drop out of those columns.</p>")
    parts.append("<h3>Effect on other relations' facts</h3>")
    other = []
    for variant in ("kn", "kn_no_generic", "random"):
        cells = []
        for op in ("suppress", "amplify"):
            cells += [stat(data, "suppress_amplify", variant, op),
                      stat(data, "suppress_amplify", variant, f"{op}_other")]
        other.append([escape(plots.LABELS[variant])] + cells)
    parts.append(html_table(["neurons patched", "suppress: own prompts", "suppress: other relations",
                         "amplify: own prompts", "amplify: other relations"], other))
    settings = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    drawn = f"{settings['other_facts']:.0f} facts" if "other_facts" in settings else "facts"
    seed = f" (seed {settings['seed']:.0f})" if "seed" in settings else ""
    parts.append(f'<p class="note">Same neurons, same position rule, on one prompt each of {drawn} drawn{seed} '
                 "from the other relations.</p>")
    parts.append(image(plots.other_relations_figure(rows, aggregates), "own facts against other relations' facts"))
    return "".join(parts)


@report_section("suppress_amplify")
def _suppress_amplify_section(data: ReportData) -> str:
    return _suppress_section(data, generic_names(data))


def _relations(rows: Sequence[dict]) -> list[str]:
    return sorted({r["relation"] for r in rows if r.get("fact_id") and r["relation"]})


def generic_names(data: ReportData) -> list[str]:
    """The generic neurons flagged in the atlas, most shared first."""
    shares = {r["variant"]: r["value"] for r in data.rows("generic")
              if r["metric"] == "share" and not r["fact_id"] and r["variant"] != "params"}
    return sorted(shares, key=lambda name: -shares[name])


@report_section("generic")
def _generic_section(data: ReportData) -> str:
    rows = data.rows("generic")
    if not rows:
        return "<h2>Generic neurons</h2><p>Not run: <code>kneuron study generic --run ...</code></p>"
    flags = {(r["variant"], r["metric"]): r["value"] for r in rows if not r["fact_id"]}
    names = generic_names(data)
    threshold = flags.get(("params", "generic_share"), math.nan)
    parts = ["<h2>Generic neurons</h2>"]
    if not names:
        parts.append(f"<p>No neuron is a knowledge neuron of more than {_pct(threshold, False)} of the facts.</p>")
    else:
        parts.append(
            f'<div class="warn"><b>{len(names)} neuron(s) are knowledge neurons of more than '
            f"{_pct(threshold, False)} of the facts</b>: they cannot store any one fact. Numbers that include them "
            "mix their effect into every fact's; the tables above show suppress / amplify with and without them, "
            "and the most shared are probed alone below.</div>")
        stored = data.aggregates.get("generic", ())

        def share(name: str) -> str:  # the stored Wilson interval; the bare share on an atlas studied before
            found = find(stored, name, "share")
            return escape(format_interval(found, percent=True)) if found.n else _pct(flags[name, "share"], False)

        parts.append(html_table(["neuron", "facts", "share of facts [95% Wilson], n"],
                                [[escape(n), f"{flags[n, 'facts']:.0f}", share(n)] for n in names]))
    parts.append(_coarse_generic(flags, threshold))
    probed = sorted({r["variant"] for r in rows if r["fact_id"]},
                    key=lambda name: (names.index(name) if name in names else len(names), name))
    aggregates, split = data.aggregates.get("generic", ()), by_word_rows(rows)

    def shown_mean(name: str, metric: str, percent: bool = True) -> str:
        source = split if "@" in metric else rows
        text = escape(stored_figure(aggregates, source, "generic", name, metric, percent=percent, signed=percent))
        mean = find(aggregates, name, metric).mean
        return f'<span class="{"neg" if mean < 0 else "pos"}">{text}</span>' if percent and math.isfinite(mean) \
            else text

    for name in probed:
        table = plots.generic_by_word(rows, name)
        parts.append(f"<h3>{escape(name)} on its own</h3>")
        shown = list(table.items())[:MAX_WORD_ROWS]
        parts.append(html_table(
            ["last word before the answer", "facts without it", "facts with it", "mean activation",
             "zeroed alone: facts without it", "zeroed alone: facts with it"],
            [[f"<code>{escape(word)}</code>", str(v["n_unrelated"]), str(v["n_members"]),
              shown_mean(name, f"activation:{word}", percent=False),
              shown_mean(name, f"suppress_alone:{word}{UNRELATED}"),
              shown_mean(name, f"suppress_alone:{word}{MEMBERS}")]
             for word, v in shown]))
        parts.append(INTERVAL_NOTE)
        if len(table) > len(shown):
            parts.append(f'<p class="note">The {len(shown)} most frequent of {len(table)} last words.</p>')
        # the clearest effect on facts that do not have it, among words seen in enough of them
        enough = min(3, max((v["n_unrelated"] for v in table.values()), default=0))
        worst = min(((w, v) for w, v in table.items() if enough and v["n_unrelated"] >= enough),
                    key=lambda item: item[1]["unrelated"], default=None)
        if worst:
            word, v = worst
            parts.append(f'<p class="note">Zeroing {escape(name)} alone changes the correct probability of facts that '
                         f"do not count it among their knowledge neurons by "
                         f"{shown_mean(name, f'suppress_alone:{word}{UNRELATED}')} on prompts ending in "
                         f"<code>{escape(word)}</code> (its mean activation there is {v['activation']:.2f}).</p>")
        parts.append(image(plots.generic_figure(rows, name, aggregates=aggregates), f"{name} by last word"))
    return "".join(parts)


def _coarse_generic(flags: Mapping[tuple[str, str], float], threshold: float) -> str:
    """The neurons coarse in more than ``threshold`` of all prompts, with the last words of those prompts."""
    names = sorted((n for n, metric in flags if metric == "coarse_share"), key=lambda n: -flags[n, "coarse_share"])
    if not names:
        return ""
    totals = {metric.split(":", 1)[1]: v for (n, metric), v in flags.items() if n == "prompts"}
    table = []
    for name in names:
        words = sorted(((metric.split(":", 1)[1], v) for (n, metric), v in flags.items()
                        if n == name and metric.startswith("coarse:")), key=lambda item: -item[1])
        where = ", ".join(f"<code>{escape(w)}</code> {v:.0f}/{totals.get(w, 0):.0f}" for w, v in words[:4])
        word, score = next(((m.split(":", 1)[1], v) for (n, m), v in flags.items()
                            if n == name and m.startswith("word_score:")), ("", math.nan))
        table.append((-score if math.isfinite(score) else 0.0,
                      [escape(name), f"{flags[name, 'coarse_prompts']:.0f}", _pct(flags[name, "coarse_share"], False),
                       where, f"<code>{escape(word)}</code> {score:.2f}" if word else "–"]))
    table.sort(key=lambda item: item[0])  # stable: equal scores keep the most frequent first
    shown = [cells for _, cells in table[:MAX_COARSE_ROWS]]
    return (f"<h3>Neurons coarse in more than {_pct(threshold, False)} of all prompts</h3>"
            '<p class="note">Before refinement: a neuron above the coarse threshold in one prompt\'s attribution. '
            "One that is coarse in every prompt ending in a given word responds to the word, not to a fact; it "
            "reaches a fact's refined set only when most of the fact's templates end that way. Last column: the "
            "last words before the answer of the prompts where it is coarse (prompts where it is coarse / prompts "
            "ending in that word). Word score: (share of the prompts ending in the word where it is coarse) × "
            "(share of its coarse prompts that end in the word); 1 is a neuron that responds to that word alone. "
            f"Sorted by word score; {len(shown)} of {len(table)} shown.</p>"
            + html_table(["neuron", "prompts", "share of prompts", "where (last word before the answer)", "word score"],
                     shown))


@report_section("layers")
def _layers_section(data: ReportData) -> str:
    rows = data.rows("layers")
    if not rows:
        return "<h2>Layer distribution</h2><p>Not run: <code>kneuron study layers --run ...</code></p>"
    variants = [v for v in ("kn", "kn_no_generic", "baseline") if plots.layer_shares(rows, v)]
    table = [[escape(plots.LABELS[v]), f"{layer_value(rows, v, 'total'):.0f}",
              stat(data, "layers", v, "top_third", pooled=layer_value(rows, v, "top_third"))] for v in variants]
    relations = sorted({r["relation"] for r in rows if r["relation"] and r["metric"] == "top_third"})
    by_relation = [[escape(relation)] + [stat(data, "layers", v, "top_third", relation,
                                              pooled=layer_value(rows, v, "top_third", relation)) for v in variants]
                   for relation in relations]
    per_layer = {v: plots.layer_shares(rows, v) for v in variants}
    n_layers = len(per_layer[variants[0]])
    layer_rows = [[str(layer)] + [_pct(per_layer[v].get(layer, math.nan), False) for v in variants]
                  for layer in range(n_layers)]
    return ("<h2>Layer distribution</h2>"
            + html_table(["neurons", "count", "share in the top third of the layers"], table)
            + ('<p class="note">The share is pooled over the facts\' neurons; its interval resamples facts (each '
               "fact's neurons together) and its p-value tests it against the activation baseline's share on the "
               "same facts.</p>")
            + (html_table(["relation"] + [f"top third: {plots.LABELS[v]}" for v in variants], by_relation)
               if by_relation else "")
            + image(plots.layers_figure(rows), "share of neurons per layer")
            + image(plots.layers_heatmap(rows), "share of knowledge neurons per relation and layer")
            + "<details><summary>Share per layer</summary>"
            + html_table(["layer"] + [plots.LABELS[v] for v in variants], layer_rows)
            + "</details>"
            + '<p class="note">A neuron shared by several facts counts once per fact. The activation baseline is, '
              "per fact, as many neurons as it has knowledge neurons, those with the largest activation.</p>")


@report_section("discrimination")
def _discrimination_section(data: ReportData) -> str:
    rows = data.rows("discrimination")
    if not rows:
        return "<h2>Discrimination</h2><p>Not run: <code>kneuron study discrimination --run ...</code></p>"
    table = []
    for variant in ("kn", "kn_no_generic", "baseline"):
        auc, sentence = summarize(rows, variant, "auc"), summarize(rows, variant, "sentence_auc")

        def cell(metric: str, digits: int = 3, variant: str = variant) -> str:
            return stat(data, "discrimination", variant, metric, percent=False, digits=digits)

        table.append([escape(plots.LABELS[variant]), cell("auc"), cell("auc_signed"), str(auc.n),
                      cell("sentence_auc"), cell("sentence_auc_signed"), str(sentence.n),
                      cell("sentence_positive", 4), cell("sentence_negative", 4)])
    return ("<h2>Discrimination</h2>"
            + html_table(["neurons", "AUC: own vs other prompts", "same, signed", "facts",
                      "AUC: stating vs subject-only sentences", "same, signed", "facts", "mean activation: stating",
                      "mean activation: subject-only"], table)
            + '<p class="note"><b>Signed</b>: gated FFNs (act(gate) × up) give negative activations as often as '
              "positive ones, and a neuron can be a knowledge neuron because it is strongly negative on the fact's "
              "prompts. The paper's raw mean activation then ranks the fact's own prompts lowest (AUC below 0.5). "
              "The signed AUC multiplies each neuron's activation by the sign of its mean activation on the fact's "
              "own prompts (where it was attributed) before averaging.</p>"
            + INTERVAL_NOTE
            + '<p class="note">The knowledge neurons\' p-values test their AUC against the activation baseline\'s '
              "on the same facts.</p>"
            + image(plots.discrimination_figure(rows), "per-fact ROC AUC")
            + '<p class="note">Score of a text: the mean activation of the fact\'s neurons. Prompts are read at '
              "the answer position; sentences at their last token for causal models (the only position that has "
              "read the whole sentence) and averaged over their own tokens for masked models. AUC per fact "
              "(scikit-learn), then the mean over facts; 0.5 is chance.</p>")

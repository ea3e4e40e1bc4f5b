"""The HTML report: one self-contained file (inline CSS, figures as PNG data URIs, no scripts, no links to fetch)
with the tables and figures of the studies stored in an atlas, and the headline numbers next to the paper's.

Example:
    >>> data = ReportData.from_atlas("runs/demo.sqlite")
    >>> write_report(data, "runs/demo.html")
    >>> print(headline_line("runs/demo.html", data))
    report=runs/demo.html facts=212 suppress=-31.20% amplify=+40.12% top_third=61.0% auc_kn=0.812 auc_activation=0.540
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kneuron.report import plots
from kneuron.studies.metrics import Summary, summarize

STUDIES = ("suppress_amplify", "generic", "layers", "discrimination")

#: the paper's BERT-base-cased figures (Dai et al. 2022), shown next to ours
PAPER = {"suppress": -29.03, "amplify": 31.17}
#: rows of the table of coarse-generic neurons
MAX_COARSE_ROWS = 15
#: rows of each probed neuron's table (last words, most frequent first)
MAX_WORD_ROWS = 10

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em;
margin-top: 2em; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
img { max-width: 100%; display: block; margin: 0.8em 0; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; } .meta { color: #555; }
.warn { background: #fff4e0; border-left: 5px solid #e69500; padding: 0.6em 1em; margin: 1em 0; }
.neg { color: #b00020; } .pos { color: #1b7f1b; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass
class ReportData:
    """What a report is made of: the result rows of each study, the run's metadata and its number of facts."""

    results: Mapping[str, Sequence[dict]]
    meta: Mapping[str, object] = field(default_factory=dict)
    n_facts: int = 0
    title: str = "Knowledge neurons report"
    #: per study, the facts its results covered (``Atlas.coverage()``), and the atlas's done facts now
    #: (``Atlas.done_coverage()``); None when not read from an atlas
    coverage: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    done: Mapping[str, object] | None = None
    source: str = ""
    #: the atlas's vocabulary table (``kneuron study vocabulary``: each knowledge neuron's top tokens)
    vocabulary: Sequence[Mapping[str, object]] = ()

    def rows(self, study: str) -> list[dict]:
        return list(self.results.get(study, ()))

    @classmethod
    def from_atlas(cls, path: str | Path) -> ReportData:
        """Read every study's rows, the metadata, the fact count and what each study covered from the atlas at
        ``path`` (read-only, in one snapshot: the same moment also while a run writes)."""
        from kneuron.store import Atlas
        from kneuron.store.vocabulary import read_vocabulary

        with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
            results = {study: atlas.results(study) for study in STUDIES}
            if editing := atlas.results("editing"):  # optional study (python -m kneuron.studies.editing)
                results["editing"] = editing
            if robustness := atlas.results("edit_robustness"):  # optional study (kneuron study robustness)
                results["edit_robustness"] = robustness
            if estimators := atlas.results("estimators"):  # not part of `study all` (kneuron study estimators)
                results["estimators"] = estimators
            if languages := atlas.results("languages"):  # atlases with facts in several languages only
                results["languages"] = languages
            if vocabulary := atlas.results("vocabulary"):  # not part of `study all` (kneuron study vocabulary)
                results["vocabulary"] = vocabulary
            tokens = read_vocabulary(atlas)
            if interactions := atlas.results("interactions"):  # not part of `study all` (kneuron study interactions)
                results["interactions"] = interactions
            if consistency := atlas.results("consistency"):  # kneuron study consistency (no model)
                results["consistency"] = consistency
            meta = dict(atlas.meta)
            n_facts = len(atlas.facts())
            coverage, done = atlas.coverage(), atlas.done_coverage()
        return cls(results, meta, n_facts, title=f"Knowledge neurons: {Path(path).name}", coverage=coverage,
                   done=done, source=str(path), vocabulary=tokens)

    def warnings(self) -> list[str]:
        """One line per problem with the studies' currency: results computed on fewer (or other) facts than the
        atlas's done facts now, or results whose covered facts were not recorded."""
        if self.done is None:
            return []
        stale, unknown = [], []
        for study in STUDIES:
            if not self.results.get(study):
                continue
            seen = self.coverage.get(study)
            if seen is None:
                unknown.append(study)
            elif seen.get("digest") != self.done.get("digest"):
                stale.append(f"{study} {seen.get('facts')}")
        again = f"rerun `kneuron study all --run {self.source or 'ATLAS'}`"
        lines = []
        if stale:
            lines.append(f"the atlas has {self.done.get('facts')} done facts, but its studies covered other facts "
                         f"({', '.join(stale)}): their figures are not current; {again}.")
        if unknown:
            lines.append(f"which facts {', '.join(unknown)} covered was not recorded (results written by an older "
                         f"kneuron or without facts=): they may not be current; {again}.")
        return lines


@dataclass(frozen=True)
class Headline:
    """The numbers of the demo's last line: mean relative changes (%) when suppressing / amplifying the knowledge
    neurons, the share (%) of knowledge neurons in the top third of the layers, and the mean per-fact ROC AUC of
    the knowledge neurons and of the activation baseline (own prompts vs other facts' prompts)."""

    facts: int
    suppress: float
    amplify: float
    top_third: float
    auc_kn: float
    auc_activation: float
    auc_kn_signed: float = math.nan


def _layer_value(rows: Sequence[dict], variant: str, metric: str, relation: str = "") -> float:
    for r in rows:
        if r["variant"] == variant and r["metric"] == metric and r["relation"] == relation:
            return r["value"]
    return math.nan


def headline(data: ReportData) -> Headline:
    """The headline numbers of ``data`` (NaN where a study is missing)."""
    sa, disc = data.rows("suppress_amplify"), data.rows("discrimination")
    return Headline(
        facts=data.n_facts,
        suppress=summarize(sa, "kn", "suppress").mean * 100,
        amplify=summarize(sa, "kn", "amplify").mean * 100,
        top_third=_layer_value(data.rows("layers"), "kn", "top_third") * 100,
        auc_kn=summarize(disc, "kn", "auc").mean,
        auc_activation=summarize(disc, "baseline", "auc").mean,
        auc_kn_signed=summarize(disc, "kn", "auc_signed").mean,
    )


def _fmt(value: float, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if math.isfinite(value) else "nan"


def headline_line(report_path: str | Path, data: ReportData, signed_auc: bool = False) -> str:
    """``report=PATH facts=N suppress=X% amplify=Y% top_third=Z% auc_kn=A auc_activation=B``.

    ``auc_kn`` is the paper's raw mean activation AUC; with ``signed_auc`` it is the signed one (see
    :mod:`kneuron.studies.discrimination`).
    """
    h = headline(data)
    if signed_auc:
        h = replace(h, auc_kn=h.auc_kn_signed)
    return (f"report={report_path} facts={h.facts} suppress={_fmt(h.suppress, '+.2f', '%')} "
            f"amplify={_fmt(h.amplify, '+.2f', '%')} top_third={_fmt(h.top_third, '.1f', '%')} "
            f"auc_kn={_fmt(h.auc_kn, '.3f')} auc_activation={_fmt(h.auc_activation, '.3f')}")


# ------------------------------------------------------------------------------------------------ rendering

def _e(text: object) -> str:
    return html.escape(str(text))


def _pct(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "–"
    css = "neg" if value < 0 else "pos"
    text = f"{value * 100:+.2f}%" if signed else f"{value * 100:.1f}%"
    return f'<span class="{css}">{text}</span>' if signed else text


def _image(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells are already HTML; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline_section(data: ReportData) -> str:
    h = headline(data)
    rows = [
        ["suppress (KN set to 0): mean Δp / p", _fmt(h.suppress, "+.2f", "%"), f"{PAPER['suppress']:+.2f}%"],
        ["amplify (KN doubled): mean Δp / p", _fmt(h.amplify, "+.2f", "%"), f"+{PAPER['amplify']:.2f}%"],
        ["share of KN in the top third of the layers", _fmt(h.top_third, ".1f", "%"),
         "most in the top layers (figure only)"],
        ["ROC AUC, KN activation: own vs other facts' prompts", _fmt(h.auc_kn, ".3f"), "not reported"],
        ["ROC AUC, activation baseline", _fmt(h.auc_activation, ".3f"), "not reported"],
        ["ROC AUC, KN activation signed by its direction on the fact's prompts",
         _fmt(summarize(data.rows("discrimination"), "kn", "auc_signed").mean, ".3f"), "not reported"],
        ["suppress, KN without generic neurons", _pct(summarize(data.rows("suppress_amplify"), "kn_no_generic",
                                                                "suppress").mean), "–"],
        ["amplify, KN without generic neurons", _pct(summarize(data.rows("suppress_amplify"), "kn_no_generic",
                                                               "amplify").mean), "–"],
    ]
    return ("<h2>Headline</h2>"
            + _table(["measure", "this run", "paper (BERT-base-cased, PARAREL)"], rows)
            + '<p class="note">Means over facts of the per-fact mean over its prompts. Negative is a drop of the '
              "correct answer's probability. See the sections below for the controls and the generic neurons, "
              "which change how these numbers should be read.</p>")


def _summary_rows(summaries: Sequence[Summary], relations: Sequence[str]) -> list[list[str]]:
    rows = [["all facts", str(summaries[0].n)] + [_pct(s.mean) for s in summaries]]
    for relation in relations:
        cells = [s.per_relation.get(relation, (math.nan, 0)) for s in summaries]
        rows.append([_e(relation), str(cells[0][1])] + [_pct(mean) for mean, _ in cells])
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
        summaries = [summarize(rows, v, op) for v in variants]
        parts.append(f"<h3>{op.capitalize()}</h3>")
        parts.append(_table(["relation", "facts", "knowledge neurons", "random (same layers)",
                             "KN without generic", "random, without generic"],
                            _summary_rows(summaries, relations)))
        median = summaries[0].median
        parts.append(f'<p class="note">Median over facts for the knowledge neurons: {_pct(median)}.</p>')
    parts.append(_image(plots.suppress_amplify_figure(rows), "suppress and amplify per relation"))
    dropped = sum(1 for r in rows if r["variant"] == "kn_no_generic" and r["metric"] == "neurons" and r["value"] == 0)
    if generic_names:
        parts.append(f'<p class="note">Without generic neurons ({", ".join(map(_e, generic_names))}): '
                     f"{dropped} fact(s) have no knowledge neuron left and drop out of those columns.</p>")
    parts.append("<h3>Effect on other relations' facts</h3>")
    other = []
    for variant in ("kn", "kn_no_generic", "random"):
        cells = []
        for op in ("suppress", "amplify"):
            cells += [_pct(summarize(rows, variant, op).mean), _pct(summarize(rows, variant, f"{op}_other").mean)]
        other.append([_e(plots.LABELS[variant])] + cells)
    parts.append(_table(["neurons patched", "suppress: own prompts", "suppress: other relations",
                         "amplify: own prompts", "amplify: other relations"], other))
    settings = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    drawn = f"{settings['other_facts']:.0f} facts" if "other_facts" in settings else "facts"
    seed = f" (seed {settings['seed']:.0f})" if "seed" in settings else ""
    parts.append(f'<p class="note">Same neurons, same position rule, on one prompt each of {drawn} drawn{seed} '
                 "from the other relations.</p>")
    parts.append(_image(plots.other_relations_figure(rows), "own facts against other relations' facts"))
    return "".join(parts)


def _relations(rows: Sequence[dict]) -> list[str]:
    return sorted({r["relation"] for r in rows if r.get("fact_id") and r["relation"]})


def generic_names(data: ReportData) -> list[str]:
    """The generic neurons flagged in the atlas, most shared first."""
    shares = {r["variant"]: r["value"] for r in data.rows("generic")
              if r["metric"] == "share" and not r["fact_id"] and r["variant"] != "params"}
    return sorted(shares, key=lambda name: -shares[name])


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
        parts.append(_table(["neuron", "facts", "share of facts"],
                            [[_e(n), f"{flags[n, 'facts']:.0f}", _pct(flags[n, "share"], False)] for n in names]))
    parts.append(_coarse_generic(flags, threshold))
    probed = sorted({r["variant"] for r in rows if r["fact_id"]},
                    key=lambda name: (names.index(name) if name in names else len(names), name))
    for name in probed:
        table = plots.generic_by_word(rows, name)
        parts.append(f"<h3>{_e(name)} on its own</h3>")
        shown = list(table.items())[:MAX_WORD_ROWS]
        parts.append(_table(
            ["last word before the answer", "facts without it", "facts with it", "mean activation",
             "zeroed alone: facts without it", "zeroed alone: facts with it"],
            [[f"<code>{_e(word)}</code>", str(v["n_unrelated"]), str(v["n_members"]), f"{v['activation']:.3f}",
              _pct(v["unrelated"]), _pct(v["members"])] for word, v in shown]))
        if len(table) > len(shown):
            parts.append(f'<p class="note">The {len(shown)} most frequent of {len(table)} last words.</p>')
        # the clearest effect on facts that do not have it, among words seen in enough of them
        enough = min(3, max((v["n_unrelated"] for v in table.values()), default=0))
        worst = min(((w, v) for w, v in table.items() if enough and v["n_unrelated"] >= enough),
                    key=lambda item: item[1]["unrelated"], default=None)
        if worst:
            word, v = worst
            parts.append(f'<p class="note">Zeroing {_e(name)} alone changes the correct probability of facts that '
                         f"do not count it among their knowledge neurons by {_pct(v['unrelated'])} on prompts "
                         f"ending in <code>{_e(word)}</code> (mean over {v['n_unrelated']} facts; its mean activation "
                         f"there is {v['activation']:.2f}).</p>")
        parts.append(_image(plots.generic_figure(rows, name), f"{name} by last word"))
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
        where = ", ".join(f"<code>{_e(w)}</code> {v:.0f}/{totals.get(w, 0):.0f}" for w, v in words[:4])
        word, score = next(((m.split(":", 1)[1], v) for (n, m), v in flags.items()
                            if n == name and m.startswith("word_score:")), ("", math.nan))
        table.append((-score if math.isfinite(score) else 0.0,
                      [_e(name), f"{flags[name, 'coarse_prompts']:.0f}", _pct(flags[name, "coarse_share"], False),
                       where, f"<code>{_e(word)}</code> {score:.2f}" if word else "–"]))
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
            + _table(["neuron", "prompts", "share of prompts", "where (last word before the answer)", "word score"],
                     shown))


def _layers_section(data: ReportData) -> str:
    rows = data.rows("layers")
    if not rows:
        return "<h2>Layer distribution</h2><p>Not run: <code>kneuron study layers --run ...</code></p>"
    variants = [v for v in ("kn", "kn_no_generic", "baseline") if plots.layer_shares(rows, v)]
    table = [[_e(plots.LABELS[v]), f"{_layer_value(rows, v, 'total'):.0f}",
              _pct(_layer_value(rows, v, "top_third"), False)] for v in variants]
    per_layer = {v: plots.layer_shares(rows, v) for v in variants}
    n_layers = len(per_layer[variants[0]])
    layer_rows = [[str(layer)] + [_pct(per_layer[v].get(layer, math.nan), False) for v in variants]
                  for layer in range(n_layers)]
    return ("<h2>Layer distribution</h2>"
            + _table(["neurons", "count", "share in the top third of the layers"], table)
            + _image(plots.layers_figure(rows), "share of neurons per layer")
            + _image(plots.layers_heatmap(rows), "share of knowledge neurons per relation and layer")
            + "<details><summary>Share per layer</summary>"
            + _table(["layer"] + [plots.LABELS[v] for v in variants], layer_rows)
            + "</details>"
            + '<p class="note">A neuron shared by several facts counts once per fact. The activation baseline is, '
              "per fact, as many neurons as it has knowledge neurons, those with the largest activation.</p>")


def _discrimination_section(data: ReportData) -> str:
    rows = data.rows("discrimination")
    if not rows:
        return "<h2>Discrimination</h2><p>Not run: <code>kneuron study discrimination --run ...</code></p>"
    table = []
    for variant in ("kn", "kn_no_generic", "baseline"):
        auc, sentence = summarize(rows, variant, "auc"), summarize(rows, variant, "sentence_auc")
        auc_signed, sentence_signed = summarize(rows, variant, "auc_signed"), summarize(rows, variant,
                                                                                          "sentence_auc_signed")
        positive, negative = summarize(rows, variant, "sentence_positive"), summarize(rows, variant,
                                                                                         "sentence_negative")
        table.append([_e(plots.LABELS[variant]), _fmt(auc.mean, ".3f"), _fmt(auc_signed.mean, ".3f"), str(auc.n),
                      _fmt(sentence.mean, ".3f"), _fmt(sentence_signed.mean, ".3f"), str(sentence.n),
                      _fmt(positive.mean, ".4f"), _fmt(negative.mean, ".4f")])
    return ("<h2>Discrimination</h2>"
            + _table(["neurons", "AUC: own vs other prompts", "same, signed", "facts",
                      "AUC: stating vs subject-only sentences", "same, signed", "facts", "mean activation: stating",
                      "mean activation: subject-only"], table)
            + '<p class="note"><b>Signed</b>: gated FFNs (act(gate) × up) give negative activations as often as '
              "positive ones, and a neuron can be a knowledge neuron because it is strongly negative on the fact's "
              "prompts. The paper's raw mean activation then ranks the fact's own prompts lowest (AUC below 0.5). "
              "The signed AUC multiplies each neuron's activation by the sign of its mean activation on the fact's "
              "own prompts (where it was attributed) before averaging.</p>"
            + _image(plots.discrimination_figure(rows), "per-fact ROC AUC")
            + '<p class="note">Score of a text: the mean activation of the fact\'s neurons. Prompts are read at '
              "the answer position; sentences at their last token for causal models (the only position that has "
              "read the whole sentence) and averaged over their own tokens for masked models. AUC per fact "
              "(scikit-learn), then the mean over facts; 0.5 is chance.</p>")


def _editing_section(data: ReportData) -> str:
    """The editing study's section (see :mod:`kneuron.report.editing`), only when the atlas has its rows."""
    rows = data.rows("editing")
    if not rows:
        return ""
    from kneuron.report.editing import editing_section

    return editing_section(rows)


def _edit_robustness_section(data: ReportData) -> str:
    """Edits under Niu et al.'s tests (see :mod:`kneuron.report.edit_robustness`), only when the atlas has its rows."""
    from kneuron.report.edit_robustness import edit_robustness_section

    section = edit_robustness_section(data.rows("edit_robustness"))
    return "<h2>Editing knowledge</h2>" + section if section and not data.rows("editing") else section


def _estimators_section(data: ReportData) -> str:
    """The estimator study's section (see :mod:`kneuron.report.estimators`); says how to run it when missing."""
    from kneuron.report.estimators import estimators_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return estimators_section(data.rows("estimators"), data.coverage.get("estimators"), done,
                              data.source or "ATLAS")


def _languages_section(data: ReportData) -> str:
    """The cross-lingual study's section (see :mod:`kneuron.report.languages`), only when the atlas has its rows."""
    from kneuron.report.languages import languages_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return languages_section(data.rows("languages"), data.coverage.get("languages"), done)


def _vocabulary_section(data: ReportData) -> str:
    """What the knowledge neurons write (see :mod:`kneuron.report.vocabulary`); says how to run it when missing."""
    from kneuron.report.vocabulary import vocabulary_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return vocabulary_section(data.rows("vocabulary"), data.vocabulary, data.coverage.get("vocabulary"), done,
                              data.source or "ATLAS")


def _interactions_section(data: ReportData) -> str:
    """The neuron-interactions study's section (see :mod:`kneuron.report.interactions`), only when the atlas has its
    rows."""
    from kneuron.report.interactions import interactions_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return interactions_section(data.rows("interactions"), data.coverage.get("interactions"), done)


def _consistency_section(data: ReportData) -> str:
    """The consistency study's section (see :mod:`kneuron.report.consistency`); says how to run it when missing."""
    from kneuron.report.consistency import consistency_section
    from kneuron.studies.consistency import COMPARED_STUDIES

    others = {study: data.rows(study) for study in COMPARED_STUDIES}
    return consistency_section(data.rows("consistency"), others, data.coverage.get("consistency"), data.done,
                               data.source or "ATLAS")


def render_report(data: ReportData) -> str:
    """The whole report as one HTML string."""
    flat = {}
    for key, value in data.meta.items():
        if isinstance(value, dict):  # e.g. the run's params and the generic settings
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    meta = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in sorted(flat.items())
                   if isinstance(v, (str, int, float)))
    names = generic_names(data)
    body = "".join([
        f"<h1>{_e(data.title)}</h1>",
        "".join(f'<div class="warn stale"><b>Not current:</b> {_e(line)}</div>' for line in data.warnings()),
        f'<p class="meta">{data.n_facts} facts.</p>',
        f'<ul class="meta">{meta}</ul>' if meta else "",
        _headline_section(data),
        _suppress_section(data, names),
        _generic_section(data),
        _layers_section(data),
        _discrimination_section(data),
        _estimators_section(data),
        _editing_section(data),
        _edit_robustness_section(data),
        _languages_section(data),
        _consistency_section(data),
        _interactions_section(data),
        _vocabulary_section(data),
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{_e(data.title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


#: what marks a file as a kneuron report (the only kind of existing file a report replaces)
GENERATOR = '<meta name="generator" content="kneuron report">'
#: how reports written before the generator tag began
OLD_REPORT_START = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Knowledge neurons'


def is_report(path: str | Path) -> bool:
    """Whether the file at ``path`` is a report kneuron wrote (by its first bytes)."""
    with open(path, "rb") as handle:
        start = handle.read(512).decode("utf-8", "replace")
    return GENERATOR in start or start.startswith(OLD_REPORT_START)


def write_report(data: ReportData, path: str | Path) -> Path:
    """Write the report to ``path`` and return the path.

    It writes only there (through a temporary file beside it, renamed into place, so an interrupted write leaves
    the previous file whole); missing parent folders are created. An existing file is replaced only when it is a
    kneuron report.

    Raises:
        KneuronError: ``path`` is a folder, an existing file that is not a kneuron report, or not writable.
    """
    from kneuron.errors import KneuronError

    path = Path(path).expanduser()
    if path.is_dir():
        raise KneuronError(f"'{path}' is a folder: give the report's file, e.g. --out {path / 'report.html'}.")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.exists() and not is_report(path):
            raise KneuronError(f"'{path}' exists and is not a kneuron report; kneuron does not replace it. Give "
                               "another --out path (or move that file away).")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(render_report(data), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        raise KneuronError(f"Cannot write the report to '{path}' ({exc.strerror or exc}); give a writable --out "
                           "path.") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return path

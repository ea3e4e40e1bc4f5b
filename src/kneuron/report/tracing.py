"""The report's causal-tracing section: ROME's average indirect effects at the subject's last token, the last token
and elsewhere, layer by layer, against where the knowledge neurons sit, from the ``tracing`` study's rows
(:mod:`kneuron.studies.tracing`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from kneuron.interventions.tracing import KINDS
from kneuron.report.parts import escape as _e
from kneuron.report.parts import image as _image
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.report.plots import to_png
from kneuron.report.sections import report_section
from kneuron.studies.catalog.tracing import KIND_TITLES, figure_lines
from kneuron.studies.intervals import find, format_interval
from kneuron.studies.tracing import GROUPS, PROFILE, STUDY, average_effects, fact_traces, profile_metric, weighed_most

TITLE = "Causal tracing against knowledge neurons"
FEW_FACTS = 10
MAX_FACT_ROWS = 40
GROUP_LABELS = {"subject_last": "subject's last token", "last": "last token", "elsewhere": "elsewhere"}
GROUP_COLORS = {"subject_last": "#b2182b", "last": "#2166ac", "elsewhere": "#999999"}
#: what ../shared/PAPER.md and the issue say (the report quotes nothing beyond them)
PAPER = ("Meng et al. (NeurIPS 2022, ROME) corrupt the subject's token embeddings with Gaussian noise of 3× the "
         "embeddings' standard deviation (10 samples) and restore one clean state at one token and layer (the hidden "
         "state, or the MLP / attention output over a window of 10 layers); the indirect effect is the restored "
         "P(answer) minus the corrupted one. Tracing puts a fact in middle-layer MLPs at the subject's last token; "
         "knowledge neurons put it in a few FFN neurons of the top layers at the answer position.")


def tracing_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """Average indirect effect per layer (one panel per kind; a line per position group, with its stored 95%
    interval over facts as a band and n in the legend), with the share of the knowledge neurons in each layer as
    bars behind the MLP panel. An atlas traced before the profiles' aggregates were stored: the lines alone."""
    averages = average_effects(fact_traces(rows))
    if not averages:
        return None
    figure = Figure(figsize=(11.0, 3.4))
    panels = figure.subplots(1, len(KINDS), sharey=True)
    layers = Counter(int(r["metric"].split()[1][1:].split(".")[0]) for r in rows
                     if r["variant"] == "key" and r["metric"].startswith("rank "))
    total = sum(layers.values())
    for axis, kind in zip(panels, KINDS, strict=True):
        depth = 0
        for group in GROUPS:
            if (kind, group) in averages:
                profile, n = averages[(kind, group)]
                depth = len(profile)
                axis.plot(np.arange(depth), profile, color=GROUP_COLORS[group],
                          label=f"{GROUP_LABELS[group]} (n = {n})")
                bands = [find(aggregates, PROFILE, profile_metric(kind, group, layer)) for layer in range(depth)]
                if all(band.n for band in bands):
                    axis.fill_between(np.arange(depth), [b.lo for b in bands], [b.hi for b in bands],
                                      color=GROUP_COLORS[group], alpha=0.18, linewidth=0)
        if kind == "mlp" and total:
            twin = axis.twinx()
            twin.bar(list(layers), [layers[layer] / total for layer in layers], color="#1f77b4", alpha=0.25,
                     label="knowledge neurons (share)")
            twin.set_ylabel("share of knowledge neurons", fontsize=8)
            twin.tick_params(labelsize=8)
        axis.set_title(KIND_TITLES[kind], fontsize=10)
        axis.set_xlabel("layer")
        axis.set_xlim(-0.5, max(depth, 1) - 0.5)
        axis.axhline(0, color="#cccccc", linewidth=0.8)
    panels[0].set_ylabel("average indirect effect on P(answer)")
    panels[0].legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    return to_png(figure)


def _fact_rows(rows: Sequence[dict]) -> list[list[str]]:
    by_fact: dict[str, dict[tuple[str, str], float]] = {}
    relation: dict[str, str] = {}
    for r in rows:
        if r.get("fact_id") and not r["variant"].startswith("map:"):
            by_fact.setdefault(r["fact_id"], {})[(r["variant"], r["metric"])] = r["value"]
            relation[r["fact_id"]] = r.get("relation") or ""
    top = weighed_most(rows)
    out = []
    for fact in sorted(by_fact, key=lambda f: (relation[f], f))[:MAX_FACT_ROWS]:
        v = by_fact[fact]

        def get(variant: str, metric: str, v=v) -> float:
            return v.get((variant, metric), math.nan)

        kn = (f"{_num(get('kn', 'mean_layer'), '.1f')} ({_num(get('kn', 'min_layer'), '.0f')}–"
              f"{_num(get('kn', 'max_layer'), '.0f')})" if ("kn", "mean_layer") in v else "–")
        out.append([_e(fact), _e(relation[fact]), _num(get("effect", "p_clean"), ".3f"),
                    _num(get("effect", "p_corrupted"), ".3f"), _num(get("peak", "mlp_subject_last_layer"), ".0f"),
                    _num(get("peak", "mlp_subject_last_value"), ".3f"),
                    _num(get("peak", "attention_last_layer"), ".0f"),
                    kn, _num(get("answer", "kn_layers_share"), ".0%"), _num(get("answer", "joint_share"), ".0%"),
                    _num(get("answer", "kn_neurons_share_of_all"), ".0%"), _num(get("key", "best_rank"), ".0f"),
                    _e(top.get(fact, "–"))])
    return out


def tracing_section(rows: Sequence[dict], done_facts: int = 0, aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; empty when the atlas has no ``tracing`` rows (an opt-in study).
    ``aggregates``: the study's stored ones, whose interval and n each figure over facts shows."""
    rows = list(rows)
    if not rows:
        return ""
    params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    studied = int(params.get("facts", 0))
    scope = f" (the atlas has {done_facts} done facts)" if done_facts else ""
    parts = [f'<h2 id="study-{STUDY}">{TITLE}</h2>',
             f'<p class="note">{_e(PAPER)} Here: noise of standard deviation '
             f"{_num(params.get('noise', math.nan), '.3g')} "
             f"({_num(params.get('noise_scale', math.nan), 'g')} × the studied subjects' embedding standard deviation "
             f"{_num(params.get('embedding_std', math.nan), '.3g')}), {int(params.get('samples', 0))} seeded draws "
             f"per fact, MLP and attention windows of {int(params.get('window', 0))} layers, one prompt per fact (its "
             "first with the subject before the answer); P(answer) is the joint probability of the answer's tokens. "
             f"{studied} facts traced{scope}; {_num(params.get('seconds_per_fact', math.nan), '.1f')} s per fact on "
             f"{int(params.get('threads', 0))} thread(s).</p>"]
    if studied < FEW_FACTS:
        parts.append(f'<div class="warn"><b>Only {studied} fact(s).</b> Every mean below is over {studied} or fewer '
                     "facts (n is shown): read them as examples, not as findings.</div>")
    parts.append(_image(tracing_figure(rows, aggregates), "average indirect effect per layer, by position, and the "
                        "knowledge neurons' layers"))
    parts.append('<p class="note">Average indirect effect over facts: the mean effect of restoring each layer at the '
                 "subject's last token, at the last token (the one that predicts the answer), and elsewhere (the "
                 "other tokens from the subject's first on); bars: where the knowledge neurons are.</p>")
    lines = [[_e(label), _e(text), str(n)] for label, text, n in figure_lines(rows, aggregates)]
    for (kind, group), (profile, n) in average_effects(fact_traces(rows)).items():
        layer = int(np.argmax(profile))
        stored = find(aggregates, PROFILE, profile_metric(kind, group, layer))
        text = format_interval(stored) if stored.n else f"{_num(float(profile[layer]), '.3f')}, n = {n}"
        lines.append([_e(f"average indirect effect, {KIND_TITLES[kind]} at the {GROUP_LABELS[group]}: peak"),
                      _e(f"L{layer}: {text}"), str(n)])
    parts.append(_table(["measure", "over facts (shares: ratio of means) [95% interval], n", "facts"], lines))
    parts.append('<p class="note"><b>Share of the layers\' sum</b>: each layer\'s MLP output restored alone at the '
                 "answer position, the effects of the knowledge neurons' layers over the sum of all; <b>restored "
                 "together</b>: one run restoring those layers' MLP outputs against one restoring every layer's; "
                 "<b>KN activations restored</b>: only the knowledge neurons' activations set back (kneuron's neuron "
                 "space). <b>ROME's key</b> is the FFN activation at the subject's last token (here at each knowledge "
                 "neuron's own layer); a neuron's rank is by |activation| among its layer's neurons.</p>")
    parts.append("<h3>Per fact</h3>")
    parts.append(_table(["fact", "relation", "P clean", "P corrupted", "MLP peak layer (subject's last)", "its effect",
                         "attention peak layer (last)", "KN layer mean (min–max)", "MLP share of KN layers",
                         "together", "KN activations / all", "best key rank", "key weighs most"],
                        _fact_rows(rows), left=2))
    return "".join(parts)


@report_section(STUDY)
def _section(data) -> str:
    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return tracing_section(data.rows(STUDY), done, data.aggregates.get(STUDY, ()))

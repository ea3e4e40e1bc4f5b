"""Figures of the studies, drawn with matplotlib's Agg canvas (no display, no pyplot global state) and returned
as PNG bytes, ready to embed in the HTML report as data URIs.

Each function takes the study's long-format rows (see :mod:`kneuron.studies`) and returns ``None`` when
there is nothing to draw. A bar that is a mean over facts takes its height, its 95% interval (the error bar) and
its n (in its label) from the study's stored aggregates (:func:`stored_bar`), never recomputed; on an atlas
studied before aggregates were stored the bar is the bare mean with its n and no error bar.

Example:
    >>> png = suppress_amplify_figure(atlas.results("suppress_amplify"))
    >>> open("figure.png", "wb").write(png)
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kneuron.studies.interactions import curve_summary, fact_curves
from kneuron.studies.intervals import find, row_mean
from kneuron.studies.languages import layer_summary, study_languages, suppression_matrix
from kneuron.studies.languages_summary import with_language_rows
from kneuron.studies.layer_distribution import top_layers
from kneuron.studies.metrics import summarize

COLORS = {"kn": "#1f77b4", "random": "#bbbbbb", "kn_no_generic": "#2ca02c", "random_no_generic": "#dddddd",
          "baseline": "#ff7f0e", "other": "#9467bd"}
LABELS = {"kn": "knowledge neurons", "random": "random (same layers)", "kn_no_generic": "KN without generic",
          "random_no_generic": "random, without generic", "baseline": "activation baseline"}
DPI = 100


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes (Agg canvas)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


@dataclass(frozen=True)
class Bar:
    """One bar that is a mean over facts: its height and 95% interval (``lo``, ``hi``; NaN: none stored), scaled
    as drawn, and its number of facts ``n``."""

    mean: float
    lo: float
    hi: float
    n: int


def stored_bar(aggregates: Sequence[dict], rows: Sequence[dict], variant: str, metric: str, relation: str = "", *,
               scale: float = 100.0) -> Bar:
    """The bar of (variant, metric, relation): the stored aggregate's mean, interval and n times ``scale``; without
    one (an atlas studied before aggregates were stored) the bare mean of the per-fact rows with its n, no
    interval."""
    stored = find(aggregates, variant, metric, relation)
    if stored.n:
        return Bar(stored.mean * scale, stored.lo * scale, stored.hi * scale, stored.n)
    mean, n = row_mean(rows, variant, metric, relation)
    return Bar(mean * scale, math.nan, math.nan, n)


def draw_bars(axis: Axes, x: np.ndarray | Sequence[float], bars: Sequence[Bar], width: float, **style) -> None:
    """``bars`` at ``x`` with their intervals as error bars (none where no interval is stored; a bar without facts
    is not drawn)."""
    heights = [b.mean if b.n and math.isfinite(b.mean) else 0.0 for b in bars]
    below = [h - b.lo if math.isfinite(b.lo) else 0.0 for h, b in zip(heights, bars, strict=True)]
    above = [b.hi - h if math.isfinite(b.hi) else 0.0 for h, b in zip(heights, bars, strict=True)]
    axis.bar(x, heights, width, yerr=[below, above], capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
             **style)


#: what every figure's error bars are (the report's captions say it)
ERROR_BARS = "error bars: 95% interval (bootstrap over facts) from the stored aggregates; n: facts"


def _relations(rows: Sequence[dict], variant: str, metric: str) -> list[str]:
    return sorted(summarize(rows, variant, metric).per_relation)


def suppress_amplify_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """Mean relative change (%) of the correct probability per relation and overall: suppress and amplify, knowledge
    neurons against random neurons of the same layers, with and without generic neurons; each bar with its stored
    95% interval, each group labelled with its number of facts (the knowledge neurons')."""
    relations = _relations(rows, "kn", "suppress")
    if not relations:
        return None
    groups = ["", *relations]
    labels = [f"{relation or 'all'}\nn = {stored_bar(aggregates, rows, 'kn', 'suppress', relation).n}"
              for relation in groups]
    figure = Figure(figsize=(max(7.0, 0.75 * len(groups) + 3), 7.2))
    panels = figure.subplots(2, 1, sharex=True)
    variants = ("kn", "random", "kn_no_generic", "random_no_generic")
    width = 0.8 / len(variants)
    x = np.arange(len(groups))
    for axis, op in zip(panels, ("suppress", "amplify"), strict=True):
        for k, variant in enumerate(variants):
            draw_bars(axis, x + (k - 1.5) * width, [stored_bar(aggregates, rows, variant, op, r) for r in groups],
                      width, color=COLORS[variant], label=LABELS[variant], edgecolor="#555555", linewidth=0.4)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_ylabel(f"{op}: mean Δp / p (%)")
        axis.set_title(f"{op.capitalize()} ({'activation set to 0' if op == 'suppress' else 'activation doubled'} "
                       "at the answer position)", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    panels[0].legend(fontsize=8, ncol=2)
    panels[1].set_xticks(x, labels, rotation=40, ha="right")
    panels[1].set_xlabel(ERROR_BARS, fontsize=8)
    figure.tight_layout()
    return to_png(figure)


def other_relations_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """Own facts against other relations' facts: mean relative change (%) when a fact's neurons are patched, each
    bar with its stored 95% interval, each group labelled with its number of facts (own, other)."""
    bars = []
    for variant in ("kn", "kn_no_generic", "random"):
        for op in ("suppress", "amplify"):
            own, other = stored_bar(aggregates, rows, variant, op), stored_bar(aggregates, rows, variant, f"{op}_other")
            if own.n:
                bars.append((f"{op}\n{LABELS[variant]}\nn = {own.n}, {other.n}", own, other))
    if not bars:
        return None
    figure = Figure(figsize=(8.5, 4.0))
    axis = figure.subplots()
    x = np.arange(len(bars))
    draw_bars(axis, x - 0.2, [b[1] for b in bars], 0.4, label="the fact's own prompts", color=COLORS["kn"])
    draw_bars(axis, x + 0.2, [b[2] for b in bars], 0.4, label="prompts of other relations' facts",
              color=COLORS["other"])
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(x, [b[0] for b in bars], fontsize=7)
    axis.set_xlabel(ERROR_BARS, fontsize=8)
    axis.set_ylabel("mean Δp / p (%)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return to_png(figure)


def layer_shares(rows: Sequence[dict], variant: str, relation: str = "") -> dict[int, float]:
    """``{layer: share}`` from the layer-distribution rows."""
    shares = {}
    for r in rows:
        if r["variant"] == variant and r["relation"] == relation and r["metric"].startswith("share:"):
            shares[int(r["metric"].split(":", 1)[1])] = r["value"]
    return dict(sorted(shares.items()))


def layers_figure(rows: Sequence[dict]) -> bytes | None:
    """Share of knowledge neurons per layer against the activation baseline's; the top third shaded."""
    variants = [v for v in ("kn", "kn_no_generic", "baseline") if layer_shares(rows, v)]
    if not variants:
        return None
    n_layers = len(layer_shares(rows, variants[0]))
    figure = Figure(figsize=(max(7.0, 0.28 * n_layers + 2), 3.8))
    axis = figure.subplots()
    top = top_layers(n_layers)
    axis.axvspan(top.start - 0.5, n_layers - 0.5, color="#f3e9c6", label="top third of the layers")
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        shares = layer_shares(rows, variant)
        axis.bar(np.array(list(shares)) + (k - (len(variants) - 1) / 2) * width,
                 [v * 100 if math.isfinite(v) else 0 for v in shares.values()], width, color=COLORS[variant],
                 label=LABELS[variant])
    axis.set_xlabel("layer")
    axis.set_ylabel("share of neurons (%)")
    axis.set_xlim(-0.7, n_layers - 0.3)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return to_png(figure)


def layers_heatmap(rows: Sequence[dict], variant: str = "kn") -> bytes | None:
    """Per relation (rows) and layer (columns): the share of the relation's knowledge neurons."""
    relations = sorted({r["relation"] for r in rows if r["variant"] == variant and r["relation"]})
    if not relations:
        return None
    matrix = np.array([[v if math.isfinite(v) else 0.0 for v in layer_shares(rows, variant, rel).values()]
                       for rel in relations])
    figure = Figure(figsize=(max(7.0, 0.28 * matrix.shape[1] + 3), 0.32 * len(relations) + 1.6))
    axis = figure.subplots()
    image = axis.imshow(matrix * 100, aspect="auto", cmap="Blues", vmin=0)
    axis.set_yticks(range(len(relations)), relations, fontsize=8)
    axis.set_xticks(range(matrix.shape[1]), [str(i) for i in range(matrix.shape[1])], fontsize=7)
    axis.set_xlabel("layer")
    figure.colorbar(image, ax=axis, label="share of the relation's neurons (%)")
    figure.tight_layout()
    return to_png(figure)


def discrimination_figure(rows: Sequence[dict]) -> bytes | None:
    """Per-fact ROC AUCs (own prompts vs other facts' prompts; stating vs subject-only sentences) as box plots."""
    panels = []
    for metric, title in (("auc", "own prompts vs other facts' prompts"),
                          ("auc_signed", "same, activations signed by their direction"),
                          ("sentence_auc", "stating vs subject-only sentences")):
        data, names = [], []
        for variant in ("kn", "kn_no_generic", "baseline"):
            values = [r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric
                      and r["fact_id"] and math.isfinite(r["value"])]
            if values:
                data.append(values)
                names.append(f"{LABELS[variant]}\n(n={len(values)})")
        if data:
            panels.append((title, data, names))
    if not panels:
        return None
    figure = Figure(figsize=(4.2 * len(panels), 3.8))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, data, names) in zip(axes, panels, strict=True):
        axis.boxplot(data, showmeans=True)
        axis.set_xticks(range(1, len(names) + 1), names, fontsize=7)
        axis.axhline(0.5, color="#999999", linestyle="--", linewidth=0.8)
        axis.set_ylim(-0.02, 1.02)
        axis.set_ylabel("ROC AUC per fact")
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return to_png(figure)


def generic_by_word(rows: Sequence[dict], neuron: str) -> dict[str, dict[str, float]]:
    """For one probed generic neuron, per last word before the answer: mean activation, mean relative change when
    it alone is zeroed on facts that do not have it (``unrelated``) and on facts that do (``members``), and the
    number of such facts."""
    member = {r["fact_id"]: r["value"] > 0.5 for r in rows if r["variant"] == neuron and r["metric"] == "member"}
    buckets: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["variant"] != neuron or ":" not in r["metric"] or not math.isfinite(r["value"]):
            continue
        kind, word = r["metric"].split(":", 1)
        if kind == "activation":
            buckets[word]["activation"].append(r["value"])
        elif kind == "suppress_alone":
            buckets[word]["members" if member.get(r["fact_id"]) else "unrelated"].append(r["value"])
    table = {}
    for word, lists in buckets.items():
        table[word] = {
            "activation": float(np.mean(lists["activation"])) if lists["activation"] else math.nan,
            "unrelated": float(np.mean(lists["unrelated"])) if lists["unrelated"] else math.nan,
            "members": float(np.mean(lists["members"])) if lists["members"] else math.nan,
            "n_unrelated": len(lists["unrelated"]),
            "n_members": len(lists["members"]),
        }
    return dict(sorted(table.items(), key=lambda item: -(item[1]["n_unrelated"] + item[1]["n_members"])))


def generic_figure(rows: Sequence[dict], neuron: str, max_words: int = 12, *,
                   aggregates: Sequence[dict] = ()) -> bytes | None:
    """One generic neuron: its activation and the effect of zeroing it alone, by the last word before the
    answer; each bar with its stored 95% interval, each word labelled with its number of facts (left: all; right:
    without it, with it)."""
    from kneuron.studies.generic import MEMBERS, UNRELATED, by_word_rows

    table = dict(list(generic_by_word(rows, neuron).items())[:max_words])
    if not table:
        return None
    words = list(table)
    split = by_word_rows(rows)
    figure = Figure(figsize=(max(7.0, 0.6 * len(words) + 2), 3.8))
    left, right = figure.subplots(1, 2)
    activation = [stored_bar(aggregates, rows, neuron, f"activation:{w}", scale=1.0) for w in words]
    x = np.arange(len(words))
    draw_bars(left, x, activation, 0.8, color=COLORS["kn"])
    left.set_xticks(x, [f"{w}\nn = {b.n}" for w, b in zip(words, activation, strict=True)])
    left.set_title(f"{neuron}: mean activation at the answer position", fontsize=9)
    left.set_xlabel("last word before the answer")
    unrelated = [stored_bar(aggregates, split, neuron, f"suppress_alone:{w}{UNRELATED}") for w in words]
    members = [stored_bar(aggregates, split, neuron, f"suppress_alone:{w}{MEMBERS}") for w in words]
    draw_bars(right, x - 0.2, unrelated, 0.4, color=COLORS["other"], label="facts without it")
    draw_bars(right, x + 0.2, members, 0.4, color=COLORS["kn"], label="facts with it as a knowledge neuron")
    right.set_xticks(x, [f"{w}\nn = {a.n}, {b.n}" for w, a, b in zip(words, unrelated, members, strict=True)])
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title(f"{neuron} zeroed alone: mean Δp / p (%)", fontsize=9)
    right.set_xlabel(f"last word before the answer; {ERROR_BARS}", fontsize=7)
    right.legend(fontsize=7)
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=40, labelsize=8)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return to_png(figure)


def estimators_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """Per compared estimator: its agreement with integrated gradients (Spearman, top-10 recall, refined Jaccard;
    left) and the suppression of its refined neurons against IG's and a random control's (mean Δp/p; right); each
    bar with its stored 95% interval, each estimator labelled with its number of facts."""
    from kneuron.studies.estimator_agreement import agreement_summary

    entries = [e for e in agreement_summary(rows) if e["estimator"] != "ig"]
    if not entries:
        return None
    names = [str(e["estimator"]) for e in entries]
    counts = [_estimator_bar(aggregates, rows, e, "spearman", 1.0).n or _estimator_bar(aggregates, rows, e, "suppress",
                                                                                          1.0).n for e in entries]
    figure = Figure(figsize=(max(8.0, 1.6 * len(names) + 5), 3.8))
    left, right = figure.subplots(1, 2)
    x = np.arange(len(names))
    for axis, bars, label in (
            (left, (("spearman", "Spearman", "#1f77b4"), ("top_recall", "top-10 recall", "#ff7f0e"),
                    ("refined_jaccard", "refined Jaccard", "#2ca02c")), "agreement with IG"),
            (right, (("suppress", "estimator's neurons", "#1f77b4"), ("suppress_ig", "IG's neurons", "#9467bd"),
                     ("suppress_random", "random (same layers)", "#bbbbbb")), "suppress: mean Δp / p (%)")):
        width = 0.8 / len(bars)
        scale = 100 if axis is right else 1
        for k, (metric, name, color) in enumerate(bars):
            draw_bars(axis, x + (k - 1) * width, [_estimator_bar(aggregates, rows, e, metric, scale) for e in entries],
                      width, color=color, label=name, edgecolor="#555555", linewidth=0.4)
        axis.set_xticks(x, [f"{name}\nn = {n}" for name, n in zip(names, counts, strict=True)], fontsize=8)
        axis.set_ylabel(label)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)  # below: bars fill the axes
    left.set_ylim(min(0.0, left.get_ylim()[0]), 1.05)
    left.set_title("Rank correlation, top-10 overlap, refined sets", fontsize=9)
    right.set_title("Refined neurons set to 0 at the answer position", fontsize=9)
    figure.suptitle(ERROR_BARS, fontsize=8, y=0.02)
    figure.tight_layout()
    return to_png(figure)


def _estimator_bar(aggregates: Sequence[dict], rows: Sequence[dict], entry: dict, metric: str, scale: float) -> Bar:
    """An estimator's stored bar (its Spearman over the kept neurons where the summary uses those); without a stored
    aggregate, the study summary's mean (no interval)."""
    stored_metric = "spearman_kept" if metric == "spearman" and entry.get("spearman_over") == "kept" else metric
    bar = stored_bar(aggregates, rows, str(entry["estimator"]), stored_metric, scale=scale)
    if bar.n:
        return bar
    value = float(entry[metric])
    return Bar(value * scale, math.nan, math.nan, int(entry.get("facts", 0) or 0) if math.isfinite(value) else 0)


def language_layers_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """The ``languages`` study: per layer, how many of the facts' neurons are shared by all their languages, shared
    by at least two, or specific to one language (left), and the mean share of each per fact with its stored 95%
    interval and n (right)."""
    layers = layer_summary(rows)
    if not any(layers.values()) or not any(any(v.values()) for v in layers.values()):
        return None
    n_layers = max(max(v, default=-1) for v in layers.values()) + 1
    figure = Figure(figsize=(max(8.0, 0.3 * n_layers + 5), 3.8))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(n_layers)
    colors = {"shared_all": "#1f77b4", "shared": "#9ecae1", "specific": "#ff7f0e"}
    names = {"shared_all": "shared by all its languages", "shared": "shared by at least two",
             "specific": "language-specific"}
    for k, name in enumerate(("shared_all", "shared", "specific")):
        left.bar(x + (k - 1) * 0.27, [layers[name].get(i, 0) for i in x], 0.27, color=colors[name], label=names[name])
    left.set_xticks(x, [str(i) for i in x], fontsize=7 if n_layers > 20 else 9)
    left.set_xlabel("layer")
    left.set_ylabel("neurons (over facts)")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    shares = [stored_bar(aggregates, rows, "overlap", f"share_{name}") for name in ("shared_all", "shared", "specific")]
    draw_bars(right, range(3), shares, 0.8, color=[colors[k] for k in ("shared_all", "shared", "specific")])
    right.set_xticks(range(3), [f"{label}\nn = {bar.n}" for label, bar in zip(("all", "2+", "one"), shares,
                                                                                 strict=True)], fontsize=8)
    right.set_ylabel("mean share of a fact's neurons (%)")
    right.set_title("error bars: 95% interval (stored)", fontsize=8)
    right.set_ylim(0, 100)
    figure.tight_layout()
    return to_png(figure)


def suppression_matrix_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """The ``languages`` study's s × t matrices (suppress language s's neurons, mean Δp/p in language t) for the
    knowledge neurons and the random control, as annotated heatmaps on one colour scale: each cell its mean with
    its stored 95% interval and n (an atlas studied before the cells' aggregates were stored: the bare mean and
    n)."""
    codes = study_languages(rows)
    panels = [(variant, suppression_matrix(rows, variant)) for variant in ("kn", "random")]
    if not codes or not panels[0][1]:
        return None
    extended = with_language_rows(rows)
    cells = [{(s, t): stored_bar(aggregates, extended, variant, f"suppress@{s}>{t}")
              for s in codes for t in codes if (s, t) in matrix} for variant, matrix in panels]
    limit = max([abs(bar.mean) for grid in cells for bar in grid.values() if math.isfinite(bar.mean)] + [1.0])
    figure = Figure(figsize=(1.3 * len(codes) * 2 + 3, 1.1 * len(codes) + 1.8))
    axes = figure.subplots(1, 2)
    for axis, (variant, _), grid in zip(axes, panels, cells, strict=True):
        image = axis.imshow(np.array([[grid[(s, t)].mean if (s, t) in grid else math.nan for t in codes]
                                      for s in codes], dtype=float), cmap="RdBu", vmin=-limit, vmax=limit)
        for i, s in enumerate(codes):
            for j, t in enumerate(codes):
                bar = grid.get((s, t))
                if bar is None or not bar.n:
                    axis.text(j, i, "–", ha="center", va="center", fontsize=7)
                    continue
                text = f"{bar.mean:+.0f}%"
                if math.isfinite(bar.lo):
                    text += f"\n[{bar.lo:+.0f}, {bar.hi:+.0f}]"
                dark = abs(bar.mean) > 0.6 * limit
                axis.text(j, i, f"{text}\nn={bar.n}".replace("-", "−"), ha="center", va="center", fontsize=6.5,
                          color="white" if dark else "black")
        axis.set_xticks(range(len(codes)), codes)
        axis.set_yticks(range(len(codes)), codes)
        axis.set_xlabel("measured in language t")
        axis.set_ylabel("neurons of language s set to 0")
        axis.set_title("knowledge neurons" if variant == "kn" else "random (same layers)", fontsize=9)
    figure.colorbar(image, ax=list(axes), label="mean Δp / p (%) [95% interval, stored], n facts")
    return to_png(figure)


def interactions_figure(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> bytes | None:
    """The ``interactions`` study's cumulative curves: Δp/p (%) of the answer with a fact's top-k knowledge neurons
    (by score) set to 0, k = 1, 2, ..., each fact thin and the mean over the facts that have k neurons thick, against
    as many random neurons of the same layers, each mean with its stored 95% interval as a band; the −50% and −90%
    levels dashed; n = facts at each k."""
    kn, random = curve_summary(rows, "kn"), curve_summary(rows, "random")
    if not kn:
        return None
    figure = Figure(figsize=(max(7.0, 0.35 * len(kn) + 5), 4.6))
    axis = figure.subplots()
    for curve in fact_curves(rows, "kn").values():
        axis.plot(range(1, len(curve) + 1), [v * 100 for v in curve], color=COLORS["kn"], alpha=0.18, linewidth=0.8)
    for variant, summary in (("random", random), ("kn", kn)):
        if summary:
            ks = list(summary)
            bars = [stored_bar(aggregates, rows, variant, f"curve:{k}") for k in ks]
            color = COLORS[variant] if variant == "kn" else "#777777"
            axis.plot(ks, [b.mean for b in bars], color=color, marker="o", linewidth=2.2,
                      label=f"{LABELS[variant]}, mean")
            if any(math.isfinite(b.lo) for b in bars):
                axis.fill_between(ks, [b.lo for b in bars], [b.hi for b in bars], color=color, alpha=0.2,
                                  label=f"{LABELS[variant]}, 95% interval (stored)")
    for level in (50, 90):
        axis.axhline(-level, color="#b00020", linestyle="--", linewidth=0.8)
        axis.text(max(kn) + 0.1, -level, f"−{level}%", color="#b00020", va="bottom", fontsize=8)
    axis.axhline(0, color="black", linewidth=0.8)
    for k, (_, n) in kn.items():
        n = stored_bar(aggregates, rows, "kn", f"curve:{k}").n or n
        axis.annotate(f"n={n}", (k, 0), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7,
                      color="#555555")
    axis.set_xticks(list(kn))
    axis.set_xlabel("k: the fact's k best-scored knowledge neurons (or k random ones) set to 0")
    axis.set_ylabel("Δp / p of the answer (%)")
    axis.set_title("Cumulative suppression at the answer position (thin: one fact)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return to_png(figure)

"""``tracing``: causal tracing (Meng et al. 2022) of each fact, and where it puts the fact against the knowledge
neurons (:mod:`kneuron.studies.tracing`): the token × layer maps of the residual stream, MLP and attention outputs,
the average indirect effect at the subject's last token, the last token and elsewhere, the MLP's effect at the
answer position carried by the knowledge neurons' layers and by the neurons themselves, and ROME's key."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from kneuron.errors import StudyError
from kneuron.studies.base import FACTS_LIMIT, SEED, Option, Study, StudyContext, StudyOutput, number
from kneuron.studies.intervals import find, format_interval
from kneuron.studies.registry import register_study
from kneuron.studies.tracing import (
    LAST,
    RATIO_SUFFIX,
    RATIOS,
    SUBJECT,
    SUBJECT_LAST,
    average_effects,
    fact_traces,
    figure_value,
    profile_aggregates,
    ratio_aggregates,
    tracing_study,
)

#: how the maps are titled on a fact's page and in the report
KIND_TITLES = {"residual": "residual stream (one layer)", "mlp": "MLP output", "attention": "attention output"}
#: the per-fact figures of the summary: (label, variant, metric, format)
FIGURES = (
    ("P(answer) clean", "effect", "p_clean", ".3f"),
    ("P(answer) corrupted", "effect", "p_corrupted", ".3f"),
    ("total effect", "effect", "total_effect", ".3f"),
    ("MLP peak layer at the subject's last token", "peak", "mlp_subject_last_layer", ".1f"),
    ("its indirect effect", "peak", "mlp_subject_last_value", ".3f"),
    ("attention peak layer at the last token", "peak", "attention_last_layer", ".1f"),
    ("knowledge neurons' mean layer", "kn", "mean_layer", ".1f"),
    ("  minus the MLP peak layer", "kn", "minus_mlp_peak", "+.1f"),
    ("MLP at the answer position: share of the layers' sum on KN layers", "answer", "kn_layers_share", ".0%"),
    ("MLP of KN layers restored together / of all layers", "answer", "joint_share", ".0%"),
    ("KN activations restored / MLP of their layers", "answer", "kn_neurons_share_of_layers", ".0%"),
    ("KN activations restored / MLP of all layers", "answer", "kn_neurons_share_of_all", ".0%"),
    ("ROME's key: best KN rank in its layer (1 = largest |a|)", "key", "best_rank", ".1f"),
    ("ROME's key: share of KN in their layer's top 1%", "key", "top_1pct", ".0%"),
    ("ROME's key: KN share of its squared norm", "key", "energy_share", ".2%"),
    ("  a uniform key's", "key", "energy_share_uniform", ".2%"),
)


@register_study
class Tracing(Study):
    """Causal tracing of each fact (noise on the subject's embeddings, clean states restored token by token and
    layer by layer) against its knowledge neurons: where each puts the fact, how much of the MLP's effect at the
    answer position the neurons' layers and the neurons carry, and which neurons ROME's key weighs most."""

    name = "tracing"
    title = "Causal tracing against knowledge neurons"
    group = "opt-in"  # tens of seconds per fact on SmolLM2 (one thread): only when named
    options = (Option("samples", int, 10, "Noise draws per fact (ROME: 10).", min=1),
               Option("window", int, 10, "Layers restored together in the MLP and attention maps (ROME: 10).", min=1),
               Option("noise_scale", float, 3.0, "Noise in standard deviations of the subjects' token embeddings "
                      "(ROME: 3).", min=0.0),
               SEED, FACTS_LIMIT)

    def run(self, context: StudyContext) -> StudyOutput:
        options, limit = context.options, context.options.get("facts_limit")
        facts = context.facts[:limit] if limit else context.facts
        if not facts:
            raise StudyError("The atlas has no done facts to trace.")
        advance = context.progress("tracing", len(facts))
        rows, traced = tracing_study(context.lm, facts, context.neurons, samples=options["samples"],
                                     window=options["window"], noise_scale=options["noise_scale"],
                                     seed=options["seed"], on_fact=lambda _fact: advance(), note=context.note)
        return StudyOutput(rows, facts=traced)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """Every per-fact measure's aggregates, the shares' as ratios of means
        (:func:`~kneuron.studies.tracing.ratio_aggregates`), which is how the summaries show them, and each layer
        of the average indirect-effect profiles (:func:`~kneuron.studies.tracing.profile_aggregates`), which the
        report draws as bands."""
        return super().aggregates(output, context) + ratio_aggregates(output.rows) + profile_aggregates(output.rows)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return [(label, value) for label, value, n in figure_lines(rows, aggregates)[:6] if n]

    def summary(self, output: StudyOutput, context: StudyContext) -> list[Any]:
        return [tracing_table(output.rows, context.run_path, output.aggregates)]

    def fact_charts(self, rows: Sequence[dict]) -> list[dict[str, Any]]:
        traces = fact_traces(rows)
        if not traces:
            return []
        trace = traces[0]
        layers = [r["metric"].split()[1] for r in rows if r["variant"] == "key" and r["metric"].startswith("rank ")]
        kn = sorted({int(name[1:].split(".")[0]) for name in layers})
        marks = {SUBJECT: " *", SUBJECT_LAST: " * (subject's last)", LAST: " (last)"}
        labels = [f"{token!r}{marks.get(role, '')}" for token, role in zip(trace.tokens, trace.roles, strict=True)]
        window = int(next((r["value"] for r in rows if r["variant"] == "effect" and r["metric"] == "window"), 0))
        charts = []
        for kind, grid in trace.maps.items():
            values = [[layer, p, float(grid[p, layer])] for p in range(grid.shape[0]) for layer in range(grid.shape[1])
                      if math.isfinite(grid[p, layer])]
            title = KIND_TITLES.get(kind, kind) + (f", windows of {window} layers" if window and kind != "residual"
                                                   else "")
            charts.append({"title": f"Indirect effect on P(answer): {title} restored", "x": list(
                range(grid.shape[1])), "y": labels, "values": values,
                "caption": "* the subject's tokens (noised); knowledge neurons in layers "
                           f"{', '.join(map(str, kn)) if kn else 'none'}"})
        return charts

    def panel_rows(self, rows: Sequence[dict]) -> list[dict]:
        return [r for r in rows if not r["variant"].startswith("map:") and r["variant"] != "token"
                and not r["metric"].startswith("mlp1 ")]


def figure_lines(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str, int]]:
    """``(label, text, n)`` of :data:`FIGURES`, for the terminal and the report: each mean over the traced facts
    (a share: the ratio of means) with its stored 95% interval and n (no control); the bare figure with its n and
    what to re-run on an atlas traced before they were stored."""
    lines = []
    for label, variant, metric, spec in FIGURES:
        mean, n = figure_value(rows, variant, metric)
        ratio = variant == "answer" and metric in RATIOS
        stored = find(aggregates, variant, metric + RATIO_SUFFIX if ratio else metric)
        if stored.n:
            text = format_interval(stored, percent=spec.endswith("%"), digits=0 if spec.endswith("%") else 1,
                                   signed=spec.startswith("+"))
        elif n:
            text = f"{number(mean, spec)}, n = {n}, no interval stored (re-run `kneuron study tracing`)"
        else:
            text = "–"
        lines.append((label, text, stored.n or n))
    return lines


def tracing_table(rows: Sequence[dict], run: object, aggregates: Sequence[dict] = ()) -> Table:
    """The study's headline figures (means over the traced facts, each with its stored interval and n) and the
    average indirect effects' peaks."""
    params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    table = Table(title=Text(f"Causal tracing of {int(params.get('facts', 0))} facts, stored in {run}", style="bold"),
                  title_justify="left", show_edge=False, caption_justify="left",
                  caption=(f"noise {number(params.get('noise', math.nan), '.3g')} (3 × the subjects' embedding std "
                           f"{number(params.get('embedding_std', math.nan), '.3g')} by default), "
                           f"{int(params.get('samples', 0))} draws, window {int(params.get('window', 0))}; "
                           f"{number(params.get('seconds_per_fact', math.nan), '.1f')} s per fact on "
                           f"{int(params.get('threads', 0))} thread(s); means over facts (shares: ratios of means) "
                           "[95% interval: bootstrap over facts], n facts; no control"))
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for label, text, n in figure_lines(rows, aggregates):
        table.add_row(label, Text(text), str(n))
    for (kind, group), (profile, n) in average_effects(fact_traces(rows)).items():
        layer = int(profile.argmax())
        table.add_row(f"AIE {kind} at {group.replace('_', ' ')}: peak layer, value", f"L{layer}: "
                      f"{number(float(profile[layer]), '.3f')}", str(n))
    return table

"""The paper's four studies (Dai et al. 2022, §4): suppress/amplify, generic neurons, layers, discrimination.

They share the encoded prompts and the generic-neuron list (always computed: the others report their numbers with
and without the generic neurons), once per command (:meth:`StudyContext.cached`). Besides their own rows, rows
with variant ``params`` record the settings (seed, other facts, generic share, probed neurons).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kneuron.studies.base import GENERIC_SHARE, SEED, Option, Study, StudyContext, StudyOutput
from kneuron.studies.generic import by_word_rows, generic_neurons
from kneuron.studies.intervals import aggregate_rows, figure, find, median_aggregates, row_mean
from kneuron.studies.layer_distribution import top_third_aggregates
from kneuron.studies.registry import register_study
from kneuron.studies.studies import run_studies
from kneuron.studies.suppress_amplify import encode_facts

#: (variant, metric, label, percent) of the summary table's mean lines
MEAN_LINES = (
    ("kn", "suppress", "suppress KN (mean Δp/p)", True), ("random", "suppress", "suppress random", True),
    ("kn_no_generic", "suppress", "suppress KN without generic", True),
    ("kn", "amplify", "amplify KN (mean Δp/p)", True), ("random", "amplify", "amplify random", True),
    ("kn_no_generic", "amplify", "amplify KN without generic", True),
    ("kn", "suppress_other", "suppress KN, other relations", True),
    ("kn", "auc", "AUC KN, own vs other prompts", False),
    ("baseline", "auc", "AUC activation baseline", False),
    ("kn", "auc_signed", "AUC KN, signed by direction", False),
    ("kn", "sentence_auc", "AUC KN, stating vs subject-only", False),
    ("baseline", "sentence_auc", "AUC baseline, stating vs subject-only", False))


def generic_share(context: StudyContext) -> float:
    """The share the atlas's generic table was flagged with (what :meth:`PaperStudy.prepare` left there)."""
    return float(context.atlas.meta.get("generic", {}).get("share", 0.1))


def generic_list(context: StudyContext) -> list:
    """The generic knowledge neurons (shared by more than the generic share of the facts), once per command."""
    return context.cached("generic", lambda: generic_neurons(context.neurons, share=generic_share(context)))


def queries(context: StudyContext) -> dict:
    """Every done fact's prompts encoded once per command."""
    return context.cached("queries", lambda: encode_facts(context.lm, context.facts))


class PaperStudy(Study):
    """What the paper's studies share: their group, the generic share and the atlas's generic table."""

    group = "paper"

    def prepare(self, atlas: Any, options: Mapping[str, Any], shared: dict[str, Any]) -> None:
        if shared.get("generic_prepared"):
            return
        if options.get("generic_share") is not None or not atlas.meta.get("generic"):
            atlas.update_generic(share=options.get("generic_share"))  # flags the generic neurons in the atlas
        shared["generic_prepared"] = True

    def run(self, context: StudyContext) -> list[dict]:
        """:func:`~kneuron.studies.studies.run_studies` for this study, with the command's shared inputs."""
        options = context.options
        advance = (context.progress(self.name.replace("_", "-"), len(context.facts))  # the one with progress
                   if self.name == "suppress_amplify" else lambda: None)
        return run_studies(
            context.lm, context.facts, context.neurons, context.baseline, studies=[self.name],
            generic_share=generic_share(context), other_facts=options.get("other_facts", 5),
            probe_neurons=options.get("probe_neurons", 3), seed=options.get("seed", 0),
            coarse_by_fact=context.coarse if self.name == "generic" else None, queries=queries(context),
            generic=generic_list(context), on_fact=lambda _fact: advance())[self.name]

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        """The mean lines, each with its stored interval, n and paired p-value against its control (``−81.6%
        [−88.0, −74.1], n = 32, p = 0.0001 vs random``); a bare mean only where no aggregate was stored."""
        return [(label, figure(aggregates, variant, metric, rows=rows, study=self.name, percent=percent))
                for variant, metric, label, percent in MEAN_LINES
                if find(aggregates, variant, metric).n or row_mean(rows, variant, metric)[1]]


@register_study
class SuppressAmplify(PaperStudy):
    """Suppress (×0) or amplify (×2) each fact's knowledge neurons: the answer's probability change, against
    random neurons and on other relations' facts."""

    name = "suppress_amplify"
    title = "Suppressing and amplifying knowledge neurons"
    controls = {"kn": "random", "kn_no_generic": "random_no_generic"}
    options = (Option("other_facts", int, 5, "Facts of other relations on which each fact's neurons are also "
                      "patched.", min=0), SEED, GENERIC_SHARE)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """The default aggregates and each variant's median over facts of suppress and amplify with its bootstrap
        interval (metric ``suppress:median``, ``amplify:median``; :func:`~kneuron.studies.intervals.median_aggregates`),
        which the report shows under its tables."""
        variants = list(dict.fromkeys(r["variant"] for r in output.rows if r.get("fact_id")))
        return super().aggregates(output, context) + median_aggregates(
            output.rows, [(v, op) for v in variants for op in ("suppress", "amplify")])

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        """The mean lines, then the knowledge neurons' stored medians over facts with their intervals (none on an
        atlas studied before medians were stored)."""
        from kneuron.studies.intervals import format_interval

        medians = [(f"{op} KN (median Δp/p)", format_interval(found, percent=True)) for op in ("suppress", "amplify")
                   if (found := find(aggregates, "kn", f"{op}:median")).n]
        return super().measures(rows, aggregates) + medians


@register_study
class Generic(PaperStudy):
    """Generic neurons: knowledge neurons shared by many facts, and coarse neurons tied to one last word; the most
    shared probed alone."""

    name = "generic"
    title = "Generic neurons"
    options = (Option("probe_neurons", int, 3, "Generic neurons (most shared first) probed alone.", min=0,
                      flag="--probe"), GENERIC_SHARE)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """The default aggregates (each probed neuron's ``activation:w`` and ``suppress_alone:w`` over all facts)
        and ``suppress_alone:w`` split by membership (``...@unrelated``, ``...@members``:
        :func:`~kneuron.studies.generic.by_word_rows`), the per-last-word means the report's tables show. No
        control: a neuron zeroed alone has no random counterpart in this study."""
        return aggregate_rows(output.rows + by_word_rows(output.rows)) + share_aggregates(output.rows)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        """The default lines, each generic neuron's share of the facts (its stored Wilson interval and n; the
        bare share with its count on an atlas studied before they were stored), and the coarse neurons tied to
        one last word, with the prompt counts their word score is made of."""
        from kneuron.studies.intervals import format_interval

        lines, shown = super().measures(rows, aggregates), 0
        counts = {(r["variant"], r["metric"]): r["value"] for r in rows if not r["fact_id"]}
        for r in rows:
            if r["metric"] == "share" and not r["fact_id"] and r["variant"] != "params":
                shown += 1
                if shown <= 5:
                    stored = find(aggregates, r["variant"], "share")
                    text = format_interval(stored, percent=True) if stored.n else \
                        f"{r['value']:.0%} ({counts.get((r['variant'], 'facts'), 0):.0f} facts)"
                    lines.append((f"generic neuron {r['variant']}: share of the facts", text))
            if r["metric"].startswith("word_score:") and r["value"] >= 0.5:
                word = r["metric"].split(":", 1)[1]
                coarse = counts.get((r["variant"], f"coarse:{word}"), 0)
                ending = counts.get(("prompts", f"prompts:{word}"), 0)
                everywhere = counts.get((r["variant"], "coarse_prompts"), 0)
                lines.append((f"{r['variant']} is coarse where the prompt ends in {word!r}",
                              f"word score {r['value']:.2f} (coarse in {coarse:.0f} of the {ending:.0f} prompts "
                              f"ending in {word!r}; {coarse:.0f} of its {everywhere:.0f} coarse prompts)"))
        if shown > 5:
            lines.append((f"... {shown - 5} more generic neurons (see the report)", ""))
        return lines

    def summary(self, output: StudyOutput, context: StudyContext) -> list[Any]:
        """Per probed neuron, its most frequent last words: the mean activation there and the effect of zeroing it
        alone on facts without it and with it, each with its stored interval and n."""
        return generic_word_tables(output.rows, output.aggregates, context.width)


def share_aggregates(rows: Sequence[dict]) -> list[dict]:
    """Each generic neuron's share of the facts (rows ``facts`` and ``share``, no fact id) as a stored aggregate
    with Wilson's interval over the facts (variant: the neuron, metric ``share``): a share of facts, whose exact
    interval needs only the counts."""
    from kneuron.studies.intervals import Interval, wilson_interval

    counts = {(r["variant"], r["metric"]): r["value"] for r in rows if not r.get("fact_id")}
    out = []
    for (variant, metric), share in counts.items():
        facts = counts.get((variant, "facts"))
        if metric != "share" or variant == "params" or not facts or not share:
            continue
        total = round(facts / share)  # share = facts / total, exactly, for a generic neuron
        interval = Interval(facts / total, *wilson_interval(int(facts), total), total, "wilson")
        out.append({"variant": variant, "relation": "", "metric": "share", **interval.__dict__})
    return out


#: the last words per probed neuron the terminal summary lists (most frequent first)
SUMMARY_WORDS = 5


def generic_word_tables(rows: Sequence[dict], aggregates: Sequence[dict], width: int | None) -> list[Any]:
    """One table per probed generic neuron (see :meth:`Generic.summary`); one figure per line when ``width`` is
    too narrow for the table."""
    from kneuron.studies.display import fit_table, stored_figure
    from kneuron.studies.generic import MEMBERS, UNRELATED

    split = by_word_rows(rows)
    tables = []
    for neuron in dict.fromkeys(r["variant"] for r in rows if r.get("fact_id") and r["metric"] == "member"):
        counts: dict[str, int] = {}
        for r in rows:
            if r["variant"] == neuron and r["metric"].startswith("activation:"):
                word = r["metric"].split(":", 1)[1]
                counts[word] = counts.get(word, 0) + 1
        words = sorted(counts, key=lambda w: -counts[w])[:SUMMARY_WORDS]
        lines = [[repr(word), stored_figure(aggregates, rows, "generic", neuron, f"activation:{word}", percent=False,
                                            signed=False),
                  *(stored_figure(aggregates, split, "generic", neuron, f"suppress_alone:{word}{suffix}")
                    for suffix in (UNRELATED, MEMBERS))] for word in words]
        if lines:
            tables.append(fit_table(f"{neuron} on its own, by the last word before the answer",
                                    ["last word", "mean activation", "zeroed alone: facts without it",
                                     "facts with it"], lines, width,
                                    caption="means over facts [95% interval: bootstrap over facts], n facts; no "
                                            "control"))
    return tables


@register_study
class Layers(PaperStudy):
    """Where knowledge neurons sit: their share per layer and in the top third, against the activation baseline.

    Control: the activation baseline's neurons on the same facts. The stored aggregates are the ``top_third``
    share of each variant, overall and per relation: pooled over the facts' neurons, with the cluster bootstrap
    over facts and the paired permutation test against the baseline's share
    (:func:`~kneuron.studies.layer_distribution.top_third_aggregates`)."""

    name = "layers"
    title = "Layer distribution"
    aliases = ("layer-distribution", "layer_distribution")
    controls = {"kn": "baseline", "kn_no_generic": "baseline"}
    options = (GENERIC_SHARE,)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """The top-third shares with their intervals (the rows have no per-fact values to aggregate): from the
        same neurons, layers and generic list as the rows."""
        return top_third_aggregates(context.neurons, context.lm.n_layers, context.baseline,
                                    relations={fact.id: fact.relation for fact in context.facts},
                                    generic=generic_list(context))

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        shares = {r["variant"]: r["value"] for r in rows if r["relation"] == "" and r["metric"] == "top_third"}
        return [(f"top third of the layers ({variant})",
                 figure(aggregates, variant, "top_third", study=self.name, percent=True, pooled=share))
                for variant, share in shares.items()]


@register_study
class Discrimination(PaperStudy):
    """Whether knowledge neurons' activation tells a fact's prompts from other facts' (ROC AUC), and stating
    sentences from subject-only ones."""

    name = "discrimination"
    title = "Discrimination"
    controls = {"kn": "baseline", "kn_no_generic": "baseline"}
    options = (GENERIC_SHARE,)

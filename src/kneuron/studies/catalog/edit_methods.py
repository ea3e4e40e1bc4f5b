"""``edit_methods``: KN editing (the paper's formula and with the activations' signs) against ROME on the same facts
with the same metrics (:mod:`kneuron.studies.edit_methods`), and Hase et al.'s check: does the tracing effect at
ROME's edit layer predict its success per fact?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from kneuron.errors import StudyError
from kneuron.facts.robustness import robustness_data
from kneuron.studies.base import FACTS_LIMIT, SEED, Option, Study, StudyContext, StudyOutput, number
from kneuron.studies.display import fit_table, stored_figure
from kneuron.studies.edit_methods import STUDY, edit_methods_study
from kneuron.studies.edit_methods_summary import (
    CONTROLS,
    comparison,
    control_heading,
    controls_of,
    localisation_correlations,
    methods_of,
    seconds_per_fact,
    stats_dependence,
)
from kneuron.studies.edit_robustness import coverage_notes, study_pool
from kneuron.studies.registry import register_study

#: what the comparison table's numbers are (the terminal's and the report's)
CAPTION = ("means over the edited facts [95% interval: bootstrap over facts; Wilson's for a share of facts], n facts, "
           "paired p against the control in the column's heading (same facts); ΔPPL = exp(mean log-PPL after) − "
           "exp(mean before), over edits (no interval)")


@register_study
class EditMethods(Study):
    """KN editing (paper's formula; signed) against ROME on the same facts and metrics: update success, held-out
    paraphrases, aliases, reverse relation, neighbourhood, other facts, ΔPPL; and whether causal tracing at ROME's
    layer predicts its success per fact (Hase et al.)."""

    name = "edit_methods"
    title = "Editing: knowledge neurons against ROME"
    group = "opt-in"  # ROME's optimisation and C, and a tracing row per fact: tens of seconds per fact on SmolLM2
    changes_weights = True
    options = (Option("layer", int, None, "ROME's MLP layer (default: a third of the depth, "
                      "as rome.default_layer says).", min=0),
               Option("stats_samples", int, 10_000, "Tokens of text sampled from the model for ROME's C.", min=1),
               Option("compare_samples", int, 1_000, "Also ROME with C from this many tokens (same key and δ; 0: "
                      "not).", min=0),
               Option("trace_samples", int, 10, "Noise draws of the tracing behind Hase et al.'s check (0: no "
                      "tracing).", min=0),
               Option("held_out", int, 2, "Templates held out per fact (KN: neurons refined again without them; "
                      "ROME: its rewrite prompt among the kept).", min=0),
               Option("n_neighbours", int, 10, "Other facts of the relation per edit (neighbourhood).", min=0,
                      flag="--neighbours"),
               Option("n_other", int, 5, "Collateral facts per edit, of the same relation and of others (ΔPPL).",
                      min=0, flag="--others"),
               SEED, FACTS_LIMIT)
    controls = CONTROLS

    def applies(self, context: StudyContext) -> str | None:
        masked = context.atlas.meta.get("kind") == "mlm"
        return "ROME edits causal models; this atlas's model is masked." if masked else None

    def run(self, context: StudyContext) -> StudyOutput:
        from kneuron.facts.known import encodable_facts
        from kneuron.interventions.rome import default_layer
        from kneuron.interventions.rome_stats import key_second_moment

        options, lm = context.options, context.lm
        limit = options.get("facts_limit")
        facts = context.facts[:limit] if limit else context.facts
        if not facts:
            raise StudyError("The atlas has no done facts to edit.")
        layer = default_layer(lm) if options["layer"] is None else options["layer"]
        lm.check_layer(layer)

        def moment(samples: int):
            return context.cached_for_command(f"rome-c:{layer}:{samples}:{options['seed']}", lambda: (
                key_second_moment(lm, layer, samples, seed=options["seed"])))

        context.say(f"ROME's C at layer {layer} from {options['stats_samples']} tokens of sampled text ...")
        stats = moment(options["stats_samples"])
        compare = [moment(options["compare_samples"])] if options["compare_samples"] else []
        pool, owners = study_pool(lm, facts)
        owners = encodable_facts(lm, owners)[0]  # the other relations' collateral facts come from them too
        data = robustness_data()
        notes = coverage_notes(facts, data, context.coarse)
        advance = context.progress("edit methods", len(facts))
        rows = edit_methods_study(lm, facts, context.neurons, layer=layer, stats=stats, compare_stats=compare,
                                  coarse_by_fact=context.coarse, share=context.atlas.params.get("share", "adaptive"),
                                  pool=pool, owners_from=owners, data=data, held_out=options["held_out"],
                                  n_neighbours=options["n_neighbours"], n_other=options["n_other"],
                                  trace_samples=options["trace_samples"], seed=options["seed"],
                                  on_fact=lambda _n, _fact: advance())
        return StudyOutput(rows, facts=[f.id for f in facts], notes=notes)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """The default aggregates, with each ``rome_c{n}`` variant's control (``rome``) added to :attr:`controls`
        (the variants' names depend on ``--compare-samples``)."""
        from kneuron.studies.intervals import aggregate_rows

        return aggregate_rows(output.rows, controls_of(output.rows))

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return [(f"top-1 = new ({m})", stored_figure(aggregates, rows, STUDY, m, "own_top1_new", signed=False))
                for m in methods_of(rows)]

    def summary(self, output: StudyOutput, context: StudyContext) -> list[Any]:
        return methods_tables(output.rows, context.run_path, output.aggregates, context.width)

    def result_tables(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[dict[str, Any]]:
        """The comparison table as the terminal shows it (a column per method), for the findings JSON."""
        params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
        methods = methods_of(rows)
        return [{"title": f"KN against ROME (layer {int(params.get('layer', -1))}, C from "
                          f"{int(params.get('stats_samples', 0))} sampled tokens): {CAPTION}",
                 "columns": ["measure", *(control_heading(m, rows) for m in methods)],
                 "rows": [[label, *(cells[m] for m in methods)] for label, cells in comparison(rows, aggregates)]}]


def methods_tables(rows: Sequence[dict], run: object, aggregates: Sequence[dict] = (), width: int | None = None,
                   ) -> list[Table | Text]:
    """The comparison table (a column per method, each mean with its stored interval, n and paired p against the
    control its heading names; one figure per line on a terminal narrower than the table, ``width``), then Hase et
    al.'s check, C's dependence and the cost."""
    params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    methods = methods_of(rows)
    lines = [[label, *(cells[m] for m in methods)] for label, cells in comparison(rows, aggregates)]
    table = fit_table(f"KN against ROME (layer {int(params.get('layer', -1))}, C from "
                      f"{int(params.get('stats_samples', 0))} sampled tokens), stored in {run}",
                      ["measure", *(control_heading(m, rows) for m in methods)], lines, width, caption=CAPTION)
    parts: list[Table | Text] = [table]
    for effect, label, rho, p, n in localisation_correlations(rows):
        parts.append(Text(f"Hase check: tracing effect ({effect.replace('_', ' ')}) vs ROME's {label}: Spearman ρ "
                          f"{number(rho, '+.2f')} (p {number(p, '.2g')}, {n} facts)", style="dim"))
    for variant, change, cosine in stats_dependence(rows, aggregates):
        parts.append(Text(f"{variant}: ‖ΔW − ΔW(main C)‖ / ‖ΔW(main C)‖ {change}; cosine of the update directions "
                          f"{cosine} (means over facts)", style="dim"))
    total, rome = seconds_per_fact(rows, aggregates)
    parts.append(Text(f"seconds per fact: {total}; of which ROME's key and δ: {rome}; on "
                      f"{int(params.get('threads', 0))} thread(s)", style="dim"))
    return parts

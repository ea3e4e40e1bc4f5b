"""``estimators``: cheaper attribution estimators against the atlas's exact integrated gradients
(:mod:`kneuron.studies.estimator_agreement`): rank correlation, top-10 recall, refined neurons, suppression of the
fact and of other relations' facts, generic neurons, seconds per prompt. It recomputes attributions, so it is
opt-in; it needs an atlas computed with exact IG (full or sparse scores)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from kneuron.errors import KneuronError, StudyError
from kneuron.studies.base import FACTS_LIMIT, SEED, Option, Study, StudyContext, StudyOutput
from kneuron.studies.base import number as _num
from kneuron.studies.estimator_agreement import (
    RESERVED,
    agreement_summary,
    default_estimators,
    estimator_agreement,
    estimator_for,
    estimator_label,
    exact_ig_refusal,
)
from kneuron.studies.intervals import aggregate_rows, find, format_interval
from kneuron.studies.registry import register_study


class PerFact(Mapping):
    """A read-only mapping ``fact id -> read(fact id)`` that reads each value when asked (one fact's score
    matrices in memory at a time)."""

    def __init__(self, ids: Sequence[str], read: Callable[[str], Any]) -> None:
        self._ids, self._read = list(ids), read

    def __getitem__(self, fact_id: str) -> Any:
        if fact_id not in self._ids:
            raise KeyError(fact_id)
        return self._read(fact_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def parse_estimators(value: str | None) -> list[str]:
    """The comma-separated estimator names, or the default ones (order kept, repeats dropped)."""
    names = [name.strip() for name in value.split(",") if name.strip()] if value else default_estimators()
    if not names:
        raise StudyError("--estimators names none: give e.g. --estimators gxa,ig-gauss5.")
    return list(dict.fromkeys(names))


def agreement_cells(name: str, entry: Mapping[str, Any], cell: Callable[[str, str, float, str], str]) -> list[str]:
    """An estimator's agreement cells after its rank correlation, as the terminal and the report show them:
    top-10 recall, refined Jaccard, the three suppressions (``cell(estimator, metric, value, spec)`` formats each
    with its stored interval), seconds per prompt and the speed-up."""
    return [cell(name, "top_recall", entry["top_recall"], ".2f"),
            cell(name, "refined_jaccard", entry["refined_jaccard"], ".2f"),
            cell(name, "suppress", entry["suppress"], "+.2%"),
            cell(name, "suppress_ig", entry["suppress_ig"], "+.2%"),
            cell(name, "suppress_random", entry["suppress_random"], "+.2%"),
            _num(entry["seconds_per_prompt"], ".3f"), _num(entry["speedup"], ".1f")]


@register_study
class Estimators(Study):
    """Cheaper attribution estimators against the atlas's exact integrated gradients: rank correlation, top-10
    recall, refined neurons, suppression of the fact and of other relations' facts, generic neurons, seconds per
    prompt.

    Control: each estimator's per-fact measures are paired with exact IG's on the same facts (variant ``ig``);
    IG's own suppression is paired with suppressing as many random neurons of the same layers on the same fact
    (metric ``suppress`` vs ``suppress_random``). Agreement measures (rank correlation, recall, Jaccard) are
    against IG itself and have no paired chance level."""

    name = "estimators"
    title = "Estimators against exact integrated gradients"
    metric_controls = {"suppress": "suppress_random"}
    options = (Option("estimators", str, None, "The estimators to compare with IG, comma-separated: registered names "
                      "(gxa, ...), ig-gaussN (N-point Gauss–Legendre IG) or ig (exact IG measured again). Default: "
                      "every registered one but ig, and ig-gauss5.", stored=False),
               Option("other_facts", int, 5, "Facts of other relations (one prompt each) on which suppressing a "
                      "fact's neurons is also measured (suppress_other), as in the suppress / amplify study.", min=0),
               FACTS_LIMIT, SEED)

    def applies(self, context: StudyContext) -> str | None:
        why = exact_ig_refusal(context.atlas.params)
        return (f"{context.run_path} cannot be the reference of the estimator study: {why}. Make one with exact "
                "integrated gradients (`kneuron run --out runs/IG.sqlite`, the default)." if why else None)

    def run(self, context: StudyContext) -> StudyOutput:
        atlas, params = context.atlas, context.atlas.params
        names = parse_estimators(context.options.get("estimators"))
        chosen = {estimator_label(name): estimator_for(name, params) for name in names}
        limit = context.options.get("facts_limit")
        facts = context.facts[:limit] if limit else context.facts
        ids = [fact.id for fact in facts]
        sparse = params.get("keep_scores", "full") == "sparse"
        refined = atlas.all_refined()
        seconds = {row["id"]: row["compute_seconds"] for row in atlas.fact_rows("done")}

        def skipped(label: str, exc: KneuronError) -> None:
            context.note(f"skipped {label}: {exc}")

        advance = context.progress("estimators", len(facts))
        rows = estimator_agreement(
            context.lm, facts, PerFact(ids, atlas.prompt_scores), {i: refined.get(i, []) for i in ids}, chosen,
            threshold=float(params.get("threshold", 0.2)), share=params.get("share", "adaptive"),
            kept=PerFact(ids, lambda i: atlas.prompt_sparse(i)[0][0]) if sparse else None,
            ig_seconds={i: seconds[i] for i in ids if seconds.get(i) is not None}, seed=context.options["seed"],
            other_facts=context.options["other_facts"],
            generic_share=float(atlas.meta.get("generic", {}).get("share", 0.1)), on_fact=lambda _fact: advance(),
            on_skip=skipped)
        return StudyOutput(rows, facts=ids)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """Every per-fact measure, overall and per relation; each estimator's paired with exact IG's (variant
        ``ig``) where IG has the measure (suppression, refined neurons, specificity, seconds)."""
        return aggregate_rows(output.rows, estimator_controls(output.rows), metric_controls=self.metric_controls)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        n = len(output.facts or [])
        return [agreement_table(output.rows, f"Estimators against exact IG on {n} facts, stored in {context.run_path}",
                                output.aggregates, context.width),
                specificity_table(output.rows, output.aggregates, "Specificity: own fact against other relations")]


def estimator_controls(rows: Sequence[dict]) -> dict[str, str]:
    """Each compared estimator's control: exact IG from the atlas (variant ``ig``)."""
    return {r["variant"]: "ig" for r in rows if r["variant"] not in RESERVED}


def specificity_table(rows: Sequence[dict], aggregates: Sequence[dict], title: str) -> Table:
    """Per estimator (and IG): refined neurons per fact, identical sets and Jaccard against IG, suppression of the
    fact's own prompts and of other relations' facts (with their stored intervals), and the generic neurons."""
    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False, caption_justify="left",
                  caption="suppress own / other: mean Δp/p of the fact's prompts / of other relations' facts with the "
                          "estimator's refined neurons set to 0 [95% bootstrap interval over facts], p: paired test "
                          "against IG on the same facts; generic: refined for more than the atlas's generic share "
                          "of the facts (the generic study's definition), under each estimator's own sets.")
    for column in ("estimator", "neurons / fact", "identical to IG", "Jaccard", "suppress own", "suppress other",
                   "generic share", "generic", "most shared in"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for entry in agreement_summary(rows):
        label = str(entry["estimator"])
        own, other = (format_interval(find(aggregates, label, metric), percent=True)
                      for metric in ("suppress", "suppress_other"))
        same = ("–" if label == "ig" else f"{entry['identical_facts']:.0f} of {entry['facts']}")
        table.add_row("ig (atlas)" if label == "ig" else label, _num(entry["neurons"], ".1f"), same,
                      "–" if label == "ig" else _num(entry["refined_jaccard"], ".2f"),
                      own if own != "–" else _num(entry["suppress"], "+.1%"),
                      other if other != "–" else _num(entry["suppress_other"], "+.1%"),
                      _num(entry["generic_fraction"], ".0%"), _num(entry["generic_neurons"], ".0f"),
                      _num(entry["most_shared"], ".0%"))
    return table



def agreement_table(rows: Sequence[dict], title: str, aggregates: Sequence[dict] = (),
                    width: int | None = None) -> Table:
    """The study's summary (:func:`~kneuron.studies.estimator_agreement.agreement_summary`) as a rich table: each
    mean over facts with its stored 95% interval, n and paired p against IG where one was stored (the bare mean
    otherwise); one figure per line on a terminal too narrow for it (``width``)."""
    from kneuron.studies.display import fit_table

    def cell(estimator: str, metric: str, value: object, spec: str) -> str:
        stored = find(aggregates, estimator, metric)
        if not stored.n:
            return _num(value, spec)
        return format_interval(stored, percent=spec.endswith("%"), digits=2 if spec.endswith("%") else 3)

    lines = []
    for entry in agreement_summary(rows):
        name = str(entry["estimator"])
        if name == "ig":
            lines.append(["ig (atlas)", str(entry["facts"]), "", "", "", "",
                          cell("ig", "suppress", entry["suppress"], "+.2%"),
                          cell("ig", "suppress_random", entry["suppress_random"], "+.2%"),
                          _num(entry["seconds_per_prompt"], ".3f"), "1"])
            continue
        over = "" if entry["spearman_over"] == "all" else f" ({entry['spearman_neurons']:.0f} kept)"
        spearman = "spearman" if entry["spearman_over"] == "all" else "spearman_kept"
        lines.append([name, str(entry["facts"]), cell(name, spearman, entry["spearman"], ".3f") + over,
                      *agreement_cells(name, entry, cell)])
    return fit_table(title, ["estimator", "facts", "spearman", "top-10 recall", "refined Jaccard", "suppress est",
                             "suppress IG", "suppress random", "s/prompt", "x faster"], lines, width,
                     caption="Spearman per prompt over all neurons, or over the neurons a sparse atlas keeps; "
                             "suppress: mean Δp/p of the fact's prompts with the estimator's refined neurons, IG's, "
                             "or as many random ones of the same layers set to 0 [95% bootstrap interval over facts, "
                             "n, paired p as stored]. s/prompt of ig (atlas): measured when the atlas was made "
                             "(compute_seconds / prompts); the others measured now.")

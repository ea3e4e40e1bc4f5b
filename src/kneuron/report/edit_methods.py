"""The report's section of the ``edit_methods`` study (:mod:`kneuron.studies.edit_methods`): KN editing against ROME
on the same facts, one column per method, then Hase et al.'s check, how much ROME's edit depends on the text behind
its C, and what it cost."""

from __future__ import annotations

from collections.abc import Sequence

from kneuron.report.parts import escape as _e
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.report.sections import report_section
from kneuron.studies.catalog.edit_methods import CAPTION, EditMethods
from kneuron.studies.edit_methods import STUDY
from kneuron.studies.edit_methods_summary import (
    comparison,
    control_heading,
    localisation_correlations,
    methods_of,
    seconds_per_fact,
    stats_dependence,
)

NOTE = ("Each fact is edited to the same new answer by the paper's KN update (kn: value slots += −1·e(old) + "
        "8·e(new)), the same with each neuron's activation sign (kn_signed) and ROME (Meng et al. 2022: a rank-one "
        "update of one MLP layer's output projection; its key is the FFN activation at the subject's last token, "
        "averaged over 10 model-sampled prefixes; its value optimised for the new answer with ROME's KL term on "
        "'{subject} is a'; C from text sampled from the model). Every metric is the edit-robustness and editing "
        "studies' own. Hase et al. (NeurIPS 2023) found that where tracing puts a fact does not predict where ROME "
        "edits it best; the correlations below ask the same per fact at the one edit layer.")


def edit_methods_section(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; empty without rows (an opt-in study). ``aggregates``: the study's stored
    ones, whose intervals, n and paired p (against the control each column's heading names) the table shows."""
    rows = list(rows)
    if not rows:
        return ""
    params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    methods = methods_of(rows)
    parts = [f'<h2 id="study-{STUDY}">{_e(EditMethods.title)}</h2>',
             f'<p class="note">{_e(NOTE)} Here: ROME at layer {int(params.get("layer", -1))}, C from '
             f'{int(params.get("stats_samples", 0))} tokens.</p>']
    lines = [[_e(label), *(_e(cells[m]) for m in methods)] for label, cells in comparison(rows, aggregates)]
    parts.append(_table(["measure", *(control_heading(m, rows) for m in methods)], lines))
    parts.append(f'<p class="note">{_e(CAPTION[0].upper() + CAPTION[1:])}.</p>')
    hase = [[_e(effect.replace("_", " ")), _e(label), _num(rho, "+.2f"), _num(p, ".2g"), str(n)]
            for effect, label, rho, p, n in localisation_correlations(rows)]
    parts.append(_table(["tracing effect at the edit layer", "ROME's success", "Spearman ρ", "p", "facts"], hase,
                        left=2))
    for variant, change, cosine in stats_dependence(rows, aggregates):
        parts.append(f'<p class="note">{_e(variant)}: ‖ΔW − ΔW(main C)‖ / ‖ΔW(main C)‖ {_e(change)}; cosine of the '
                     f"update directions {_e(cosine)} (means over facts).</p>")
    total, rome = seconds_per_fact(rows, aggregates)
    parts.append(f'<p class="note">Seconds per fact: {_e(total)}; of which ROME\'s key and value: {_e(rome)}; on '
                 f'{int(params.get("threads", 0))} thread(s).</p>')
    return "".join(parts)


@report_section(STUDY)
def _section(data) -> str:
    return edit_methods_section(data.rows(STUDY), data.aggregates.get(STUDY, ()))

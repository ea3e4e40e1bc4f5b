"""The report's section of the ``edit_methods`` study (:mod:`kneuron.studies.edit_methods`): KN editing against ROME
on the same facts, one column per method, then Hase et al.'s check, how much ROME's edit depends on the text behind
its C, and what it cost."""

from __future__ import annotations

from collections.abc import Sequence

from kneuron.report.parts import escape as _e
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.report.sections import report_section
from kneuron.studies.catalog.edit_methods import EditMethods, cell, spec_of
from kneuron.studies.edit_methods import STUDY
from kneuron.studies.edit_methods_summary import (
    comparison,
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


def edit_methods_section(rows: Sequence[dict]) -> str:
    """The section as an HTML fragment; empty without rows (an opt-in study)."""
    rows = list(rows)
    if not rows:
        return ""
    params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    methods = methods_of(rows)
    parts = [f'<h2 id="study-{STUDY}">{_e(EditMethods.title)}</h2>',
             f'<p class="note">{_e(NOTE)} Here: ROME at layer {int(params.get("layer", -1))}, C from '
             f'{int(params.get("stats_samples", 0))} tokens.</p>']
    lines = [[_e(label), *(_e(cell(*cells[m], spec=spec_of(label))) for m in methods)]
             for label, cells in comparison(rows)]
    parts.append(_table(["measure", *methods], lines))
    parts.append('<p class="note">Means over the edited facts with a bootstrap 95% interval; ΔPPL is the paper\'s: '
                 "exp(mean log-PPL after) − exp(mean log-PPL before) over the edits.</p>")
    hase = [[_e(effect.replace("_", " ")), _e(label), _num(rho, "+.2f"), _num(p, ".2g"), str(n)]
            for effect, label, rho, p, n in localisation_correlations(rows)]
    parts.append(_table(["tracing effect at the edit layer", "ROME's success", "Spearman ρ", "p", "facts"], hase,
                        left=2))
    for variant, change, cosine, n in stats_dependence(rows):
        parts.append(f'<p class="note">{_e(variant)}: ‖ΔW − ΔW(main C)‖ / ‖ΔW(main C)‖ {_num(change, ".3f")}, cosine '
                     f"of the update directions {_num(cosine, '.4f')} (mean over {n} facts).</p>")
    total, rome = seconds_per_fact(rows)
    parts.append(f'<p class="note">{_num(total, ".1f")} s per fact, of which ROME\'s key and value '
                 f'{_num(rome, ".1f")} s, on {int(params.get("threads", 0))} thread(s).</p>')
    return "".join(parts)


@report_section(STUDY)
def _section(data) -> str:
    return edit_methods_section(data.rows(STUDY))

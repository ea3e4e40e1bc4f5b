"""The report's edit robustness section, placed right after the editing section's update table: the update through
knowledge neurons under Niu et al.'s tests (:mod:`kneuron.studies.edit_robustness`), from the
``edit_robustness`` study's rows.

Include it with ``edit_robustness_section(data.rows("edit_robustness"), data.aggregates.get("edit_robustness",
()))`` (an HTML fragment, the report's CSS
classes ``note`` and ``l``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kneuron.report.editing import LABELS
from kneuron.report.parts import escape as _e
from kneuron.report.parts import table as _table
from kneuron.studies.edit_robustness_summary import (
    SET_MEASURES,
    detail_figures,
    robustness_summary,
    robustness_variants,
    set_figures,
)

#: Niu et al.'s finding as PAPER.md states it
PAPER_NIU = ("Niu et al. (ICLR 2024): edits should hold under bijective symmetry (the reversed relation) and "
             "synonyms; KN edits shift probabilities more than they change top-1 predictions (at most 5.2% of BLiMP "
             "predictions overturned)")


def edit_robustness_section(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; empty when there are no rows (the study is optional). ``aggregates``: the
    study's stored ones, whose interval and n each mean over facts shows (the bare mean with its n on an atlas
    studied before they were stored)."""
    rows = list(rows)
    if not rows:
        return ""
    parts = ["<h3>Edits under Niu et al.'s tests</h3>"]
    for variant in robustness_variants(rows):
        s = robustness_summary(rows, variant)
        parts.append(f"<p><b>{_e(LABELS.get(variant, variant))}</b>: {s['edited']:.0f} of {s['facts']:.0f} facts "
                     "updated.</p>")
        parts.append(_table(["prompt set", *(column for column, *_ in SET_MEASURES)],
                            [[_e(cell) for cell in line] for line in set_figures(rows, variant, aggregates)]))
        details = detail_figures(rows, variant, aggregates)
        if details:
            parts.append(_table(["measure", "mean [95% interval], n"], [[_e(a), _e(b)] for a, b in details]))
    parts.append(
        '<p class="note">Each fact is updated as above (t\' another answer of its relation; for one-to-one relations '
        "one of the relation's one-to-one answers) and measured on: its own prompts; its subject's aliases in the "
        "same templates (\"the French Republic\", \"the UK\"); paraphrases held out when its neurons were refined "
        "again from the kept prompts' stored coarse sets (no attribution rerun), beside the kept prompts and the "
        "ordinary update on the same held-out prompts; the reverse query of the new answer (\"Rome is the capital "
        "of\" → the edited subject; P(new) &gt; P(old) there is P(subject) &gt; P(the new answer's own subject)) and "
        "the old reverse fact (\"Paris is the capital of\" → France), for the one-to-one relations (capital, "
        "chemical symbol, currencies of one country); CounterFact's neighbourhood score on up to 10 other subjects "
        "of the relation (their own answer beats t' by mean log-probability per token; CounterFact's neighbours "
        "share the true object, ours only the relation). <b>P(new) rose</b> vs <b>top-1 became new</b>: the "
        f"share of prompts where the probability of the new answer's first token rose, and where that token became the "
        "top-1 (a multi-token answer's joint probability can fall meanwhile: the edit pushes every position towards "
        "the first token). <i>kept</i> / <i>held-out paraphrases</i> are updated through the neurons of the kept "
        "prompts; <i>held-out, all-prompt neurons</i> is the ordinary update on the held-out prompts. "
        "Every figure is a mean over facts with its 95% interval (bootstrap over facts; Wilson's for a share of "
        "facts) and n, as the study stored them; the study has no control (the random-neuron edit is the editing "
        f"study's). {_e(PAPER_NIU)}.</p>")
    return "".join(parts)

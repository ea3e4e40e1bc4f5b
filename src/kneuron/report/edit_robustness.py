"""The report's edit robustness section, placed right after the editing section's update table: the update through
knowledge neurons under Niu et al.'s tests (:mod:`kneuron.studies.edit_robustness`), from the
``edit_robustness`` study's rows.

Include it with ``edit_robustness_section(data.rows("edit_robustness"))`` (an HTML fragment, the report's CSS
classes ``note`` and ``l``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kneuron.report.editing import LABELS
from kneuron.report.parts import escape as _e
from kneuron.report.parts import number
from kneuron.report.parts import table as _table
from kneuron.studies.edit_robustness_summary import percent as _pct
from kneuron.studies.edit_robustness_summary import robustness_summary, robustness_variants, summary_table

#: Niu et al.'s finding as PAPER.md states it
PAPER_NIU = ("Niu et al. (ICLR 2024): edits should hold under bijective symmetry (the reversed relation) and "
             "synonyms; KN edits shift probabilities more than they change top-1 predictions (at most 5.2% of BLiMP "
             "predictions overturned)")


def _num(value: float | None) -> str:
    return number(value, ".3g")


def edit_robustness_section(rows: Sequence[dict]) -> str:
    """The section as an HTML fragment; empty when there are no rows (the study is optional)."""
    rows = list(rows)
    if not rows:
        return ""
    parts = ["<h3>Edits under Niu et al.'s tests</h3>"]
    for variant in robustness_variants(rows):
        s = robustness_summary(rows, variant)
        table = [[_e(label), f"{count:.0f}", _pct(beats), _pct(top1), _pct(rose), _pct(became)]
                 for label, count, beats, top1, rose, became in summary_table(rows, variant)]
        parts.append(f"<p><b>{_e(LABELS.get(variant, variant))}</b>: {s['edited']:.0f} of {s['facts']:.0f} facts "
                     "updated.</p>")
        parts.append(_table(["prompt set", "facts", "P(new) > P(old)", "top-1 = new", "P(new) rose",
                             "top-1 became new"], table))
        facts = [("old reverse fact: top-1 right before → after (kept)",
                  f"{_pct(s.get('reverse_old_top1_before'))} → {_pct(s.get('reverse_old_top1_after'))} "
                  f"({_pct(s.get('reverse_old_kept'))})", s.get("reverse_old_top1_before_facts")),
                 ("reverse of the new answer: P(subject) before → after",
                  f"{_num(s.get('reverse_new_p_before'))} → {_num(s.get('reverse_new_p_after'))}",
                  s.get("reverse_new_p_before_facts")),
                 ("neighbourhood score (own answer beats t') before → after",
                  f"{_pct(s.get('neighborhood_before'))} → {_pct(s.get('neighborhood'))}",
                  s.get("neighborhood_facts")),
                 ("refined set recomputed from the coarse sets = the atlas's", _pct(s.get("refined_equal")),
                  s.get("refined_equal_facts")),
                 ("kept-prompt neurons vs all-prompt neurons (Jaccard)", _num(s.get("heldout_jaccard")),
                  s.get("heldout_jaccard_facts"))]
        parts.append(_table(["measure", "value", "facts"], [[_e(a), b, f"{c:.0f}"] for a, b, c in facts if c]))
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
        f"{_e(PAPER_NIU)}.</p>")
    return "".join(parts)

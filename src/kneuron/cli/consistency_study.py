"""The consistency line of ``kneuron atlas --fact`` (the study, ``kneuron study consistency``, is
:mod:`kneuron.studies.catalog.consistency`)."""

from __future__ import annotations

import math

from rich.text import Text


def _num(value: float, spec: str) -> str:
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def fact_consistency_line(atlas, fact_id: str) -> Text:
    """For ``kneuron atlas --fact``: the fact's consistency line from the stored study, or a hint to run it."""
    from kneuron.studies.consistency import STUDY, fact_values, summary_values

    rows = atlas.results(STUDY)
    hint = f"`kneuron study consistency --run {atlas.path}`"
    if not rows:
        return Text(f"consistency: not computed yet ({hint})", style="dim")
    values = fact_values(rows).get(fact_id)
    if values is None:
        return Text(f"consistency: this fact was not done when the study ran; run {hint} again", style="dim")
    otsu = summary_values(rows, "otsu")
    flag = values.get("consistent", math.nan)
    verdict = ("consistent" if flag == 1.0 else "inconsistent" if flag == 0.0 else "not classed")
    where = (f"Otsu threshold {otsu['threshold']:.2f} over {otsu.get('facts', 0):.0f} facts"
             if math.isfinite(otsu.get("threshold", math.nan)) else "no Otsu split")
    return Text(f"consistency: Jaccard {_num(values.get('jaccard', math.nan), '.2f')}, rank corr "
                f"{_num(values.get('rank_correlation', math.nan), '.2f')}, {verdict} ({where})",
                style="bold" if flag == 0.0 else "")

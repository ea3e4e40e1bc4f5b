"""``Atlas._repr_html_``: a summary whose counts are the atlas's own (facts per status, neurons, layers), escaped,
and one line instead of a traceback for an atlas that cannot be read."""

from __future__ import annotations

import re
from collections import Counter

from kneuron.store import Atlas, run
from kneuron.studies.intervals import bootstrap_interval
from store.helpers import tiny_facts, tiny_model


def test_atlas_html_counts_are_the_atlas(tmp_path):
    path = tmp_path / "a.sqlite"
    run(tiny_model(), tiny_facts()[:4], path, steps=2, known_only=False, progress=False, share=0.3)
    with Atlas.open(path, read_only=True) as atlas:
        text = atlas._repr_html_()
        done = len(atlas.facts())
        refined = atlas.all_refined()
        layers = Counter(n.layer for neurons in refined.values() for n in neurons)
        total = sum(layers.values())
    assert f"<td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right;\"><b>{done}</b></td>" in text
    assert f"<b>{total}</b> knowledge neurons over {done} done facts" in text
    counts = [len(refined[fact_id]) for fact_id in refined]
    lo, hi = bootstrap_interval(counts)
    assert f"(per fact: {sum(counts) / len(counts):.3f} [{lo:.3f}, {hi:.3f}], n = {done})".replace("-", "−") in text
    with Atlas.open(path, read_only=True) as atlas:
        best, facts = atlas.top_neurons(1)[0]
    scores = [n.score for neurons in refined.values() for n in neurons if n.key == best.key]
    lo, hi = bootstrap_interval(scores)
    assert f"{best.score:.4g} [{lo:.4g}, {hi:.4g}], n = {facts}".replace("-", "−") in text
    shown = dict(re.findall(r">L(\d+)</td><td[^>]*>(\d+)</td>", text))
    assert {int(k): int(v) for k, v in shown.items()} == dict(layers)
    assert "<script" not in text and "capital" in text
    closed = Atlas.open(path, read_only=True)
    closed.close()
    assert "cannot read the atlas" in closed._repr_html_()

"""``Edit._repr_html_``: what the edit changes (its slots per layer, each vector's norm, the op and the model),
with its user strings escaped; making the display reads no model and changes nothing."""

from __future__ import annotations

import re

import torch

from html_cells import Cells
from kneuron.interventions import update_fact
from tiny_models import tiny_lm

MARKUP = '<img src=x onerror="alert(1)">&'


def test_edit_html_says_what_it_changes():
    torch.set_num_threads(1)
    lm = tiny_lm("llama", dtype=torch.float64)
    edit = update_fact(lm, [(0, 3), (1, 5), (1, 7)], "Paris", "Rome")
    edit.label = f"{MARKUP} -> Rome"
    edit.meta["note"] = MARKUP
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    text = edit._repr_html_()
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    parsed = Cells(text)
    layers = {row[0]: row[1:] for row in parsed.rows if row and re.fullmatch(r"L\d+", row[0])}
    assert sorted(layers) == [f"L{g.layer}" for g in edit.groups]
    for g in edit.groups:
        module, layout, slots, norms = layers[f"L{g.layer}"]
        assert module == g.module and layout == g.layout
        assert slots == ", ".join(f"N{i}" for i in g.indices)
        assert [float(v) for v in norms.split(", ")] == [float(f"{float(v.norm()):.3g}") for v in g.values]
    assert f"<b>{len(edit)}</b> value slots in {len(edit.groups)} layers" in text
    assert "op add: adds a delta to each value slot" in text and lm.name in text
    assert "img" not in parsed.tags and MARKUP not in text and "&lt;img src=x" in text

"""The rich display of an :class:`~kneuron.interventions.edits.Edit` in Jupyter (``Edit._repr_html_``): what it
changes, built from the pieces of :mod:`kneuron.display`.

It shows the edit's kind and label, whether it adds deltas to the value slots or sets them, the model it was made
for, one row per touched layer (the module, its slots and each vector's norm), what shared layers change beyond
the named neurons, and, folded, the edit's meta. It reads only the edit's own data (no model, no weights).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kneuron.display import box, details, escape, line, number, table

if TYPE_CHECKING:
    from kneuron.interventions.edits import Edit


def edit_html(edit: Edit, notes: list[str]) -> str:
    """The HTML display of ``edit``; ``notes`` are its shared-layer notes (:func:`~.edits.shared_notes`)."""
    model = edit.model
    what = "adds a delta to each value slot" if edit.op == "add" else "sets each value slot to a new value"
    digest = str(model.get("weights", ""))[:12]
    parts = [line(f"<b>{len(edit)}</b> value slot{'s' if len(edit) != 1 else ''} in {len(edit.groups)} "
                  f"layer{'s' if len(edit.groups) != 1 else ''}", f"op {escape(edit.op)}: {what}"),
             line(f"made for {escape(model.get('name', '?'))} ({escape(model.get('family', '?'))}, "
                  f"{escape(model.get('layers', '?'))} layers × {escape(model.get('neurons', '?'))} neurons)",
                  f"weights {escape(digest)}…" if digest else "")]
    rows = []
    for g in edit.groups:
        norms = g.values.detach().to("cpu").double().norm(dim=1).tolist()
        rows.append([f"L{g.layer}", f"<code>{escape(g.module)}</code>", escape(g.layout),
                     ", ".join(f"N{i}" for i in g.indices), ", ".join(number(v, ".3g") for v in norms)])
    parts.append(table(["layer", "module", "layout", "slots", "|vector|"], rows, left=4))
    parts.extend(line(escape(note)) for note in notes)
    if edit.meta:
        meta = [[escape(key), escape(json.dumps(value, default=str) if not isinstance(value, str) else value)]
                for key, value in edit.meta.items()]
        parts.append(details(f"meta ({len(meta)})", table(["key", "value"], meta, left=2)))
    return box(f"Edit: {edit.kind} {edit.label}".strip(), *parts)

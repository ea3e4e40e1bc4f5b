"""The rich display of an :class:`~kneuron.interventions.edits.Edit` in Jupyter (``Edit._repr_html_``): what it
changes, built from the pieces of :mod:`kneuron.display`.

It shows the edit's kind and label, whether it adds deltas to the value slots or sets them, the model it was made
for, one row per touched layer (the module, its slots and each vector's norm), what shared layers change beyond
the named neurons, and, folded, the edit's meta. It reads only the edit's own data (no model, no weights).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kneuron.display import box, details, escape, line, number, table
from kneuron.interventions.slots import SlotGroup


def edit_html(*, kind: str, label: str, op: str, model: Mapping[str, Any], groups: Sequence[SlotGroup],
              meta: Mapping[str, Any], notes: Sequence[str]) -> str:
    """The HTML display of an edit from its data (``Edit._repr_html_`` passes its own fields; this module does not
    import :mod:`~kneuron.interventions.edits`); ``notes`` are its shared-layer notes (:func:`~.edits.shared_notes`).
    """
    slots = sum(len(g.indices) for g in groups)
    what = "adds a delta to each value slot" if op == "add" else "sets each value slot to a new value"
    digest = str(model.get("weights", ""))[:12]
    parts = [line(f"<b>{slots}</b> value slot{'s' if slots != 1 else ''} in {len(groups)} "
                  f"layer{'s' if len(groups) != 1 else ''}", f"op {escape(op)}: {what}"),
             line(f"made for {escape(model.get('name', '?'))} ({escape(model.get('family', '?'))}, "
                  f"{escape(model.get('layers', '?'))} layers × {escape(model.get('neurons', '?'))} neurons)",
                  f"weights {escape(digest)}…" if digest else "")]
    rows = []
    for g in groups:
        norms = g.values.detach().to("cpu").double().norm(dim=1).tolist()
        rows.append([f"L{g.layer}", f"<code>{escape(g.module)}</code>", escape(g.layout),
                     ", ".join(f"N{i}" for i in g.indices), ", ".join(number(v, ".3g") for v in norms)])
    parts.append(table(["layer", "module", "layout", "slots", "|vector|"], rows, left=4))
    parts.extend(line(escape(note)) for note in notes)
    if meta:
        shown = [[escape(key), escape(json.dumps(value, default=str) if not isinstance(value, str) else value)]
                 for key, value in meta.items()]
        parts.append(details(f"meta ({len(shown)})", table(["key", "value"], shown, left=2)))
    return box(f"Edit: {kind} {label}".strip(), *parts)

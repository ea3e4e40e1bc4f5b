"""The rich display of an :class:`~kneuron.store.atlas.Atlas` in Jupyter (``Atlas._repr_html_``): a summary,
built from the pieces of :mod:`kneuron.display`.

It shows the model and the estimator, the facts per relation and status, the knowledge neurons per layer, the
neurons shared by the most facts, the generic neurons' count and the studies stored: a handful of aggregate
queries in one snapshot (no model, no score blobs), so it stays cheap on a big atlas. An atlas that cannot be read
(closed, locked, damaged) shows one line saying why instead of raising.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from kneuron.display import box, escape, line, table, warning
from kneuron.errors import KneuronError

if TYPE_CHECKING:
    from kneuron.store.atlas import Atlas

#: how many of the most shared neurons the summary lists
TOP = 5
STATUS_COLUMNS = ("done", "pending", "dropped", "invalid")


def atlas_html(atlas: Atlas) -> str:
    """The HTML display of ``atlas``."""
    title = f"Atlas {atlas.path}"
    try:
        with atlas.snapshot():
            meta = atlas.meta
            statuses = atlas.status_counts()
            layers = atlas.layer_counts()
            top = atlas.top_neurons(TOP)
            generic = len(atlas.generic_neurons())
            studies = atlas.studies()
    except (KneuronError, sqlite3.Error) as exc:
        return box(title, warning(f"cannot read the atlas: {str(exc).splitlines()[0] if str(exc) else exc!r}"))
    params = meta.get("params", {}) or {}
    estimator = params.get("estimator", "ig")
    how = f"estimator {escape(estimator)}" + (f", {escape(params['steps'])} steps" if estimator == "ig"
                                               and "steps" in params else "")
    model = [escape(meta.get(key, "?")) for key in ("model", "family", "kind", "n_layers", "n_neurons")]
    parts = [line(f"{model[0]} ({model[1]}, {model[2]}, {model[3]} layers × {model[4]} neurons)", how,
                  f"kneuron {escape(meta.get('kneuron_version', '?'))}")]
    totals = dict.fromkeys(STATUS_COLUMNS, 0)
    rows = []
    for relation, counts in statuses.items():
        for status in STATUS_COLUMNS:
            totals[status] += counts.get(status, 0)
        rows.append([escape(relation)] + [str(counts.get(status, 0)) for status in STATUS_COLUMNS])
    rows.append(["<b>all</b>"] + [f"<b>{totals[status]}</b>" for status in STATUS_COLUMNS])
    parts.append(table(["relation", *STATUS_COLUMNS], rows))
    neurons = sum(layers.values())
    per_fact = f"{neurons / totals['done']:.1f}" if totals["done"] else "–"
    parts.append(line(f"<b>{neurons}</b> knowledge neurons over {totals['done']} done facts ({per_fact} per fact)",
                      f"{generic} generic neurons", "studies stored: " + (", ".join(map(escape, studies)) or "none")))
    if neurons:
        parts.append(table(["layer", "neurons", "share"],
                           [[f"L{layer}", str(n), f"{n / neurons:.0%}"] for layer, n in layers.items() if n]))
        parts.append(table(["neuron", "facts", "mean score"],
                           [[escape(n), str(facts), f"{n.score:.4g}"] for n, facts in top]))
    return box(title, *parts)

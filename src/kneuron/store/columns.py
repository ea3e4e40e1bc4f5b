"""What each column of an atlas may hold, and the check that every row kneuron reads holds it.

SQLite keeps a column's declared type only as an affinity: a table that is not ``STRICT`` (an atlas's are not:
schema version 1 predates the need) stores text in an ``INTEGER`` column when the text is no number, a float
where an integer belongs, a number where a BLOB belongs. An atlas edited by another program, or a broken disk
copy, can therefore open, pass SQLite's integrity check, and still hold ``'abc'`` as a neuron's layer. Read
unchecked, such a value surfaced as a ``ValueError`` or ``TypeError`` deep in a page or a command (the web app
answered 500). So every read kneuron makes of its own tables (:meth:`AtlasConnection._select`) checks the values
of the columns it knows by name against :data:`COLUMN_TYPES`, and a value of the wrong kind is the one-line
damaged-atlas error: checking the rows a read returns costs a set of types per column, not a scan of the file.

A column is known by its name in the result (``layer``, ``score``...): kneuron's own queries keep the schema's
names, and their aliases (``n``, ``facts``, ``neurons`` for a count) are numbers as the columns of those names
are. :meth:`Atlas.query` (a user's own queries, which may alias anything) is not checked. ``layer`` and ``neuron``
are also checked against the model's shape (``n_layers`` x ``n_neurons`` of the atlas's meta).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kneuron.store.files import damaged

_INTEGER = frozenset({int})
_NUMBER = frozenset({int, float})
_TEXT = frozenset({str})
_BLOB = frozenset({bytes})
_WORDS = {_INTEGER: "an integer", _NUMBER: "a number", _TEXT: "text", _BLOB: "a BLOB"}


def _kinds(kind: frozenset[type], *names: str) -> dict[str, frozenset[type]]:
    return dict.fromkeys(names, kind)


#: the kinds of value each named column (of every table: facts, prompts, neurons, generic, results, aggregates,
#: vocabulary) may hold; NULL is allowed everywhere (SQLite's NOT NULL keeps it out where the schema says so)
COLUMN_TYPES: dict[str, frozenset[type]] = {
    **_kinds(_INTEGER, "seq", "known", "idx", "rank", "position", "layers", "neurons", "prompt", "layer", "neuron",
             "facts", "flagged", "n", "rows", "answer_id", "answer_rank", "answer_suppressed_rank"),
    **_kinds(_NUMBER, "known_share", "compute_seconds", "write_seconds", "probability", "objective", "score",
             "share", "value", "mean", "lo", "hi", "control_mean", "p", "activation", "sign", "answer_logit"),
    **_kinds(_TEXT, "id", "relation", "subject", "object", "templates", "status", "ranks", "note", "params",
             "fact_id", "template", "text", "dtype", "kind", "study", "variant", "metric", "method", "control",
             "answer_token", "promoted", "suppressed"),
    **_kinds(_BLOB, "scores", "activations", "baseline", "completeness_gap"),
}
#: columns that name a unit of the model, checked against its shape: (column, meta key of its bound)
UNIT_COLUMNS = (("layer", "n_layers"), ("neuron", "n_neurons"))


def check_rows(path: Path, names: Sequence[str], rows: Sequence[tuple], shape: Mapping[str, Any] | None) -> None:
    """Raise the damaged-atlas error for the first value in ``rows`` (columns ``names``) of a kind its column
    does not hold, or (given ``shape``, the atlas's meta) a layer or neuron outside the model."""
    if not rows:
        return
    for i, name in enumerate(names):
        allowed = COLUMN_TYPES.get(name)
        if allowed is None:
            continue
        found = {type(row[i]) for row in rows}
        found.discard(type(None))
        if not found <= allowed:
            value = next(row[i] for row in rows if row[i] is not None and type(row[i]) not in allowed)
            shown = repr(value) if not isinstance(value, bytes) else f"{len(value)} bytes"
            raise damaged(path, f"its {name} column holds {shown} ({type(value).__name__}) where "
                                f"{_WORDS[allowed]} belongs")
    if shape is None:
        return
    for column, key in UNIT_COLUMNS:
        if column not in names or not isinstance(shape.get(key), int):
            continue
        i = names.index(column)
        values = [row[i] for row in rows if row[i] is not None]
        if values and (min(values) < 0 or max(values) >= shape[key]):
            value = min(values) if min(values) < 0 else max(values)
            raise damaged(path, f"its {column} column holds {value}, outside the model's {shape[key]} "
                                f"{'layers' if column == 'layer' else 'neurons per layer'}")

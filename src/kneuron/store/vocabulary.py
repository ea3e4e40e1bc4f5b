"""What each knowledge neuron writes, kept in the atlas: the ``vocabulary`` table that ``kneuron study vocabulary``
creates on its first write (:mod:`kneuron.studies.vocabulary`), read by ``kneuron atlas --fact`` and the report.

An atlas without it (made before, or never studied so) reads as having no rows; nothing else in the atlas depends
on it. Each study run replaces all of its rows in one transaction, like the study's rows in ``results``.

``vocabulary``: one row per knowledge neuron of a studied fact, ``PRIMARY KEY (fact_id, layer, neuron)``.
    ``idx`` (the neuron's place in the fact's refined neurons, 0 = best), ``layer``, ``neuron``, ``activation`` (its
    mean activation at the answer position over the fact's prompts), ``sign`` (+1 or −1: the sign the slot was
    projected with), ``answer_id`` and ``answer_token`` (the first token of the fact's answer), ``answer_rank`` (how
    many tokens the neuron promotes more than the answer: 0 = its top token), ``answer_suppressed_rank`` (how many it
    lowers more), ``answer_logit``, ``promoted`` and ``suppressed`` (JSON lists of ``[token id, token text, logit]``,
    the most promoted, resp. most lowered, first; as many as the study's ``top``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from kneuron.store.files import damaged
from kneuron.studies.vocabulary import FactVocabulary

TABLE = "vocabulary"
SCHEMA = """
CREATE TABLE IF NOT EXISTS vocabulary (
    fact_id TEXT NOT NULL REFERENCES facts (id),
    idx INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    neuron INTEGER NOT NULL,
    activation REAL NOT NULL,
    sign REAL NOT NULL,
    answer_id INTEGER NOT NULL,
    answer_token TEXT NOT NULL,
    answer_rank INTEGER NOT NULL,
    answer_suppressed_rank INTEGER NOT NULL,
    answer_logit REAL NOT NULL,
    promoted TEXT NOT NULL,
    suppressed TEXT NOT NULL,
    PRIMARY KEY (fact_id, layer, neuron)
)
"""


def write_vocabulary(atlas, vocabularies: Sequence[FactVocabulary], token_text: Callable[[int], str]) -> int:
    """Replace the table's rows with the knowledge neurons of ``vocabularies`` (creating the table on the first
    write), in one transaction; ``token_text`` turns a token id into its text. Returns how many rows were written."""
    records = []
    for found in vocabularies:
        for idx, v in enumerate(found.knowledge):
            records.append((
                found.fact.id, idx, v.layer, v.index, float(found.activations[v.key]), float(v.sign),
                int(found.answer_id), token_text(found.answer_id), int(v.answer_rank), int(v.answer_suppressed_rank),
                float(v.answer_logit),
                json.dumps([[t, token_text(t), round(x, 6)] for t, x in v.promoted], ensure_ascii=False),
                json.dumps([[t, token_text(t), round(x, 6)] for t, x in v.suppressed], ensure_ascii=False)))
    with atlas.transaction() as db:
        db.execute(SCHEMA)
        db.execute("DELETE FROM vocabulary")
        db.executemany("INSERT INTO vocabulary VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
    return len(records)


def has_vocabulary(atlas) -> bool:
    """Whether the atlas has the table (a study wrote it at least once)."""
    return bool(atlas._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [TABLE]))


def word_ranks(atlas, fact_id: str, below: int) -> dict[tuple[int, int], int]:
    """The fact's knowledge neurons whose value slot ranks its answer below ``below`` (0 = its top promoted
    token): ``{(layer, neuron): answer rank}``; empty when the atlas has no table."""
    if not has_vocabulary(atlas):
        return {}
    rows = atlas._rows("SELECT layer, neuron, answer_rank FROM vocabulary WHERE fact_id = ? AND answer_rank < ?",
                       [fact_id, below])
    return {(r["layer"], r["neuron"]): r["answer_rank"] for r in rows}


def vocabulary_fact_ids(atlas, layer: int, neuron: int, limit: int) -> list[str]:
    """The facts (in run order, at most ``limit``) with a row for neuron (layer, neuron); empty without the
    table."""
    if not has_vocabulary(atlas):
        return []
    rows = atlas._rows("SELECT v.fact_id FROM vocabulary v JOIN facts f ON f.id = v.fact_id WHERE v.layer = ? AND "
                       "v.neuron = ? ORDER BY f.seq LIMIT ?", [layer, neuron, limit])
    return [r["fact_id"] for r in rows]


def read_vocabulary(atlas, fact_id: str | None = None) -> list[dict[str, Any]]:
    """The table's rows (of one fact, or all) in fact and neuron order, ``promoted`` and ``suppressed`` decoded to
    lists of ``(token id, token text, logit)``; no rows when the atlas has no table."""
    if not has_vocabulary(atlas):
        return []
    sql = "SELECT v.* FROM vocabulary v JOIN facts f ON f.id = v.fact_id"
    rows = atlas._rows(sql + (" WHERE v.fact_id = ? ORDER BY v.idx" if fact_id is not None else
                              " ORDER BY f.seq, v.idx"), [fact_id] if fact_id is not None else [])
    for entry in rows:
        for column in ("promoted", "suppressed"):
            try:
                entry[column] = [(int(t), str(text), float(x)) for t, text, x in json.loads(entry[column])]
            except (TypeError, ValueError) as exc:
                raise damaged(atlas.path, f"the {column} tokens of {entry['fact_id']!r} L{entry['layer']}."
                                          f"N{entry['neuron']} in its vocabulary table cannot be read: {exc}") from None
    return rows


__all__ = ["SCHEMA", "TABLE", "has_vocabulary", "read_vocabulary", "vocabulary_fact_ids", "word_ranks",
           "write_vocabulary"]

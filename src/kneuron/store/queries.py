"""The reads behind ``kneuron serve``'s pages: what each page needs from an atlas, as plain rows (dicts), through
the atlas's indexes (facts by relation, neurons by fact and by unit, results by study and by fact).

kneuron's SQL lives in :mod:`kneuron.store` only: the web app (:mod:`kneuron.serve.pages`) and the CLI call these
functions and the :class:`~kneuron.store.Atlas` methods, never :meth:`~kneuron.store.Atlas.query` (which stays
for a user's own ad-hoc queries). Each function reads in the caller's snapshot when there is one
(:meth:`~kneuron.store.Atlas.snapshot`), so a page made of several reads is one moment of the atlas. Lists that can
be long take a ``limit``: the caller decides how many rows a page shows.

Example:
    >>> with Atlas.open("runs/demo.sqlite", read_only=True) as atlas, atlas.snapshot():
    ...     queries.relation_fact_summaries(atlas, "capital")[0]["probability"]
    ...     queries.neuron_coarse_count(atlas, 29, 1066)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kneuron.store import scores as score_blobs
from kneuron.store.atlas import Atlas
from kneuron.store.files import damaged

__all__ = ["fact_neuron_rows", "fact_results", "generic_row", "has_study", "neuron_coarse_count",
           "neuron_coarse_prompts", "neuron_refined_facts", "prompt_blobs", "relation_exists",
           "relation_fact_summaries", "relation_neuron_totals", "relation_results", "search_facts",
           "stored_activations", "study_row_counts", "study_rows", "unit_fact_count"]


def _nan_values(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results rows with a NULL value read back as NaN (as :meth:`Atlas.results` does)."""
    for row in rows:
        row["value"] = math.nan if row["value"] is None else row["value"]
    return rows


# ------------------------------------------------------------------------------------------------ relations, studies

def relation_neuron_totals(atlas: Atlas) -> dict[str, dict[str, Any]]:
    """Per relation with any: ``{"relation", "neurons", "facts_with"}``, the refined neurons of its done facts
    (with repeats) and how many of those facts have any."""
    rows = atlas._rows(
        "SELECT f.relation AS relation, count(*) AS neurons, count(DISTINCT n.fact_id) AS facts_with "
        "FROM neurons n JOIN facts f ON f.id = n.fact_id WHERE n.kind = 'refined' AND f.status = 'done' "
        "GROUP BY f.relation")
    return {row["relation"]: row for row in rows}


def study_row_counts(atlas: Atlas) -> list[dict[str, Any]]:
    """``{"study", "rows"}`` of every study with rows, by name."""
    return atlas._rows("SELECT study, count(*) AS rows FROM results GROUP BY study ORDER BY study")


def has_study(atlas: Atlas, study: str) -> bool:
    """Whether the atlas has any row of ``study``."""
    return bool(atlas._rows("SELECT 1 FROM results WHERE study = ? LIMIT 1", [study]))


def study_rows(atlas: Atlas, study: str, *, variant: str | None = None, metric: str | None = None,
               relation: str | None = None, fact_id: str | None = None, limit: int | None = None,
               ) -> list[dict[str, Any]]:
    """The rows of ``study`` (``variant, relation, fact_id, metric, value``; NULL values as NaN) in the order
    written, those matching each filter given, at most ``limit``."""
    where, args = ["study = ?"], [study]
    for column, value in (("variant", variant), ("metric", metric), ("relation", relation), ("fact_id", fact_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = f"SELECT variant, relation, fact_id, metric, value FROM results WHERE {' AND '.join(where)} ORDER BY rowid"
    return _nan_values(atlas._rows(sql + (f" LIMIT {int(limit)}" if limit else ""), args))


def relation_results(atlas: Atlas, relation: str, study: str) -> list[dict[str, Any]]:
    """The per-fact rows of ``study`` about the relation's facts: through the facts of the relation and the
    results-by-fact index (an atlas whose studies ran before that index existed reads all of the study's rows)."""
    indexed = atlas._rows("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'results_by_fact'")
    if not indexed:
        return [r for r in study_rows(atlas, study, relation=relation) if r["fact_id"]]
    return _nan_values(atlas._rows(
        "SELECT r.variant, r.relation, r.fact_id, r.metric, r.value FROM facts f CROSS JOIN "
        "results r ON r.fact_id = f.id AND r.study = ? WHERE f.relation = ? ORDER BY r.rowid", [study, relation]))


def relation_fact_summaries(atlas: Atlas, relation: str) -> list[dict[str, Any]]:
    """The relation's facts in run order: ``id, subject, object, status, known, known_share``, the mean
    ``probability`` over its prompts (None without prompts), and how many ``prompts`` and refined ``neurons``
    it has."""
    rows = atlas._rows(
        "SELECT f.id, f.subject, f.object, f.status, f.known, f.known_share, "
        "(SELECT avg(p.probability) FROM prompts p WHERE p.fact_id = f.id) AS probability, "
        "(SELECT sum(typeof(p.probability) NOT IN ('integer', 'real')) FROM prompts p WHERE p.fact_id = f.id) "
        "AS not_numbers, "
        "(SELECT count(*) FROM prompts p WHERE p.fact_id = f.id) AS prompts, "
        "(SELECT count(*) FROM neurons n WHERE n.fact_id = f.id AND n.kind = 'refined') AS neurons "
        "FROM facts f WHERE f.relation = ? ORDER BY f.seq", [relation])
    atlas._numbers_only([(row["not_numbers"],) for row in rows], "probability")
    for row in rows:
        del row["not_numbers"]
    return rows


# ------------------------------------------------------------------------------------------------ facts

def fact_neuron_rows(atlas: Atlas, fact_id: str) -> list[dict[str, Any]]:
    """Every neuron of the fact (``kind, prompt, rank, layer, neuron, score``), by kind, prompt and rank."""
    return atlas._rows("SELECT kind, prompt, rank, layer, neuron, score FROM neurons WHERE fact_id = ? "
                       "ORDER BY kind, prompt, rank", [fact_id])


def fact_results(atlas: Atlas, fact_id: str) -> list[dict[str, Any]]:
    """Every study's rows about the fact (``study, variant, relation, metric, value``; NULL stays None), in the
    order written."""
    return atlas._rows("SELECT study, variant, relation, metric, value FROM results WHERE fact_id = ? "
                       "ORDER BY rowid", [fact_id])


def prompt_blobs(atlas: Atlas, fact_id: str, idx: int) -> dict[str, Any] | None:
    """One prompt's stored matrices and what decodes them: ``scores, activations`` (BLOBs, see
    :mod:`kneuron.store.scores`), ``dtype, layers, neurons, text, probability``; None without that prompt."""
    rows = atlas._rows("SELECT scores, activations, baseline, completeness_gap, dtype, layers, neurons, text, "
                       "probability FROM prompts WHERE fact_id = ? AND idx = ?", [fact_id, int(idx)])
    if not rows:
        return None
    _check_prompt(atlas, rows[0], fact_id, idx)
    return rows[0]


def _check_prompt(atlas: Atlas, row: dict[str, Any], fact_id: str, idx: int) -> None:
    """Refuse a prompt whose BLOBs do not have the sizes its dtype, shape and the atlas's keep_scores say (the
    damaged-atlas error): decoded anyway, a short BLOB failed as a ValueError in the page that read it."""
    meta = atlas.meta
    if (row["layers"], row["neurons"]) != (meta.get("n_layers"), meta.get("n_neurons")):
        raise damaged(atlas.path, f"prompt {idx} of {fact_id!r} holds a {row['layers']} x {row['neurons']} matrix, "
                                  f"but the model has {meta.get('n_layers')} x {meta.get('n_neurons')}")
    try:
        score_blobs.check_blobs(row, (row["layers"], row["neurons"]), atlas.params.get("keep_scores", "full"))
    except ValueError as exc:
        raise damaged(atlas.path, f"prompt {idx} of {fact_id!r}: {exc}") from None


def search_facts(atlas: Atlas, text: str, limit: int) -> list[dict[str, Any]]:
    """The facts whose subject, object or id contains ``text`` (literally: ``%`` and ``_`` are no wildcards), as
    ``id, relation, subject, object, status``, in run order, at most ``limit``."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return atlas._rows(
        "SELECT id, relation, subject, object, status FROM facts WHERE subject LIKE ?1 ESCAPE '\\' "
        "OR object LIKE ?1 ESCAPE '\\' OR id LIKE ?1 ESCAPE '\\' ORDER BY seq LIMIT ?2", [pattern, limit])


def relation_exists(atlas: Atlas, relation: str) -> bool:
    """Whether any fact of the atlas has ``relation``."""
    return bool(atlas._rows("SELECT 1 FROM facts WHERE relation = ? LIMIT 1", [relation]))


# ------------------------------------------------------------------------------------------------ neurons

def unit_fact_count(atlas: Atlas, layer: int, index: int) -> int:
    """How many done facts have neuron (layer, index) among their knowledge (refined) neurons."""
    return atlas._rows(
        "SELECT count(DISTINCT n.fact_id) AS n FROM neurons n JOIN facts f ON f.id = n.fact_id "
        "WHERE n.kind = 'refined' AND n.layer = ? AND n.neuron = ? AND f.status = 'done'", [layer, index])[0]["n"]


def generic_row(atlas: Atlas, layer: int, index: int) -> dict[str, Any] | None:
    """The generic table's ``facts, share, flagged`` of neuron (layer, index), or None when it is not there."""
    rows = atlas._rows("SELECT facts, share, flagged FROM generic WHERE layer = ? AND neuron = ?", [layer, index])
    return rows[0] if rows else None


def neuron_refined_facts(atlas: Atlas, layer: int, index: int) -> list[dict[str, Any]]:
    """The done facts where neuron (layer, index) is a knowledge neuron, in run order: ``fact_id, relation,
    subject, object, rank, score``."""
    return atlas._rows(
        "SELECT n.fact_id, f.relation, f.subject, f.object, n.rank, n.score FROM neurons n "
        "JOIN facts f ON f.id = n.fact_id WHERE n.kind = 'refined' AND n.layer = ? AND n.neuron = ? "
        "AND f.status = 'done' ORDER BY f.seq", [layer, index])


def neuron_coarse_prompts(atlas: Atlas, layer: int, index: int, limit: int) -> list[dict[str, Any]]:
    """The prompts where neuron (layer, index) is coarse, in run order, at most ``limit``: ``fact_id, prompt,
    rank, score, text, probability``."""
    return atlas._rows(
        "SELECT n.fact_id, n.prompt, n.rank, n.score, p.text, p.probability FROM neurons n "
        "JOIN prompts p ON p.fact_id = n.fact_id AND p.idx = n.prompt JOIN facts f ON f.id = n.fact_id "
        "WHERE n.kind = 'coarse' AND n.layer = ? AND n.neuron = ? ORDER BY f.seq, n.prompt LIMIT ?",
        [layer, index, limit])


def neuron_coarse_count(atlas: Atlas, layer: int, index: int) -> int:
    """How many prompts have neuron (layer, index) as a coarse neuron."""
    return atlas._rows("SELECT count(*) AS n FROM neurons WHERE kind = 'coarse' AND layer = ? AND neuron = ?",
                       [layer, index])[0]["n"]


#: the bytes of one value of a prompt's BLOB, in SQL
_WIDTH = "(CASE dtype WHEN 'float64' THEN 8 ELSE 4 END)"


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def stored_activations(atlas: Atlas, prompts: Sequence[tuple[str, int]], layer: int, index: int, n_neurons: int,
                       keep: str) -> list[float | None]:
    """The stored activation of neuron (layer, index) at the answer position of each (fact id, prompt idx); None
    where the atlas kept none (``none``, or a sparse atlas that kept other cells of that fact), or where it is not
    finite. A full atlas reads the one value out of the BLOB (``substr``), not the whole matrix."""
    if keep == "none" or not prompts:
        return [None] * len(prompts)
    flat = layer * n_neurons + index
    out: list[float | None] = []
    for fact_id, idx in prompts:
        if keep == "full":  # a full BLOB is float32 or float64 (the atlas's check): the value's bytes at its offset
            rows = atlas._rows(f"SELECT dtype, substr(activations, ? * {_WIDTH} + 1, {_WIDTH}) AS a FROM prompts "
                               "WHERE fact_id = ? AND idx = ?", [flat, fact_id, idx])
            if not rows:
                out.append(None)
                continue
            if rows[0]["dtype"] not in ("float32", "float64"):
                raise damaged(atlas.path, f"prompt {idx} of {fact_id!r} has dtype {rows[0]['dtype']!r}")
            dtype, blob = np.dtype(rows[0]["dtype"]).newbyteorder("<"), rows[0]["a"]
            out.append(_finite(np.frombuffer(blob, dtype=dtype)[0]) if blob and len(blob) == dtype.itemsize
                       else None)
        else:
            rows = atlas._rows("SELECT scores, activations, baseline, completeness_gap, dtype, layers, neurons "
                               "FROM prompts WHERE fact_id = ? AND idx = ?", [fact_id, idx])
            if not rows:
                out.append(None)
                continue
            _check_prompt(atlas, rows[0], fact_id, idx)
            kept, _, acts = score_blobs.decode_sparse(rows[0]["scores"], rows[0]["activations"], rows[0]["dtype"])
            where = int(np.searchsorted(kept, flat))
            out.append(_finite(acts[where]) if where < kept.size and kept[where] == flat else None)
    return out

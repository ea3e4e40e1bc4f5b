"""What each page of ``kneuron serve`` shows, read from an atlas: plain dicts and lists, no HTML.

Every function takes an open :class:`~kneuron.store.Atlas` and reads inside one snapshot (the caller's, or its
own), so a page is one moment of an atlas a run may be writing. Each reads only what its page shows, through the
atlas's indexes (facts by relation, neurons by fact and by unit, results by study and by fact), with a cap on
long lists: a page of an atlas of many thousands of facts costs about what it costs in a small one.

Neurons are named ``L<layer>.N<index>`` everywhere (``L29.N1066``): :func:`neuron_name`, :func:`parse_neuron_name`.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from kneuron.attribution.types import neuron_name
from kneuron.errors import KneuronError, NotFound
from kneuron.store import scores as score_blobs
from kneuron.store.vocabulary import has_vocabulary
from kneuron.studies.metrics import summarize
from kneuron.studies.registry import registered_studies

#: the longest lists a page shows (the page says how many there are in all)
MAX_ROWS = 500
#: a layers x neurons view keeps the cells whose |score| reaches this share of the prompt's maximum (the share a
#: sparse atlas keeps), at most MAX_CELLS of them (the largest)
CELL_SHARE = score_blobs.SPARSE_THRESHOLD
MAX_CELLS = 6000
#: the neurons a fact page lists per layer of each prompt
TOP_PER_LAYER = 5
#: a knowledge neuron whose value slot ranks its fact's answer among its top WORD_RANK promoted tokens writes that
#: word ("word neuron"; from the vocabulary study)
WORD_RANK = 10
MAX_QUERY = 200

_NEURON = re.compile(r"^\s*L?\s*(\d+)\s*[.:/,\s]\s*N?\s*(\d+)\s*$", re.IGNORECASE)


def parse_neuron_name(text: str) -> tuple[int, int] | None:
    """``(layer, index)`` of ``L29.N1066`` (also ``l29.n1066``, ``29.1066``, ``L29:N1066``), else None."""
    found = _NEURON.match(text or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite (JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------ overview

#: the headline figures: (key, label, study, variant, metric, format); the mean over the study's per-fact rows
HEADLINE = (
    ("suppress", "Suppressing the knowledge neurons (mean change of P(answer))", "suppress_amplify", "kn",
     "suppress", "percent"),
    ("amplify", "Amplifying them ×2", "suppress_amplify", "kn", "amplify", "percent"),
    ("suppress_random", "Suppressing as many random neurons of the same layers", "suppress_amplify", "random",
     "suppress", "percent"),
    ("auc_kn", "Their activation tells the fact's prompts apart (ROC AUC, sign-aligned: the report's headline)",
     "discrimination", "kn", "auc_signed", "number"),
    ("auc_kn_raw", "The same AUC of their raw mean activation (the paper's)", "discrimination", "kn", "auc",
     "number"),
    ("auc_activation", "The activation baseline's AUC", "discrimination", "baseline", "auc", "number"),
)


def overview(atlas) -> dict[str, Any]:
    """The overview page: the model and parameters, the headline figures, per-relation counts, the layer
    distribution and most shared knowledge neurons, and the studies the atlas has."""
    with atlas.snapshot():
        meta = atlas.meta
        counts = atlas.status_counts()
        neurons = {row["relation"]: row for row in atlas.query(
            "SELECT f.relation AS relation, count(*) AS neurons, count(DISTINCT n.fact_id) AS facts_with "
            "FROM neurons n JOIN facts f ON f.id = n.fact_id WHERE n.kind = 'refined' AND f.status = 'done' "
            "GROUP BY f.relation")}
        relations = [{"relation": relation, **status, "total": sum(status.values()),
                      "neurons": neurons.get(relation, {}).get("neurons", 0),
                      "facts_with_neurons": neurons.get(relation, {}).get("facts_with", 0)}
                     for relation, status in counts.items()]
        layers = atlas.layer_counts("refined")
        top = [{"name": neuron_name(n.layer, n.index), "layer": n.layer, "index": n.index, "facts": facts,
                "score": finite(n.score)} for n, facts in atlas.top_neurons(15)]
        studies = atlas.query("SELECT study, count(*) AS rows FROM results GROUP BY study ORDER BY study")
        studies_rows = {study: _study_rows(atlas, study) for study in {entry[2] for entry in HEADLINE}}  # once each
        headline = [_headline_figure(studies_rows[entry[2]], *entry) for entry in HEADLINE]
        top_third = _layer_metric(atlas, "top_third")
        done = sum(r["done"] for r in relations)
        generic = [{"name": neuron_name(g.layer, g.index), "layer": g.layer, "index": g.index, "facts": g.facts,
                    "share": g.share} for g in atlas.generic_neurons()[:20]]
    return {
        "model": meta.get("model"), "family": meta.get("family"), "kind": meta.get("kind"),
        "n_layers": meta.get("n_layers"), "n_neurons": meta.get("n_neurons"), "dtype": meta.get("dtype"),
        "created": meta.get("created"), "kneuron_version": meta.get("kneuron_version"),
        "params": dict(sorted(atlas.params.items())),
        "headline": [h for h in headline if h["n"]] + (
            [{"key": "top_third", "label": "Knowledge neurons in the top third of the layers", "value": top_third,
              "format": "share", "n": done, "study": "layers", "variant": "kn", "metric": "top_third"}]
            if top_third is not None else []),
        "relations": relations, "done": done, "total": sum(r["total"] for r in relations),
        "layers": [{"layer": layer, "neurons": count} for layer, count in sorted(layers.items())],
        "top_neurons": top, "studies": studies, "generic": generic,
        "generic_share": meta.get("generic", {}).get("share", 0.1),
    }


def _study_rows(atlas, study: str, *, variant: str | None = None, metric: str | None = None,
                relation: str | None = None, fact_id: str | None = None, limit: int | None = None,
                ) -> list[dict[str, Any]]:
    where, args = ["study = ?"], [study]
    for column, value in (("variant", variant), ("metric", metric), ("relation", relation), ("fact_id", fact_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = f"SELECT variant, relation, fact_id, metric, value FROM results WHERE {' AND '.join(where)} ORDER BY rowid"
    return _result_rows(atlas, sql + (f" LIMIT {int(limit)}" if limit else ""), args)


def _result_rows(atlas, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of results read by ``sql``, a NULL value read back as NaN (as :meth:`Atlas.results` does)."""
    rows = atlas.query(sql, args)
    for row in rows:
        row["value"] = math.nan if row["value"] is None else row["value"]
    return rows


def _headline_figure(rows: Sequence[dict[str, Any]], key: str, label: str, study: str, variant: str, metric: str,
                     fmt: str) -> dict[str, Any]:
    """The mean of ``metric`` over the per-fact rows of one variant among ``rows`` (the study's): what the
    report's headline averages."""
    summary = summarize(rows, variant, metric)
    return {"key": key, "label": label, "value": finite(summary.mean), "format": fmt, "n": summary.n,
            "study": study, "variant": variant, "metric": metric}


def _layer_metric(atlas, metric: str) -> float | None:
    rows = _study_rows(atlas, "layers", variant="kn", metric=metric, relation="")
    return finite(rows[0]["value"]) if rows else None


# ------------------------------------------------------------------------------------------------ relation

def relation_page(atlas, relation: str) -> dict[str, Any]:
    """A relation's facts (status, known, mean probability over the prompts, how many knowledge neurons), its most
    shared neurons, its layer distribution and its suppress / amplify figures."""
    with atlas.snapshot():
        facts = atlas.query(
            "SELECT f.id, f.subject, f.object, f.status, f.known, f.known_share, "
            "(SELECT avg(p.probability) FROM prompts p WHERE p.fact_id = f.id) AS probability, "
            "(SELECT count(*) FROM prompts p WHERE p.fact_id = f.id) AS prompts, "
            "(SELECT count(*) FROM neurons n WHERE n.fact_id = f.id AND n.kind = 'refined') AS neurons "
            "FROM facts f WHERE f.relation = ? ORDER BY f.seq", [relation])
        if not facts:
            raise NotFound(f"The atlas has no relation {relation!r}; the overview lists its relations.")
        done = [f for f in facts if f["status"] == "done"]
        shared = [{"name": neuron_name(n.layer, n.index), "layer": n.layer, "index": n.index, "facts": count,
                   "share": count / len(done) if done else None, "score": finite(n.score)}
                  for n, count in atlas.top_neurons(20, relation=relation)]
        rows = _relation_results(atlas, relation, "suppress_amplify")
        figures = [_headline_figure(rows, f"{variant}_{metric}", f"{metric} ({variant})", "suppress_amplify", variant,
                                    metric, "percent")
                   for variant in ("kn", "random") for metric in ("suppress", "amplify")]
        layers = atlas.layer_counts("refined", relation=relation)
    return {"relation": relation, "facts": facts[:MAX_ROWS], "n_facts": len(facts), "done": len(done),
            "shared": shared, "figures": [f for f in figures if f["n"]],
            "layers": [{"layer": layer, "neurons": count} for layer, count in sorted(layers.items())]}


def _relation_results(atlas, relation: str, study: str) -> list[dict[str, Any]]:
    """The per-fact rows of ``study`` about the relation's facts: through the facts of the relation and the
    results-by-fact index (an atlas whose studies ran before that index existed reads all of the study's rows)."""
    indexed = atlas.query("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'results_by_fact'")
    if not indexed:
        return [r for r in _study_rows(atlas, study, relation=relation) if r["fact_id"]]
    return _result_rows(atlas, "SELECT r.variant, r.relation, r.fact_id, r.metric, r.value FROM facts f CROSS JOIN "
                               "results r ON r.fact_id = f.id AND r.study = ? WHERE f.relation = ? ORDER BY r.rowid",
                        [study, relation])


# ------------------------------------------------------------------------------------------------ fact



def fact_page(atlas, fact_id: str) -> dict[str, Any]:
    """A fact: its prompts (probability, rank), refined neurons (with generic and word-neuron flags and how many
    facts share each), coarse neurons per prompt, activation-baseline neurons, and every study's rows about it."""
    with atlas.snapshot():
        rows = atlas.query("SELECT * FROM facts WHERE id = ?", [fact_id])
        if not rows:
            raise NotFound(f"The atlas has no fact {fact_id!r}; search by subject or browse its relations.")
        row = rows[0]
        fact = atlas.fact(fact_id)
        prompts = atlas.prompt_rows(fact_id)
        neurons: dict[str, list[dict[str, Any]]] = defaultdict(list)
        coarse: list[list[dict[str, Any]]] = [[] for _ in prompts]
        for entry in atlas.query("SELECT kind, prompt, rank, layer, neuron, score FROM neurons WHERE fact_id = ? "
                                 "ORDER BY kind, prompt, rank", [fact_id]):
            item = {"name": neuron_name(entry["layer"], entry["neuron"]), "layer": entry["layer"],
                    "index": entry["neuron"], "score": finite(entry["score"]), "rank": entry["rank"]}
            if entry["kind"] == "coarse":
                if 0 <= entry["prompt"] < len(coarse):
                    coarse[entry["prompt"]].append(item)
            else:
                neurons[entry["kind"]].append(item)
        refined = neurons["refined"]
        _add_unit_facts(atlas, refined)
        words = _word_flags(atlas, fact_id)
        for item in refined:
            item["word"] = words.get((item["layer"], item["index"]))
        results = atlas.query("SELECT study, variant, relation, metric, value FROM results WHERE fact_id = ? "
                              "ORDER BY rowid", [fact_id])
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in results:
        by_study[entry["study"]].append({**entry, "value": finite(entry["value"])})
    panels = [s.name for s in registered_studies() if s.fact_panel]  # the registry's order; then any other
    order = [s for s in panels if s in by_study] + sorted(s for s in by_study if s not in panels)
    for i, prompt in enumerate(prompts):
        prompt["coarse"] = len(coarse[i]) if i < len(coarse) else 0
    return {
        "id": fact_id, "relation": fact.relation, "subject": fact.subject, "object": fact.object,
        "templates": list(fact.templates), "status": row["status"], "known": row["known"],
        "known_share": row["known_share"], "note": row["note"], "params": json.loads(row["params"] or "{}"),
        "prompts": prompts, "refined": refined, "coarse": coarse, "baseline": neurons["baseline"],
        "results": [{"study": s, "rows": by_study[s]} for s in order],
        "keep_scores": atlas.params.get("keep_scores", "full"),
    }


def _add_unit_facts(atlas, items: list[dict[str, Any]]) -> None:
    """Each item's ``facts`` (done facts having it as a knowledge neuron) and ``generic`` flag (generic table)."""
    for item in items:
        item["facts"] = atlas.query(
            "SELECT count(DISTINCT n.fact_id) AS n FROM neurons n JOIN facts f ON f.id = n.fact_id "
            "WHERE n.kind = 'refined' AND n.layer = ? AND n.neuron = ? AND f.status = 'done'",
            [item["layer"], item["index"]])[0]["n"]
        generic = atlas.query("SELECT flagged FROM generic WHERE layer = ? AND neuron = ?",
                              [item["layer"], item["index"]])
        item["generic"] = bool(generic and generic[0]["flagged"])


def _word_flags(atlas, fact_id: str) -> dict[tuple[int, int], int]:
    """The fact's knowledge neurons whose value slot ranks the answer among its WORD_RANK most promoted tokens:
    ``{(layer, index): answer rank}`` (empty without the vocabulary study)."""
    if not has_vocabulary(atlas):
        return {}
    rows = atlas.query("SELECT layer, neuron, answer_rank FROM vocabulary WHERE fact_id = ? AND answer_rank < ?",
                       [fact_id, WORD_RANK])
    return {(r["layer"], r["neuron"]): r["answer_rank"] for r in rows}


def prompt_cells(atlas, fact_id: str, idx: int) -> dict[str, Any]:
    """One prompt's attribution as a layers x neurons view: the cells whose |score| reaches CELL_SHARE of the
    prompt's maximum (at most MAX_CELLS, the largest), ``[neuron, layer, score]`` each, and the TOP_PER_LAYER
    neurons of each layer by score."""
    with atlas.snapshot():
        rows = atlas.query("SELECT scores, activations, dtype, layers, neurons, text, probability FROM prompts "
                           "WHERE fact_id = ? AND idx = ?", [fact_id, int(idx)])
        if not rows:
            raise NotFound(f"Fact {fact_id!r} has no prompt {idx}.")
        keep = atlas.params.get("keep_scores", "full")
    row = rows[0]
    shape = (int(row["layers"]), int(row["neurons"]))
    out: dict[str, Any] = {"fact_id": fact_id, "idx": int(idx), "text": row["text"], "layers": shape[0],
                           "neurons": shape[1], "keep_scores": keep, "cells": [], "top": []}
    if keep == "none":
        out["note"] = "This atlas keeps no score matrices (made with --keep-scores none)."
        return out
    if keep == "full":
        scores = np.frombuffer(row["scores"], dtype=np.dtype(row["dtype"]).newbyteorder("<")).astype(np.float64)
        index = np.arange(scores.size)
    else:
        index, values, _ = score_blobs.decode_sparse(row["scores"], row["activations"], row["dtype"])
        scores = values.astype(np.float64)
    top = float(scores.max()) if scores.size else 0.0
    out["max"] = finite(top)
    if top > 0:
        chosen = np.flatnonzero(np.abs(scores) >= CELL_SHARE * top)
        if chosen.size > MAX_CELLS:
            chosen = chosen[np.argsort(-np.abs(scores[chosen]), kind="stable")[:MAX_CELLS]]
            out["capped"] = True
        out["cells"] = [[int(index[c] % shape[1]), int(index[c] // shape[1]), float(scores[c])] for c in chosen]
    layer_of = index // shape[1]
    for layer in range(shape[0]):
        mine = np.flatnonzero(layer_of == layer)
        best = mine[np.argsort(-scores[mine], kind="stable")[:TOP_PER_LAYER]]
        out["top"].append([{"name": neuron_name(layer, int(index[b] % shape[1])), "index": int(index[b] % shape[1]),
                            "score": float(scores[b])} for b in best])
    return out


# ------------------------------------------------------------------------------------------------ neuron

def neuron_page(atlas, layer: int, index: int) -> dict[str, Any]:
    """A neuron: the facts where it is a knowledge neuron, the prompts where it is coarse, its activation at the
    answer position of those prompts (where the atlas kept it), its generic flag and the vocabulary study's rows
    (what its value slot writes; a word neuron for a fact whose answer it ranks among its top WORD_RANK)."""
    with atlas.snapshot():
        n_layers, n_neurons = int(atlas.meta.get("n_layers", 0)), int(atlas.meta.get("n_neurons", 0))
        if not (0 <= layer < n_layers and 0 <= index < n_neurons):
            raise NotFound(f"{neuron_name(layer, index)} is outside the model: it has layers 0-{n_layers - 1} "
                           f"and neurons 0-{n_neurons - 1} per layer.")
        refined = atlas.query(
            "SELECT n.fact_id, f.relation, f.subject, f.object, n.rank, n.score FROM neurons n "
            "JOIN facts f ON f.id = n.fact_id WHERE n.kind = 'refined' AND n.layer = ? AND n.neuron = ? "
            "AND f.status = 'done' ORDER BY f.seq", [layer, index])
        coarse = atlas.query(
            "SELECT n.fact_id, n.prompt, n.rank, n.score, p.text, p.probability FROM neurons n "
            "JOIN prompts p ON p.fact_id = n.fact_id AND p.idx = n.prompt JOIN facts f ON f.id = n.fact_id "
            "WHERE n.kind = 'coarse' AND n.layer = ? AND n.neuron = ? ORDER BY f.seq, n.prompt LIMIT ?",
            [layer, index, MAX_ROWS + 1])
        n_coarse = atlas.query("SELECT count(*) AS n FROM neurons WHERE kind = 'coarse' AND layer = ? AND neuron = ?",
                               [layer, index])[0]["n"]
        keep = atlas.params.get("keep_scores", "full")
        shown = coarse[:MAX_ROWS]
        values = stored_activations(atlas, [(c["fact_id"], c["prompt"]) for c in shown], layer, index, n_neurons, keep)
        for entry, value in zip(shown, values, strict=True):
            entry["activation"] = value
            entry["score"] = finite(entry["score"])
        generic = atlas.query("SELECT facts, share, flagged FROM generic WHERE layer = ? AND neuron = ?",
                              [layer, index])
        vocabulary = _vocabulary_rows(atlas, layer, index)
    for entry in refined:
        entry["score"] = finite(entry["score"])
    known = [c["activation"] for c in shown if c["activation"] is not None]
    return {
        "name": neuron_name(layer, index), "layer": layer, "index": index, "n_layers": n_layers,
        "n_neurons": n_neurons, "refined": refined[:MAX_ROWS], "n_refined": len(refined),
        "relations": sorted({r["relation"] for r in refined}), "coarse": shown, "n_coarse": n_coarse,
        "keep_scores": keep, "generic": generic[0] if generic else None,
        "mean_activation": float(np.mean(known)) if known else None,
        "vocabulary": vocabulary, "word_facts": [v["fact_id"] for v in vocabulary if v["answer_rank"] < WORD_RANK],
    }


#: the bytes of one value of a prompt's BLOB, in SQL
_WIDTH = "(CASE dtype WHEN 'float64' THEN 8 ELSE 4 END)"


def stored_activations(atlas, prompts: Sequence[tuple[str, int]], layer: int, index: int, n_neurons: int,
                       keep: str) -> list[float | None]:
    """The stored activation of neuron (layer, index) at the answer position of each (fact id, prompt idx); None
    where the atlas kept none (``none``, or a sparse atlas that kept other cells of that fact). A full atlas reads
    the one value out of the BLOB (``substr``), not the whole matrix."""
    if keep == "none" or not prompts:
        return [None] * len(prompts)
    flat = layer * n_neurons + index
    out: list[float | None] = []
    for fact_id, idx in prompts:
        if keep == "full":  # a full BLOB is float32 or float64 (the atlas's check): the value's bytes at its offset
            rows = atlas.query(f"SELECT dtype, substr(activations, ? * {_WIDTH} + 1, {_WIDTH}) AS a FROM prompts "
                               "WHERE fact_id = ? AND idx = ?", [flat, fact_id, idx])
            if not rows:
                out.append(None)
                continue
            dtype, blob = np.dtype(rows[0]["dtype"]).newbyteorder("<"), rows[0]["a"]
            out.append(finite(np.frombuffer(blob, dtype=dtype)[0]) if blob and len(blob) == dtype.itemsize
                       else None)
        else:
            rows = atlas.query("SELECT scores, activations, dtype FROM prompts WHERE fact_id = ? AND idx = ?",
                               [fact_id, idx])
            if not rows:
                out.append(None)
                continue
            kept, _, acts = score_blobs.decode_sparse(rows[0]["scores"], rows[0]["activations"], rows[0]["dtype"])
            where = int(np.searchsorted(kept, flat))
            out.append(finite(acts[where]) if where < kept.size and kept[where] == flat else None)
    return out


def _vocabulary_rows(atlas, layer: int, index: int) -> list[dict[str, Any]]:
    if not has_vocabulary(atlas):
        return []
    from kneuron.store.vocabulary import read_vocabulary

    rows = atlas.query("SELECT v.fact_id FROM vocabulary v JOIN facts f ON f.id = v.fact_id WHERE v.layer = ? AND "
                       "v.neuron = ? ORDER BY f.seq LIMIT ?", [layer, index, MAX_ROWS])
    found = []
    for (fact_id,) in ((r["fact_id"],) for r in rows):
        found += [v for v in read_vocabulary(atlas, fact_id) if v["layer"] == layer and v["neuron"] == index]
    return found


# ------------------------------------------------------------------------------------------------ search, studies

def search(atlas, query: str) -> dict[str, Any]:
    """What a search box query names: ``{"redirect": path}`` for a neuron (``L29.N1066``), a fact id or a
    relation; otherwise ``{"matches": [...]}``, the facts whose subject, object or id contains it (at most
    MAX_ROWS), and a redirect when exactly one fact matches."""
    from urllib.parse import quote

    query = (query or "").strip()
    if not query:
        return {"query": query, "matches": []}
    if len(query) > MAX_QUERY:
        raise KneuronError(f"The search is {len(query):,} characters long; search for at most {MAX_QUERY}.")
    neuron = parse_neuron_name(query)
    if neuron is not None:
        return {"query": query, "redirect": f"/neuron/{neuron_name(*neuron)}"}
    with atlas.snapshot():
        if atlas.query("SELECT 1 FROM facts WHERE id = ?", [query]):
            return {"query": query, "redirect": f"/fact/{quote(query, safe='')}"}
        if atlas.query("SELECT 1 FROM facts WHERE relation = ? LIMIT 1", [query]):
            return {"query": query, "redirect": f"/relation/{quote(query, safe='')}"}
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        matches = atlas.query(
            "SELECT id, relation, subject, object, status FROM facts WHERE subject LIKE ?1 ESCAPE '\\' "
            "OR object LIKE ?1 ESCAPE '\\' OR id LIKE ?1 ESCAPE '\\' ORDER BY seq LIMIT ?2", [pattern, MAX_ROWS + 1])
    out: dict[str, Any] = {"query": query, "matches": matches[:MAX_ROWS], "more": len(matches) > MAX_ROWS}
    if len(matches) == 1:
        out["redirect"] = f"/fact/{quote(matches[0]['id'], safe='')}"
    return out


def study_page(atlas, study: str, filters: Mapping[str, str | None]) -> dict[str, Any]:
    """A study's rows, filtered by variant, metric, relation and fact (each optional), at most MAX_ROWS, and the
    mean over the per-fact rows of each (variant, metric): what a figure elsewhere is the mean of."""
    chosen = {k: v for k, v in filters.items() if k in ("variant", "metric", "relation", "fact_id") and v}
    with atlas.snapshot():
        if not atlas.query("SELECT 1 FROM results WHERE study = ? LIMIT 1", [study]):
            raise NotFound(f"The atlas has no results of study {study!r}; `kneuron study` computes them.")
        rows = _study_rows(atlas, study, **chosen, limit=20000)
    means = _means(rows)
    shown = [{**r, "value": finite(r["value"])} for r in rows[:MAX_ROWS]]
    return {"study": study, "filters": chosen, "rows": shown, "n_rows": len(rows), "means": means}


def _means(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["fact_id"] and math.isfinite(r["value"]):
            groups[r["variant"], r["metric"]].append(r["value"])
    return [{"variant": v, "metric": m, "mean": float(np.mean(values)), "n": len(values)}
            for (v, m), values in sorted(groups.items())]

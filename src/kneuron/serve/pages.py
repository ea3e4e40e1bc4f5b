"""What each page of ``kneuron serve`` shows, read from an atlas: plain dicts and lists, no HTML.

Every function takes an open :class:`~kneuron.store.Atlas` and reads inside one snapshot (the caller's, or its
own), so a page is one moment of an atlas a run may be writing. Each reads only what its page shows, through the
store's query API (:mod:`kneuron.store.queries`, which uses the atlas's indexes: facts by relation, neurons by fact
and by unit, results by study and by fact), with a cap on long lists: a page of an atlas of many thousands of facts
costs about what it costs in a small one. No SQL here: :mod:`kneuron.store` is the only layer that speaks it.

Neurons are named ``L<layer>.N<index>`` everywhere (``L29.N1066``): :func:`neuron_name`, :func:`parse_neuron_name`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kneuron.attribution.types import neuron_name
from kneuron.errors import KneuronError, NotFound
from kneuron.store import queries
from kneuron.store import scores as score_blobs
from kneuron.store.queries import stored_activations
from kneuron.store.vocabulary import vocabulary_fact_ids, word_ranks
from kneuron.studies.intervals import count_interval, figure, find, format_interval
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

#: at most 9 digits per number: no model has a billion layers or neurons per layer, and Python refuses to read an
#: integer of over 4,300 digits (``/neuron/L<5000 digits>.N1`` answered 500); a longer one is no neuron's name.
#: ASCII digits only: ``L\u0661.N1`` (Arabic-Indic one) is no address, not a redirect to L1.N1
_NEURON = re.compile(r"^\s*L?\s*([0-9]{1,9})\s*[.:/,\s]\s*N?\s*([0-9]{1,9})\s*$", re.IGNORECASE | re.ASCII)


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
        neurons = queries.relation_neuron_totals(atlas)
        per_fact = atlas.done_fact_neuron_counts()
        relations = [{"relation": relation, **status, "total": sum(status.values()),
                      "neurons": neurons.get(relation, {}).get("neurons", 0),
                      "facts_with_neurons": neurons.get(relation, {}).get("facts_with", 0),
                      **neurons_per_fact(per_fact.get(relation, []))}
                     for relation, status in counts.items()]
        all_facts = neurons_per_fact([c for v in per_fact.values() for c in v])
        layers = atlas.layer_counts("refined")
        top = [{"name": neuron_name(n.layer, n.index), "layer": n.layer, "index": n.index, "facts": facts,
                **_score_figure(score)} for n, facts, score in atlas.top_neuron_intervals(15)]
        studies = queries.study_row_counts(atlas)
        studies_rows = {study: queries.study_rows(atlas, study) for study in {entry[2] for entry in HEADLINE}}  # once
        stored = {study: atlas.aggregates(study) for study in {entry[2] for entry in HEADLINE} | {"layers"}}
        headline = [_headline_figure(studies_rows[entry[2]], *entry, aggregates=stored[entry[2]])
                    for entry in HEADLINE]
        top_third = _layer_metric(atlas, "top_third")
        top_interval = find(stored["layers"], "kn", "top_third")
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
              "format": "share", "n": top_interval.n or done, "study": "layers", "variant": "kn",
              "metric": "top_third", "lo": finite(top_interval.lo), "hi": finite(top_interval.hi),
              "p": finite(top_interval.p), "control": top_interval.control,
              "interval": figure(stored["layers"], "kn", "top_third", study="layers", percent=True,
                                 pooled=top_third)}]
            if top_third is not None else []),
        "relations": relations, "done": done, "total": sum(r["total"] for r in relations),
        "neurons_per_fact": all_facts,
        "layers": [{"layer": layer, "neurons": count} for layer, count in sorted(layers.items())],
        "top_neurons": top, "studies": studies, "generic": generic,
        "generic_share": meta.get("generic", {}).get("share", 0.1),
    }


def neurons_per_fact(counts: Sequence[int]) -> dict[str, Any]:
    """The mean refined neurons per done fact with its 95% interval (seeded bootstrap over facts) and n, computed
    from the atlas's neurons (no study stores them): ``per_fact`` (the mean), ``per_fact_interval`` (the CLI's text,
    as ``kneuron atlas`` shows it; empty without done facts), ``per_fact_lo``, ``per_fact_hi``, ``per_fact_n``."""
    found = count_interval(counts)
    return {"per_fact": finite(found.mean), "per_fact_interval": format_interval(found) if found.n else "",
            "per_fact_lo": finite(found.lo), "per_fact_hi": finite(found.hi), "per_fact_n": found.n}


def _score_figure(score) -> dict[str, Any]:
    """A shared neuron's mean score over the facts it is a knowledge neuron of: ``score`` (the mean), ``score_lo``,
    ``score_hi`` (its 95% bootstrap interval over those facts), ``score_n`` and ``score_interval`` (the text
    ``kneuron atlas`` shows)."""
    return {"score": finite(score.mean), "score_lo": finite(score.lo), "score_hi": finite(score.hi),
            "score_n": score.n, "score_interval": format_interval(score, significant=4)}


def _headline_figure(rows: Sequence[dict[str, Any]], key: str, label: str, study: str, variant: str, metric: str,
                     fmt: str, *, aggregates: Sequence[dict[str, Any]] = (), relation: str = "") -> dict[str, Any]:
    """The mean of ``metric`` over the per-fact rows of one variant among ``rows`` (the study's): what the
    report's headline averages; with the stored interval of that mean (``aggregates``, the study's, read and not
    recomputed: ``lo``, ``hi``, ``p`` against ``control``, and ``interval``, the text the CLI and the report
    show)."""
    summary = summarize(rows, variant, metric)
    stored = find(aggregates, variant, metric, relation)
    if stored.n:  # the stored mean and n, not recomputed; the rows' bare mean only on an atlas without them
        summary = replace(summary, mean=stored.mean, n=stored.n)
    return {"key": key, "label": label, "value": finite(summary.mean), "format": fmt, "n": summary.n,
            "study": study, "variant": variant, "metric": metric, "lo": finite(stored.lo), "hi": finite(stored.hi),
            "p": finite(stored.p), "control": stored.control,
            "interval": figure(aggregates, variant, metric, relation, rows=rows, study=study,
                               percent=fmt == "percent")}


def _layer_metric(atlas, metric: str) -> float | None:
    rows = queries.study_rows(atlas, "layers", variant="kn", metric=metric, relation="")
    return finite(rows[0]["value"]) if rows else None


# ------------------------------------------------------------------------------------------------ relation

def relation_page(atlas, relation: str) -> dict[str, Any]:
    """A relation's facts (status, known, mean probability over the prompts, how many knowledge neurons), its most
    shared neurons, its layer distribution and its suppress / amplify figures."""
    with atlas.snapshot():
        facts = queries.relation_fact_summaries(atlas, relation)
        if not facts:
            raise NotFound(f"The atlas has no relation {relation!r}; the overview lists its relations.")
        done = [f for f in facts if f["status"] == "done"]
        shared = [{"name": neuron_name(n.layer, n.index), "layer": n.layer, "index": n.index, "facts": count,
                   "share": count / len(done) if done else None, **_score_figure(score)}
                  for n, count, score in atlas.top_neuron_intervals(20, relation=relation)]
        rows = queries.relation_results(atlas, relation, "suppress_amplify")
        stored = atlas.aggregates("suppress_amplify")
        figures = [_headline_figure(rows, f"{variant}_{metric}", f"{metric} ({variant})", "suppress_amplify", variant,
                                    metric, "percent", aggregates=stored, relation=relation)
                   for variant in ("kn", "random") for metric in ("suppress", "amplify")]
        layers = atlas.layer_counts("refined", relation=relation)
    return {"relation": relation, "facts": facts[:MAX_ROWS], "n_facts": len(facts), "done": len(done),
            "neurons_per_fact": neurons_per_fact([f["neurons"] for f in done]),
            "shared": shared, "figures": [f for f in figures if f["n"]],
            "layers": [{"layer": layer, "neurons": count} for layer, count in sorted(layers.items())]}


# ------------------------------------------------------------------------------------------------ fact



def fact_page(atlas, fact_id: str) -> dict[str, Any]:
    """A fact: its prompts (probability, rank), refined neurons (with generic and word-neuron flags and how many
    facts share each), coarse neurons per prompt, activation-baseline neurons, and every study's rows about it."""
    with atlas.snapshot():
        row = atlas.fact_row(fact_id)
        if row is None:
            raise NotFound(f"The atlas has no fact {fact_id!r}; search by subject or browse its relations.")
        fact = atlas.fact(fact_id)
        prompts = atlas.prompt_rows(fact_id)
        neurons: dict[str, list[dict[str, Any]]] = defaultdict(list)
        coarse: list[list[dict[str, Any]]] = [[] for _ in prompts]
        for entry in queries.fact_neuron_rows(atlas, fact_id):
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
        results = queries.fact_results(atlas, fact_id)
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in results:
        by_study[entry["study"]].append({**entry, "fact_id": fact_id, "value": finite(entry["value"])})
    studies = {s.name: s for s in registered_studies()}
    panels = [name for name, s in studies.items() if s.fact_panel]  # the registry's order; then any other
    order = [s for s in panels if s in by_study] + sorted(s for s in by_study if s not in panels)
    for i, prompt in enumerate(prompts):
        prompt["coarse"] = len(coarse[i]) if i < len(coarse) else 0
    params = atlas.stored_json(row["params"] or "{}", f"the params of {fact_id!r}")
    return {
        "id": fact_id, "relation": fact.relation, "subject": fact.subject, "object": fact.object,
        "templates": list(fact.templates), "status": row["status"], "known": row["known"],
        "known_share": row["known_share"], "note": row["note"], "params": params,
        "prompts": prompts, "refined": refined, "coarse": coarse, "baseline": neurons["baseline"],
        "results": [_panel(studies.get(s), s, by_study[s]) for s in order],
        "keep_scores": atlas.params.get("keep_scores", "full"),
    }


def _panel(study, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A study's panel on a fact's page: all its rows about the fact, the charts it draws of them
    (:meth:`~kneuron.studies.base.Study.fact_charts`) and the rows its table lists (``table``)."""
    if study is None:  # rows of a study no longer registered: a table of them
        return {"study": name, "rows": rows, "charts": [], "table": rows}
    return {"study": name, "rows": rows, "charts": study.fact_charts(rows), "table": study.panel_rows(rows)}


def _add_unit_facts(atlas, items: list[dict[str, Any]]) -> None:
    """Each item's ``facts`` (done facts having it as a knowledge neuron) and ``generic`` flag (generic table)."""
    for item in items:
        item["facts"] = queries.unit_fact_count(atlas, item["layer"], item["index"])
        generic = queries.generic_row(atlas, item["layer"], item["index"])
        item["generic"] = bool(generic and generic["flagged"])


def _word_flags(atlas, fact_id: str) -> dict[tuple[int, int], int]:
    """The fact's knowledge neurons whose value slot ranks the answer among its WORD_RANK most promoted tokens:
    ``{(layer, index): answer rank}`` (empty without the vocabulary study)."""
    return word_ranks(atlas, fact_id, WORD_RANK)


def prompt_cells(atlas, fact_id: str, idx: int) -> dict[str, Any]:
    """One prompt's attribution as a layers x neurons view: the cells whose |score| reaches CELL_SHARE of the
    prompt's maximum (at most MAX_CELLS, the largest), ``[neuron, layer, score]`` each, and the TOP_PER_LAYER
    neurons of each layer by score."""
    with atlas.snapshot():
        row = queries.prompt_blobs(atlas, fact_id, int(idx))
        if row is None:
            raise NotFound(f"Fact {fact_id!r} has no prompt {idx}.")
        keep = atlas.params.get("keep_scores", "full")
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
        refined = queries.neuron_refined_facts(atlas, layer, index)
        coarse = queries.neuron_coarse_prompts(atlas, layer, index, MAX_ROWS + 1)
        n_coarse = queries.neuron_coarse_count(atlas, layer, index)
        keep = atlas.params.get("keep_scores", "full")
        shown = coarse[:MAX_ROWS]
        values = stored_activations(atlas, [(c["fact_id"], c["prompt"]) for c in shown], layer, index, n_neurons, keep)
        for entry, value in zip(shown, values, strict=True):
            entry["activation"] = value
            entry["score"] = finite(entry["score"])
        generic = queries.generic_row(atlas, layer, index)
        vocabulary = _vocabulary_rows(atlas, layer, index)
    for entry in refined:
        entry["score"] = finite(entry["score"])
    known = [c["activation"] for c in shown if c["activation"] is not None]
    return {
        "name": neuron_name(layer, index), "layer": layer, "index": index, "n_layers": n_layers,
        "n_neurons": n_neurons, "refined": refined[:MAX_ROWS], "n_refined": len(refined),
        "relations": sorted({r["relation"] for r in refined}), "coarse": shown, "n_coarse": n_coarse,
        "keep_scores": keep, "generic": generic,
        "mean_activation": float(np.mean(known)) if known else None,
        "vocabulary": vocabulary, "word_facts": [v["fact_id"] for v in vocabulary if v["answer_rank"] < WORD_RANK],
    }


def _vocabulary_rows(atlas, layer: int, index: int) -> list[dict[str, Any]]:
    """The vocabulary study's rows of neuron (layer, index), fact by fact in run order (of at most MAX_ROWS
    facts); none without the vocabulary table."""
    from kneuron.store.vocabulary import read_vocabulary

    found = []
    for fact_id in vocabulary_fact_ids(atlas, layer, index, MAX_ROWS):
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
        if atlas.fact_row(query) is not None:
            return {"query": query, "redirect": f"/fact/{quote(query, safe='')}"}
        if queries.relation_exists(atlas, query):
            return {"query": query, "redirect": f"/relation/{quote(query, safe='')}"}
        matches = queries.search_facts(atlas, query, MAX_ROWS + 1)
    out: dict[str, Any] = {"query": query, "matches": matches[:MAX_ROWS], "more": len(matches) > MAX_ROWS}
    if len(matches) == 1:
        out["redirect"] = f"/fact/{quote(matches[0]['id'], safe='')}"
    return out


def study_page(atlas, study: str, filters: Mapping[str, str | None]) -> dict[str, Any]:
    """A study's rows, filtered by variant, metric, relation and fact (each optional), at most MAX_ROWS, and the
    mean over the per-fact rows of each (variant, metric): what a figure elsewhere is the mean of."""
    chosen = {k: v for k, v in filters.items() if k in ("variant", "metric", "relation", "fact_id") and v}
    with atlas.snapshot():
        if not queries.has_study(atlas, study):
            raise NotFound(f"The atlas has no results of study {study!r}; `kneuron study` computes them.")
        rows = queries.study_rows(atlas, study, **chosen, limit=20000)
        stored = atlas.aggregates(study)
    means = _means(rows, stored, study, chosen.get("relation", "") if not chosen.get("fact_id") else None)
    shown = [{**r, "value": finite(r["value"])} for r in rows[:MAX_ROWS]]
    intervals = [{"variant": a["variant"], "relation": a["relation"], "metric": a["metric"], "n": a["n"],
                  "mean": finite(a["mean"]), "lo": finite(a["lo"]), "hi": finite(a["hi"]), "p": finite(a["p"]),
                  "control": a["control"], "method": a["method"],
                  "text": figure([a], a["variant"], a["metric"], a["relation"])}
                 for a in stored if all(a.get(k) == v for k, v in chosen.items() if k != "fact_id")][:MAX_ROWS]
    return {"study": study, "filters": chosen, "rows": shown, "n_rows": len(rows), "means": means,
            "intervals": intervals}


def _means(rows: Iterable[dict[str, Any]], aggregates: Sequence[dict[str, Any]] = (), study: str = "",
           relation: str | None = "") -> list[dict[str, Any]]:
    """The mean over the shown per-fact rows of each (variant, metric), with the stored interval of that mean
    (``interval``: the CLI's and report's text) where the rows are all of a study's facts or of one relation's
    (``relation`` None: filtered to one fact, no interval applies)."""
    rows = list(rows)
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["fact_id"] and math.isfinite(r["value"]):
            groups[r["variant"], r["metric"]].append(r["value"])
    return [{"variant": v, "metric": m, "mean": float(np.mean(values)), "n": len(values),
             "interval": "" if relation is None else figure(aggregates, v, m, relation, rows=rows, study=study)}
            for (v, m), values in sorted(groups.items())]

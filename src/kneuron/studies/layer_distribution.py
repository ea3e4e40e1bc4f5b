"""Where knowledge neurons sit: the share of all knowledge neurons (over all facts) found in each layer, overall
and per relation, against the activation baseline's neurons, and the share in the top third of the layers
(the paper finds knowledge neurons mostly in the top layers of BERT-base).

A neuron that belongs to several facts counts once per fact. The top third is the last ``max(1, round(L / 3))``
layers (layers 20..29 of a 30-layer model).

Rows: variant ``kn``, ``baseline`` or ``kn_no_generic``; relation ``""`` for all facts or a relation's name;
fact id ``""``; metric ``count:L`` and ``share:L`` for each layer L, ``top_third`` and ``total``.

The top-third share's uncertainty (:func:`top_third_aggregates`, stored as the study's aggregates): the share is
pooled over facts (top-third neurons over all neurons), so its interval is the cluster bootstrap over facts (each
fact's neurons resampled together), and its paired test against the activation baseline's share permutes, fact by
fact, which of the two neuron sets is which (:func:`kneuron.studies.intervals.ratio_interval`). Facts without
neurons do not count in n.

Example:
    >>> rows = layer_distribution(neurons_by_fact, lm.n_layers, baseline_by_fact, relations=relation_of)
    >>> top_third_share(neurons_by_fact, lm.n_layers)
    >>> top_third_aggregates(neurons_by_fact, lm.n_layers, baseline_by_fact)  # with n, interval and p
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.studies.intervals import ratio_interval
from kneuron.studies.metrics import NeuronKey, row
from kneuron.studies.suppress_amplify import keys_of

STUDY = "layers"


def top_layers(n_layers: int) -> range:
    """The top third of ``n_layers`` layers (at least one layer)."""
    return range(n_layers - max(1, round(n_layers / 3)), n_layers)


def layer_counts(neuron_sets: Iterable[Sequence[Neuron | NeuronKey]], n_layers: int) -> np.ndarray:
    """(n_layers,) number of neurons in each layer, over all sets."""
    counts = np.zeros(n_layers, dtype=np.int64)
    for neurons in neuron_sets:
        for layer, _ in keys_of(neurons):
            counts[layer] += 1
    return counts


def top_third_share(neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]], n_layers: int) -> float:
    """Share of all knowledge neurons that sit in the top third of the layers (NaN when there are none)."""
    counts = layer_counts(neurons_by_fact.values(), n_layers)
    total = counts.sum()
    return float(counts[list(top_layers(n_layers))].sum() / total) if total else float("nan")


def _rows(variant: str, relation: str, counts: np.ndarray) -> list[dict]:
    total = int(counts.sum())
    rows = [row(STUDY, variant, relation, "", "total", total)]
    for layer, count in enumerate(counts.tolist()):
        rows.append(row(STUDY, variant, relation, "", f"count:{layer}", count))
        rows.append(row(STUDY, variant, relation, "", f"share:{layer}", count / total if total else float("nan")))
    top = counts[list(top_layers(len(counts)))].sum()
    rows.append(row(STUDY, variant, relation, "", "top_third", top / total if total else float("nan")))
    return rows


def _variants(neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
              baseline_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]] | None,
              generic: Iterable[Neuron | NeuronKey]) -> dict[str, dict[str, Sequence[Neuron | NeuronKey]]]:
    """The study's neuron sets by fact, per variant: ``kn``, ``baseline`` (when given) and ``kn_no_generic``
    (the knowledge neurons without the ``generic`` ones), in that order."""
    generic_keys = set(keys_of(generic))
    variants = {"kn": dict(neurons_by_fact)}
    if baseline_by_fact is not None:
        variants["baseline"] = dict(baseline_by_fact)
    variants["kn_no_generic"] = {fact_id: [k for k in keys_of(neurons) if k not in generic_keys]
                                 for fact_id, neurons in neurons_by_fact.items()}
    return variants


def layer_distribution(
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    n_layers: int,
    baseline_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]] | None = None,
    *,
    relations: Mapping[str, str] | None = None,
    generic: Iterable[Neuron | NeuronKey] = (),
) -> list[dict]:
    """Layer distribution rows for the knowledge neurons, the baseline neurons and the knowledge neurons without
    ``generic`` ones; per relation too when ``relations`` maps fact id to relation."""
    variants = _variants(neurons_by_fact, baseline_by_fact, generic)
    rows = []
    for variant, sets in variants.items():
        rows.extend(_rows(variant, "", layer_counts(sets.values(), n_layers)))
        if relations:
            by_relation: dict[str, list] = defaultdict(list)
            for fact_id, neurons in sets.items():
                by_relation[relations.get(fact_id, "")].append(neurons)
            for relation, groups in sorted(by_relation.items()):
                rows.extend(_rows(variant, relation, layer_counts(groups, n_layers)))
    return rows


def top_third_counts(neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]], n_layers: int,
                     ) -> dict[str, tuple[int, int]]:
    """Each fact's (neurons in the top third of the layers, neurons)."""
    top = set(top_layers(n_layers))
    return {fact_id: (sum(1 for layer, _ in keys_of(neurons) if layer in top), len(keys_of(neurons)))
            for fact_id, neurons in neurons_by_fact.items()}


def top_third_aggregates(
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    n_layers: int,
    baseline_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]] | None = None,
    *,
    relations: Mapping[str, str] | None = None,
    generic: Iterable[Neuron | NeuronKey] = (),
) -> list[dict]:
    """The stored aggregates of the layers study: the ``top_third`` share of each variant (``kn``, ``baseline``,
    ``kn_no_generic``), over all facts (relation ``""``) and per relation, with n (facts with neurons), the cluster
    bootstrap interval over facts and, for ``kn`` and ``kn_no_generic``, the paired test against ``baseline``.
    The mean equals the ``top_third`` row of :func:`layer_distribution`."""
    variants = _variants(neurons_by_fact, baseline_by_fact, generic)
    counts = {variant: top_third_counts(sets, n_layers) for variant, sets in variants.items()}
    relation_of = dict(relations or {})
    groups = [""] + sorted({relation_of.get(f, "") for f in neurons_by_fact} - {""}) if relations else [""]
    out = []
    for variant, by_fact in counts.items():
        control = counts.get("baseline") if variant != "baseline" else None
        for relation in groups:
            ids = [f for f in by_fact if not relation or relation_of.get(f, "") == relation]
            pairs = None
            if control is not None:
                pairs = ([control.get(f, (0, 0))[0] for f in ids], [control.get(f, (0, 0))[1] for f in ids])
            found = ratio_interval([by_fact[f][0] for f in ids], [by_fact[f][1] for f in ids], control=pairs,
                                   control_name="baseline" if control is not None else "")
            out.append({"variant": variant, "relation": relation, "metric": "top_third", **found.__dict__})
    return out

"""Causal tracing against knowledge neurons (issue 25): where Meng et al.'s tracing (ROME, NeurIPS 2022) puts a fact,
and where Dai et al.'s knowledge neurons sit.

Knowledge neurons put a fact in a few FFN neurons of the top layers at the answer position; causal tracing puts it
in middle-layer MLPs at the subject's last token. For each fact this study traces one prompt (the first of its
prompts whose subject the model reads: for a causal model, one with [X] before [Y]) with
:mod:`kneuron.interventions.tracing`: noise of ``noise_scale`` (ROME: 3) × the standard deviation of the studied
subjects' token embeddings on the subject's tokens, ``samples`` seeded draws (seed and fact id: the order of facts
does not matter), the residual stream restored one layer at a time, the MLP and attention outputs in windows of
``window`` layers (ROME: 10). On the same draws it measures:

* **where**: the layer of the largest MLP effect at the subject's last token and of the attention's at the last
  token, against the knowledge neurons' layers (their mean, and the mean minus those peaks);
* **how much of the MLP's effect at the answer position the knowledge neurons' layers carry**: each layer's MLP
  output restored alone at the answer position (no window), and the share of those effects summed over the
  neurons' layers; the MLP outputs of the neurons' layers restored together, and of all layers together, and their
  ratio; and the knowledge neurons' own activations restored (kneuron's neuron space), and their share of both;
* **ROME's key**: the FFN activation at the subject's last token (ROME's key is that vector at its edited layer; here
  at each knowledge neuron's layer): each knowledge neuron's rank in it by |activation| (1 = the largest of its
  layer), which neuron it weighs most, and the share of the key's squared norm (over the neurons' layers) on the
  knowledge neurons against the share a uniform key would give them.

"Last" is the position that predicts the answer's first token (a causal prompt's last token, where the knowledge
neurons are found); "elsewhere" the other positions from the subject's first token on. Effects are on P(answer), the
joint probability of the answer's tokens. A share whose whole is not positive (a restoration that lowers P) is NaN.

Over facts, a share is summarised as a **ratio of means** (:func:`fact_ratio`: the mean part over the mean whole,
on the facts that have both), not as the mean of the per-fact ratios: a fact whose whole is a tiny positive effect
(restoring the MLP of all layers at the answer position barely raises P when the corruption hardly lowered it)
gives a ratio of hundreds, and one such fact made the mean of ratios 5308% on SmolLM2's demo facts. The ratio of
means weighs each fact by its whole, so it reads as "of the effect there is, this share".

Rows (``study="tracing"``):

* variant ``map:residual``, ``map:mlp``, ``map:attention``: ``t{position} L{layer}``, the indirect effect;
* variant ``token``: ``t{position} {token!r}``, its role: 2 the subject's last token, 1 another subject token, 3 the
  last position, 0 any other;
* variant ``effect``: ``p_clean``, ``p_corrupted``, ``total_effect``, ``prompt`` (the template traced),
  ``subject_last``, ``last``, ``tokens``, ``window``, ``samples``;
* variant ``peak``: ``mlp_subject_last_layer``/``_value``, ``attention_last_layer``/``_value``,
  ``residual_layer``/``_value``/``_role`` (the map's largest entry and its token's role);
* variant ``kn`` (facts with knowledge neurons): ``neurons``, ``mean_layer``, ``min_layer``, ``max_layer``,
  ``minus_mlp_peak``, ``minus_attention_peak``;
* variant ``answer``: ``mlp1 L{layer}``, ``kn_layers_sum``, ``all_layers_sum`` (of the ``mlp1`` effects),
  ``kn_layers_share``, ``joint_kn_layers``, ``joint_all_layers``, ``joint_share``, ``kn_neurons``,
  ``kn_neurons_share_of_layers``, ``kn_neurons_share_of_all``;
* variant ``key``: ``rank {neuron}``, ``activation {neuron}``, ``answer_activation {neuron}``, ``best_rank``,
  ``median_rank_share`` (rank / neurons per layer), ``top_1pct`` (share of the neurons in the top 1% of their
  layer), ``energy_share``, ``energy_share_uniform``, ``weighed_most {neuron}`` (its |activation|);
* variant ``params``: ``noise`` (the absolute standard deviation), ``embedding_std``, ``facts``,
  ``seconds_per_fact``, ``threads``.
"""

from __future__ import annotations

import ast
import contextlib
import math
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kneuron.attribution.types import Neuron, neuron_name
from kneuron.errors import FactError
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Fact, Prompt
from kneuron.facts.subject import subject_positions
from kneuron.interventions.tracing import (
    KINDS,
    Restoration,
    embedding_std,
    indirect_effects,
    map_restorations,
    prepare,
    traced_positions,
)
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import row

STUDY = "tracing"
#: token roles in the ``token`` rows
OTHER, SUBJECT, SUBJECT_LAST, LAST = 0, 1, 2, 3
#: the position groups of the average indirect effect
GROUPS = ("subject_last", "last", "elsewhere")
_MAP_METRIC = re.compile(r"^t(\d+) L(\d+)$")
_TOKEN_METRIC = re.compile(r"^t(\d+) (.*)$", re.DOTALL)


def traced_prompt(lm: LanguageModel, fact: Fact) -> tuple[int, Prompt, EncodedQuery, tuple[int, ...]] | None:
    """The fact's first prompt whose subject the model reads: (its index, the prompt, its query, the subject's
    positions), or None when none does."""
    for index, prompt in enumerate(fact.prompts()):
        try:
            query = encode(lm, prompt, fact.object)
            return index, prompt, query, subject_positions(lm, prompt, fact.subject, query)
        except FactError:
            continue
    return None


def _share(part: float, whole: float) -> float:
    return part / whole if math.isfinite(whole) and whole > 0 else math.nan


def _peak(values: np.ndarray) -> tuple[int, float]:
    index = int(np.argmax(values))
    return index, float(values[index])


def _roles(n: int, subject: Sequence[int], last: int) -> list[int]:
    roles = [OTHER] * n
    for p in subject:
        roles[p] = SUBJECT
    roles[subject[-1]] = SUBJECT_LAST
    roles[last] = LAST
    return roles


def trace_fact(lm: LanguageModel, fact: Fact, neurons: Sequence[Neuron], *, noise: float, samples: int, window: int,
               seed: int) -> list[dict] | None:
    """The rows of one fact (see the module docstring), or None when none of its prompts has a readable subject."""
    found = traced_prompt(lm, fact)
    if found is None:
        return None
    index, _prompt, query, subject = found
    plan = prepare(lm, query, subject, noise=noise, samples=samples,
                   seed=zlib.crc32(f"{seed}:{fact.id}".encode()))
    last, n_layers = query.position, lm.n_layers
    maps_rows = map_restorations(lm, plan, KINDS, window)
    kn_layers = sorted({n.layer for n in neurons})
    extra = [Restoration("mlp", last, (layer,)) for layer in range(n_layers)]
    extra.append(Restoration("mlp", last, tuple(range(n_layers))))
    if neurons:
        extra.append(Restoration("mlp", last, tuple(kn_layers)))
        extra.append(Restoration.of_neurons(last, [n.key for n in neurons]))
    effects = indirect_effects(lm, plan, maps_rows + extra)
    positions = traced_positions(lm, plan)
    size = len(positions) * n_layers
    maps = {}
    for k, kind in enumerate(KINDS):
        grid = np.zeros((len(query), n_layers))
        grid[positions] = effects[k * size:(k + 1) * size].reshape(len(positions), n_layers)
        maps[kind] = grid
    rest = effects[len(maps_rows):]
    single, joint_all = rest[:n_layers], float(rest[n_layers])

    def add(variant: str, metric: str, value: float) -> None:
        out.append(row(STUDY, variant, fact.relation, fact.id, metric, value))

    out: list[dict] = []
    roles = _roles(len(query), subject, last)
    tokens = [lm.tokenizer.decode([int(t)]) for t in query.input_ids]
    for p, (token, role) in enumerate(zip(tokens, roles, strict=True)):
        add("token", f"t{p} {token!r}", role)
    for kind, grid in maps.items():
        for p in range(len(query)):
            for layer in range(n_layers):
                add(f"map:{kind}", f"t{p} L{layer}", grid[p, layer])
    for metric, value in (("p_clean", plan.p_clean), ("p_corrupted", plan.p_corrupted),
                          ("total_effect", plan.p_clean - plan.p_corrupted), ("prompt", index),
                          ("subject_last", subject[-1]), ("last", last), ("tokens", len(query)),
                          ("window", window), ("samples", samples)):
        add("effect", metric, value)
    mlp_layer, mlp_value = _peak(maps["mlp"][subject[-1]])
    attention_layer, attention_value = _peak(maps["attention"][last])
    flat = int(np.argmax(maps["residual"]))
    residual_position, residual_layer = divmod(flat, n_layers)
    for metric, value in (("mlp_subject_last_layer", mlp_layer), ("mlp_subject_last_value", mlp_value),
                          ("attention_last_layer", attention_layer), ("attention_last_value", attention_value),
                          ("residual_layer", residual_layer),
                          ("residual_value", maps["residual"][residual_position, residual_layer]),
                          ("residual_role", roles[residual_position])):
        add("peak", metric, value)
    for layer in range(n_layers):
        add("answer", f"mlp1 L{layer}", single[layer])
    add("answer", "joint_all_layers", joint_all)
    if not neurons:
        return out
    joint_kn, kn_neurons = float(rest[n_layers + 1]), float(rest[n_layers + 2])
    layers = [n.layer for n in neurons]
    mean_layer = float(np.mean(layers))
    for metric, value in (("neurons", len(neurons)), ("mean_layer", mean_layer), ("min_layer", min(layers)),
                          ("max_layer", max(layers)), ("minus_mlp_peak", mean_layer - mlp_layer),
                          ("minus_attention_peak", mean_layer - attention_layer)):
        add("kn", metric, value)
    add("answer", "kn_layers_sum", float(single[kn_layers].sum()))
    add("answer", "all_layers_sum", float(single.sum()))
    for metric, value in (("kn_layers_share", _share(float(single[kn_layers].sum()), float(single.sum()))),
                          ("joint_kn_layers", joint_kn), ("joint_share", _share(joint_kn, joint_all)),
                          ("kn_neurons", kn_neurons), ("kn_neurons_share_of_layers", _share(kn_neurons, joint_kn)),
                          ("kn_neurons_share_of_all", _share(kn_neurons, joint_all))):
        add("answer", metric, value)
    out.extend(_key_rows(lm, fact, neurons, plan.activations, subject[-1], last))
    return out


def _key_rows(lm: LanguageModel, fact: Fact, neurons: Sequence[Neuron], activations: Mapping[int, torch.Tensor],
              subject_last: int, last: int) -> list[dict]:
    """ROME's key (the FFN activation at the subject's last token) at each knowledge neuron's layer, and the
    neurons in it."""
    out, ranks, weights = [], [], {}
    energy = kn_energy = 0.0
    width = lm.n_neurons
    for layer in sorted({n.layer for n in neurons}):
        key = activations[layer][subject_last].double()
        energy += float((key ** 2).sum())
        order = torch.argsort(key.abs(), descending=True)
        rank_of = torch.empty_like(order)
        rank_of[order] = torch.arange(1, width + 1)
        for n in (n for n in neurons if n.layer == layer):
            name, value = neuron_name(n.layer, n.index), float(key[n.index])
            ranks.append(int(rank_of[n.index]))
            weights[name] = abs(value)
            kn_energy += value ** 2
            out.append(row(STUDY, "key", fact.relation, fact.id, f"rank {name}", ranks[-1]))
            out.append(row(STUDY, "key", fact.relation, fact.id, f"activation {name}", value))
            out.append(row(STUDY, "key", fact.relation, fact.id, f"answer_activation {name}",
                           float(activations[layer][last, n.index])))
    top = max(weights, key=weights.__getitem__)
    n_layers = len({n.layer for n in neurons})
    for metric, value in (("best_rank", min(ranks)), ("median_rank_share", float(np.median(ranks)) / width),
                          ("top_1pct", float(np.mean([r <= max(1, width // 100) for r in ranks]))),
                          ("energy_share", _share(kn_energy, energy)),
                          ("energy_share_uniform", len(neurons) / (n_layers * width)),
                          (f"weighed_most {top}", weights[top])):
        out.append(row(STUDY, "key", fact.relation, fact.id, metric, value))
    return out


def tracing_study(lm: LanguageModel, facts: Sequence[Fact], neurons: Mapping[str, Sequence[Neuron]], *,
                  samples: int = 10, window: int = 10, noise_scale: float = 3.0, seed: int = 0,
                  on_fact: Callable[[Fact], None] | None = None, note: Callable[[str], None] | None = None,
                  ) -> tuple[list[dict], list[str]]:
    """The study's rows over ``facts`` and the ids of the facts it traced (see the module docstring)."""
    std = embedding_std(lm, [fact.subject for fact in facts]) if facts else math.nan
    rows: list[dict] = []
    traced: list[str] = []
    started = time.perf_counter()
    for fact in facts:
        found = trace_fact(lm, fact, list(neurons.get(fact.id, ())), noise=noise_scale * std, samples=samples,
                           window=window, seed=seed)
        if found is None:
            if note:
                note(f"{fact.id}: none of its prompts has the subject where {lm.name} reads it; not traced.")
        else:
            rows.extend(found)
            traced.append(fact.id)
        if on_fact:
            on_fact(fact)
    seconds = (time.perf_counter() - started) / len(traced) if traced else math.nan
    for metric, value in (("noise", noise_scale * std), ("embedding_std", std), ("facts", len(traced)),
                          ("seconds_per_fact", seconds), ("threads", torch.get_num_threads())):
        rows.append(row(STUDY, "params", "", "", metric, value))
    return rows, traced


# ------------------------------------------------------------------------------------------------ reading rows


@dataclass
class FactTrace:
    """One fact's maps, rebuilt from its rows: ``maps[kind]`` is (tokens, layers), ``roles`` the tokens' roles."""

    fact_id: str
    relation: str
    tokens: list[str]
    roles: list[int]
    maps: dict[str, np.ndarray]

    def positions(self, group: str) -> list[int]:
        """The positions of a group: "subject_last", "last" or "elsewhere" (from the subject's first token on)."""
        if group == "subject_last":
            return [self.roles.index(SUBJECT_LAST)] if SUBJECT_LAST in self.roles else []
        if group == "last":
            return [self.roles.index(LAST)] if LAST in self.roles else []
        first = min((p for p, r in enumerate(self.roles) if r in (SUBJECT, SUBJECT_LAST)), default=0)
        return [p for p in range(first, len(self.roles)) if self.roles[p] in (OTHER, SUBJECT)]

    def profile(self, kind: str, group: str) -> np.ndarray:
        """(layers,) the mean indirect effect over the group's positions (NaN where it has none)."""
        chosen = self.positions(group)
        grid = self.maps[kind]
        return grid[chosen].mean(0) if chosen else np.full(grid.shape[1], math.nan)


def fact_traces(rows: Sequence[dict]) -> list[FactTrace]:
    """Every traced fact's maps from the study's rows, in the order of the rows."""
    cells: dict[str, dict[str, dict[tuple[int, int], float]]] = {}
    tokens: dict[str, dict[int, tuple[str, int]]] = {}
    relations: dict[str, str] = {}
    for r in rows:
        fact, variant = r.get("fact_id") or "", r.get("variant", "")
        if not fact:
            continue
        if variant.startswith("map:") and (m := _MAP_METRIC.match(r["metric"])):
            cells.setdefault(fact, {}).setdefault(variant[4:], {})[(int(m[1]), int(m[2]))] = r["value"]
        elif variant == "token" and (m := _TOKEN_METRIC.match(r["metric"])):
            text = m[2]
            with contextlib.suppress(ValueError, SyntaxError):  # a repr() of the token; else shown as stored
                text = str(ast.literal_eval(text))
            tokens.setdefault(fact, {})[int(m[1])] = (text, int(r["value"]))
        relations.setdefault(fact, r.get("relation") or "")
    out = []
    for fact, kinds in cells.items():
        known = tokens.get(fact, {})
        n = 1 + max(max(p for p, _ in grid) for grid in kinds.values())
        layers = 1 + max(max(layer for _, layer in grid) for grid in kinds.values())
        maps = {}
        for kind, grid in kinds.items():
            array = np.full((n, layers), math.nan)
            for (p, layer), value in grid.items():
                array[p, layer] = value
            maps[kind] = array
        out.append(FactTrace(fact, relations[fact], [known.get(p, ("?", OTHER))[0] for p in range(n)],
                             [known.get(p, ("?", OTHER))[1] for p in range(n)], maps))
    return out


def averaged_profiles(traces: Sequence[FactTrace]) -> dict[tuple[str, str], list[np.ndarray]]:
    """Per (kind, group), the per-fact profiles :func:`average_effects` averages: the finite ones of the deepest
    depth (facts of different depths are not averaged together)."""
    out = {}
    for kind in KINDS:
        for group in GROUPS:
            profiles = [t.profile(kind, group) for t in traces if kind in t.maps]
            profiles = [p for p in profiles if np.isfinite(p).all()]
            if profiles:
                depth = max(len(p) for p in profiles)
                out[(kind, group)] = [p for p in profiles if len(p) == depth]
    return out


def average_effects(traces: Sequence[FactTrace]) -> dict[tuple[str, str], tuple[np.ndarray, int]]:
    """ROME's average indirect effect: per (kind, group), the mean over facts of the group's per-layer profile, and
    how many facts it averages (facts of different depths are not averaged together: the deepest count wins)."""
    return {key: (np.mean(same, axis=0), len(same)) for key, same in averaged_profiles(traces).items()}


#: the variant of the stored aggregates of the average-effect profiles (:func:`profile_aggregates`)
PROFILE = "profile"


def profile_metric(kind: str, group: str, layer: int) -> str:
    """The metric of one layer of one average-effect profile among the stored aggregates (``mlp@last:L12``)."""
    return f"{kind}@{group}:L{layer}"


def profile_aggregates(rows: Sequence[dict]) -> list[dict]:
    """The stored aggregates of :func:`average_effects`: per (kind, group) and layer, the mean indirect effect over
    the same facts that average with its percentile bootstrap interval over them
    (:func:`~kneuron.studies.intervals.mean_interval`), variant :data:`PROFILE`, metric :func:`profile_metric`,
    over all facts (no control)."""
    from kneuron.studies.intervals import mean_interval

    out = []
    for (kind, group), same in averaged_profiles(fact_traces(rows)).items():
        for layer in range(len(same[0])):
            interval = mean_interval([float(p[layer]) for p in same])
            out.append({"variant": PROFILE, "relation": "", "metric": profile_metric(kind, group, layer),
                        **interval.__dict__})
    return out


def fact_means(rows: Sequence[dict], variant: str, metric: str) -> tuple[float, int]:
    """The mean of a per-fact (variant, metric) over the facts that have a finite one, and how many."""
    values = [r["value"] for r in rows if r.get("fact_id") and r["variant"] == variant and r["metric"] == metric
              and isinstance(r["value"], float) and math.isfinite(r["value"])]
    return (float(np.mean(values)) if values else math.nan), len(values)


#: the per-fact shares and the (part, whole) metrics they divide, all of variant ``answer``
RATIOS = {"kn_layers_share": ("kn_layers_sum", "all_layers_sum"),
          "joint_share": ("joint_kn_layers", "joint_all_layers"),
          "kn_neurons_share_of_layers": ("kn_neurons", "joint_kn_layers"),
          "kn_neurons_share_of_all": ("kn_neurons", "joint_all_layers")}


def fact_ratio(rows: Sequence[dict], part: str, whole: str, variant: str = "answer") -> tuple[float, int]:
    """The mean of ``part`` over the mean of ``whole`` (a ratio of means, see the module docstring) over the facts
    that have both finite, and how many; NaN when the mean whole is not positive."""
    found: dict[str, dict[str, float]] = {}
    for r in rows:
        if (r.get("fact_id") and r["variant"] == variant and r["metric"] in (part, whole)
                and isinstance(r["value"], float) and math.isfinite(r["value"])):
            found.setdefault(r["fact_id"], {})[r["metric"]] = r["value"]
    pairs = [(v[part], v[whole]) for v in found.values() if part in v and whole in v]
    if not pairs:
        return math.nan, 0
    mean_whole = float(np.mean([w for _, w in pairs]))
    return _share(float(np.mean([p for p, _ in pairs])), mean_whole), len(pairs)


def figure_value(rows: Sequence[dict], variant: str, metric: str) -> tuple[float, int]:
    """A summary figure over facts: the ratio of means for a share (:data:`RATIOS`), otherwise the mean."""
    if variant == "answer" and metric in RATIOS:
        return fact_ratio(rows, *RATIOS[metric])
    return fact_means(rows, variant, metric)


#: the metric a share's stored aggregate has: the ratio of means of :data:`RATIOS`, not the mean of per-fact shares
RATIO_SUFFIX = "@ratio"


def ratio_aggregates(rows: Sequence[dict]) -> list[dict]:
    """The stored aggregates of the shares the summaries show as ratios of means (:data:`RATIOS`): each
    ``sum(part) / sum(whole)`` over the facts with both finite (the same facts and figure as :func:`fact_ratio`;
    none when the summed whole is not positive), with the percentile bootstrap of that ratio over facts
    (:func:`~kneuron.studies.intervals.bootstrap_interval`); metric ``{share}@ratio``, variant ``answer``, over all
    facts (no control)."""
    from kneuron.studies.intervals import Interval, bootstrap_interval

    out = []
    for share, (part, whole) in RATIOS.items():
        found: dict[str, dict[str, float]] = {}
        for r in rows:
            if (r.get("fact_id") and r["variant"] == "answer" and r["metric"] in (part, whole)
                    and isinstance(r["value"], float) and math.isfinite(r["value"])):
                found.setdefault(r["fact_id"], {})[r["metric"]] = r["value"]
        pairs = [(v[part], v[whole]) for v in found.values() if part in v and whole in v]
        parts, wholes = [p for p, _ in pairs], [w for _, w in pairs]
        if pairs and sum(wholes) > 0:
            lo, hi = bootstrap_interval(parts, wholes)
            interval = Interval(sum(parts) / sum(wholes), lo, hi, len(pairs), "bootstrap")
            out.append({"variant": "answer", "relation": "", "metric": share + RATIO_SUFFIX, **interval.__dict__})
    return out


def weighed_most(rows: Sequence[dict]) -> dict[str, str]:
    """Per fact, the knowledge neuron ROME's key weighs most (its name)."""
    return {r["fact_id"]: r["metric"].split(" ", 1)[1] for r in rows
            if r.get("variant") == "key" and r["metric"].startswith("weighed_most ")}


__all__ = [
    "GROUPS", "PROFILE", "RATIOS", "STUDY", "FactTrace", "average_effects", "fact_means", "fact_ratio",
    "fact_traces", "figure_value", "profile_aggregates", "profile_metric", "trace_fact", "traced_prompt",
    "tracing_study", "weighed_most",
]

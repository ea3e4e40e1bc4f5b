"""The live probes of ``kneuron serve``: what a page asks of the loaded model, as plain synchronous functions.

Everything here takes text a person typed on a page, checks it first (one-line :class:`ProbeInputError` the page
shows; nothing reaches the model before its size is known to be small) and returns JSON-able dicts (no NaN: a
value that is not finite is None). The model is used by one thread at a time: the web layer runs these functions
through :class:`kneuron.serve.jobs.ProbeQueue`.

* :func:`probe`: the answer's probability, rank and the top predictions as is, with neurons switched off, and with
  them amplified, patched at the answer position exactly as the suppress / amplify study patches them.
* :func:`find`: a fact's knowledge neurons from a bag of prompts, with the atlas's own parameters.
* :func:`fact_from_probe` and :func:`save_found`: one fact appended to the atlas, only when the user asks.

Prompts: a causal model continues the text (or the text before ``[Y]``); a masked model needs ``[Y]`` (or its own
mask token, once) where the answer goes (:func:`kneuron.facts.encoding.prompt_from_text`, as the CLI reads them).
Ranks are 1-based (1 = the model's top prediction), as in :class:`kneuron.attribution.NeuronScores`.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kneuron.attribution.estimators import estimator_from_params
from kneuron.attribution.knowledge import find_knowledge_neurons
from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores, neuron_name
from kneuron.errors import FactError, KneuronError, ProbeInputError
from kneuron.facts.encoding import EncodedQuery, encode, prompt_from_text
from kneuron.facts.fact import Fact, Prompt, mask_token_in
from kneuron.interventions.vocabulary import token_text
from kneuron.models.hooks import NeuronPatch, patch_rows, scale_patches, suppress_patches
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import logits_at
from kneuron.serve.pages import finite
from kneuron.studies.metrics import joint_probability, padded

MAX_PROMPT_CHARS = 2000
MAX_ANSWER_CHARS = 200
MAX_NEURONS = 512
MAX_FIND_PROMPTS = 8
#: the most top predictions a probe lists, and the largest amplify factor it takes (in absolute value)
MAX_TOP, MAX_FACTOR = 50, 1000.0
#: characters per neuron name a neuron list may use on average ("L29.N1066, " is 11) before it is refused unsplit
CHARS_PER_NEURON = 20
MAX_NEURON_CHARS = CHARS_PER_NEURON * MAX_NEURONS

NEURON_FORM = "L<layer>.N<index>, e.g. L29.N1066"
_NEURON = re.compile(r"[Ll](\d{1,6})\.[Nn](\d{1,9})")
_SEPARATORS = re.compile(r"[\s,;]+")
_WHITESPACE = frozenset("\t\n\r")


# ------------------------------------------------------------------------------------------------ checking input


def _shown(text: str, width: int = 40) -> str:
    """``text`` quoted for a message, cut to ``width`` characters."""
    return repr(text if len(text) <= width else text[:width] + "...")


def _subject(what: str) -> str:
    """``what`` as the subject of a sentence: "The prompt", but "Prompt 3" for one of several."""
    return f"{what[:1].upper()}{what[1:]}" if what[-1:].isdigit() else f"The {what}"


def _check_text(text: Any, what: str, limit: int, *, one_line: bool) -> str:
    if not isinstance(text, str):
        raise ProbeInputError(f"{_subject(what)} must be text, not {type(text).__name__}.")
    if len(text) > limit:
        raise ProbeInputError(f"{_subject(what)} is {len(text):,} characters long; at most {limit:,} are accepted: "
                              "shorten it.")
    if not text.strip():
        raise ProbeInputError(f"{_subject(what)} is empty: type some text.")
    for char in text:
        if char in _WHITESPACE:
            if one_line and char != "\t":
                raise ProbeInputError(f"{_subject(what)} must be one line: remove its line breaks.")
        elif unicodedata.category(char) in ("Cc", "Cs"):
            raise ProbeInputError(f"{_subject(what)} contains the control character U+{ord(char):04X}; remove it.")
    return text


def check_prompt(text: Any, what: str = "prompt") -> str:
    """``text`` when it can be a prompt: text, not empty, at most :data:`MAX_PROMPT_CHARS` characters, no control
    characters other than tabs and line breaks. ``what`` names it in the message ("prompt 3", "template 1")."""
    return _check_text(text, what, MAX_PROMPT_CHARS, one_line=False)


def check_answer(text: Any, what: str = "answer") -> str:
    """``text`` stripped, when it can be an answer: one line of at most :data:`MAX_ANSWER_CHARS` characters, with
    neither a template's placeholder nor a mask token."""
    text = _check_text(text, what, MAX_ANSWER_CHARS, one_line=True).strip()
    for placeholder in ("[X]", "[Y]"):
        if placeholder in text:
            raise ProbeInputError(f"{_subject(what)} {_shown(text)} contains {placeholder}, which marks a place in "
                                  "a prompt: give the plain words.")
    if (mask := mask_token_in(text)) is not None:
        raise ProbeInputError(f"{_subject(what)} {_shown(text)} contains the mask token {mask}: give the plain "
                              "words.")
    return text


def _shape(lm: LanguageModel) -> str:
    return (f"{lm.name} has layers 0..{lm.n_layers - 1} with neurons 0..{lm.n_neurons - 1} each "
            f"({lm.n_layers} x {lm.n_neurons})")


def _too_many(count: int) -> ProbeInputError:
    return ProbeInputError(f"{count:,} neurons were given; a probe takes at most {MAX_NEURONS}: choose fewer.")


def parse_neurons(value: str | Sequence[str], lm: LanguageModel) -> list[tuple[int, int]]:
    """``(layer, index)`` of the neurons named in ``value``: "L29.N1066, L3.N7" (names separated by commas, spaces
    or line breaks, any case) or a list of such strings. Order kept, duplicates dropped; empty means none.

    Cheap on any input: a string longer than :data:`MAX_NEURON_CHARS` or a list longer than :data:`MAX_NEURONS` is
    refused before it is split, and the count of names given (repeats included) is checked before any is parsed.

    Raises:
        ProbeInputError: a malformed name, a neuron outside the model, or more than :data:`MAX_NEURONS` neurons.
    """
    if isinstance(value, str):
        parts = [value]
    elif isinstance(value, Sequence):
        if len(value) > MAX_NEURONS:
            raise _too_many(len(value))
        if not all(isinstance(part, str) for part in value):
            raise ProbeInputError("Neurons must be names such as 'L29.N1066', one per entry of the list.")
        parts = list(value)
    else:
        raise ProbeInputError(f"Neurons must be text such as 'L29.N1066, L3.N7' or a list of such names, not "
                              f"{type(value).__name__}.")
    length = sum(len(part) for part in parts)
    if length > MAX_NEURON_CHARS:
        raise ProbeInputError(f"The neuron list is {length:,} characters long; a probe takes at most {MAX_NEURONS} "
                              f"neurons ({MAX_NEURON_CHARS:,} characters): choose fewer.")
    tokens = [token for part in parts for token in _SEPARATORS.split(part) if token]
    if len(tokens) > MAX_NEURONS:
        raise _too_many(len(tokens))
    keys = []
    for token in tokens:
        match = _NEURON.fullmatch(token)
        if match is None:
            raise ProbeInputError(f"{_shown(token)} is not a neuron name: write {NEURON_FORM}, separated by commas "
                                  "or spaces.")
        keys.append((int(match.group(1)), int(match.group(2))))
    return check_neurons(lm, keys)


def check_neurons(lm: LanguageModel, neurons: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``neurons`` as ``(layer, index)`` int pairs, duplicates dropped, when there are at most :data:`MAX_NEURONS`
    and each lies inside ``lm``."""
    if len(neurons) > MAX_NEURONS:
        raise _too_many(len(neurons))
    try:
        keys = list(dict.fromkeys((int(layer), int(index)) for layer, index in neurons))
    except (TypeError, ValueError):
        raise ProbeInputError(f"Neurons must be (layer, index) pairs of whole numbers or names such as "
                              f"{NEURON_FORM}.") from None
    for layer, index in keys:
        if not (0 <= layer < lm.n_layers and 0 <= index < lm.n_neurons):
            raise ProbeInputError(f"L{layer}.N{index} lies outside the model: {_shape(lm)}.")
    return keys


def _check_number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProbeInputError(f"{_subject(what)} must be a number, not {value!r}.")
    if not low <= value <= high:
        raise ProbeInputError(f"{_subject(what)} must lie in {low:g}..{high:g}; got {value:g}.")
    return value


def _named(what: str, exc: Exception) -> str:
    """``exc``'s message, after "Prompt 3: " when ``what`` names one of several."""
    return f"{_subject(what)}: {exc}" if what[-1:].isdigit() else str(exc)


def _prompt(lm: LanguageModel, text: str, what: str = "prompt") -> Prompt:
    if "[X]" in text:
        raise ProbeInputError(f"{_subject(what)} contains [X], a template's place for the subject: write the "
                              "subject itself.")
    try:
        return prompt_from_text(lm, text)
    except FactError as exc:
        raise ProbeInputError(_named(what, exc)) from None


def _encoded(lm: LanguageModel, prompt: Prompt, answer: str, what: str = "prompt") -> EncodedQuery:
    """``encode``, its refusals (no text before [Y], an answer outside the vocabulary, a prompt longer than the
    model reads: ``lm.check_length``) as ProbeInputErrors."""
    try:
        return encode(lm, prompt, answer)
    except FactError as exc:
        raise ProbeInputError(_named(what, exc)) from None


def encode_probe(lm: LanguageModel, prompt: str, answer: str, what: str = "prompt") -> EncodedQuery:
    """A typed prompt and answer, checked and encoded as :func:`probe` reads them."""
    text, answer = check_prompt(prompt, what), check_answer(answer)
    return _encoded(lm, _prompt(lm, text, what), answer, what)


# ------------------------------------------------------------------------------------------------------- probe


def _measure(lm: LanguageModel, query: EncodedQuery, sets: Sequence[Sequence[NeuronPatch]], top: int) -> list[dict]:
    """One forward pass of ``query`` per patch set (one batch, a row per set), patched at the answer position: the
    batch and the probabilities are :func:`~kneuron.studies.metrics.answer_probabilities`' own (its
    ``row_patches`` path), and the rank and top predictions come from the same logits."""
    rows = len(sets)
    ids, mask = padded(lm, [query.input_ids] * rows)
    positions = torch.tensor([query.position] * rows)
    index = torch.tensor([list(query.target_positions)] * rows)
    with patch_rows(lm, sets, positions=positions), logits_at(lm, index) as sliced:
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
    targets = torch.tensor(query.answer_ids, device=logits.device)
    out = []
    for row in range(rows):
        at_targets = logits[row] if sliced else logits[row][list(query.target_positions)]
        log_probs = torch.log_softmax(at_targets.double(), dim=-1)
        first = log_probs[0]
        probs = first.exp()
        chosen = torch.topk(probs, min(top, probs.numel()))
        out.append({
            "probability": finite(joint_probability(logits[row], query, sliced)),
            "log_probability": finite(log_probs.gather(-1, targets[:, None]).sum()),
            "token_probabilities": [finite(p) for p in log_probs.gather(-1, targets[:, None]).squeeze(-1).exp()],
            "rank": int((first > first[query.answer_ids[0]]).sum()) + 1,
            "top": [{"token": token_text(lm, i), "id": int(i), "probability": finite(p)}
                    for p, i in zip(chosen.values, chosen.indices, strict=True)],
        })
    return out


def _relative(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0.0:
        return None
    return finite((after - before) / before)


@torch.no_grad()
def probe(lm: LanguageModel, prompt: str, answer: str, neurons: Sequence[tuple[int, int]], *, factor: float = 2.0,
          top: int = 5) -> dict[str, Any]:
    """How ``neurons`` bear on ``answer`` after ``prompt``: the answer as is, with them set to 0 and multiplied by
    ``factor``, each patched at the answer position only (``query.position``, the position that predicts the
    first answer token), as the suppress / amplify study patches them.

    Returns a JSON-able dict: ``model``, ``kind``, ``prompt`` (as given), ``text`` (what the model reads, masks
    shown), ``answer``, ``answer_tokens``, ``position``, ``neurons`` (names), ``factor`` and ``conditions``:
    ``{"as_is", "suppressed", "amplified"}``, each with ``probability`` (the answer's joint, teacher-forced
    probability, what :func:`~kneuron.studies.metrics.answer_probabilities` gives), ``log_probability``,
    ``token_probabilities``, ``rank`` (of the first answer token, 1 = top) and ``top`` (the ``top`` likeliest next
    tokens of a causal model, or fillers of a masked model's first answer mask, as ``{"token", "id",
    "probability"}``); the patched ones also ``relative_change`` ((p - p_as_is) / p_as_is, None when p_as_is is 0).
    Without neurons, ``conditions`` holds ``as_is`` alone (the others would equal it) and ``note`` says so.

    Raises:
        ProbeInputError: an empty or too long prompt or answer, a masked model's prompt without [Y], a prompt longer
            than the model reads, too many neurons or one outside the model, a factor or top out of range.
    """
    query = encode_probe(lm, prompt, answer)
    keys = check_neurons(lm, neurons)
    factor = float(_check_number(factor, "amplify factor", -MAX_FACTOR, MAX_FACTOR))
    if not isinstance(top, int):
        raise ProbeInputError(f"The number of top predictions must be a whole number, not {top!r}.")
    top = int(_check_number(top, "number of top predictions", 1, MAX_TOP))
    names = ["as_is"] + (["suppressed", "amplified"] if keys else [])
    sets = [[]] + ([suppress_patches(keys), scale_patches(keys, factor)] if keys else [])
    measured = dict(zip(names, _measure(lm, query, sets, top), strict=True))
    for name in names[1:]:
        measured[name]["relative_change"] = _relative(measured["as_is"]["probability"], measured[name]["probability"])
    return {
        "model": lm.name, "kind": lm.kind, "prompt": prompt, "text": query.text, "answer": answer.strip(),
        "answer_tokens": [token_text(lm, i) for i in query.answer_ids], "position": query.position,
        "neurons": [neuron_name(*key) for key in keys], "factor": factor, "conditions": measured,
        "note": None if keys else "no neurons given: only the model as it is",
    }


# -------------------------------------------------------------------------------------------------------- find


def _neuron_dict(neuron: Neuron) -> dict[str, Any]:
    return {"layer": neuron.layer, "index": neuron.index, "score": finite(neuron.score), "name": str(neuron)}


def _probability(scores: NeuronScores) -> float | None:
    """The clean answer probability (``scores.probability`` is the log-probability under the logprob objective)."""
    if math.isfinite(scores.log_probability):
        return finite(math.exp(scores.log_probability))
    return finite(scores.probability if scores.objective == "prob" else math.exp(scores.probability))


def found_dict(lm: LanguageModel, kn: KnowledgeNeurons, texts: Sequence[str]) -> dict[str, Any]:
    """A find result as JSON: ``neurons`` (refined, best first), ``coarse`` (per prompt), ``per_layer`` (refined
    neurons in each layer 0..n_layers-1), ``probabilities``, ``answer_ranks`` (1 = top; 0 unknown) and
    ``warnings`` per prompt, ``share_used``, ``estimator`` and the scalar ``params``."""
    per_layer = kn.per_layer()
    return {
        "model": lm.name, "answer": kn.params.get("answer"), "prompts": list(texts),
        "neurons": [_neuron_dict(n) for n in kn.neurons],
        "coarse": [[_neuron_dict(n) for n in coarse] for coarse in kn.coarse],
        "per_layer": [per_layer.get(layer, 0) for layer in range(lm.n_layers)],
        "probabilities": [_probability(s) for s in kn.scores],
        "answer_ranks": [s.answer_rank for s in kn.scores],
        "warnings": list(kn.warnings),
        "share_used": kn.params.get("share_used"),
        "estimator": kn.params.get("estimator"),
        "params": {key: (finite(v) if isinstance(v, float) else v) for key, v in kn.params.items()
                   if isinstance(v, (bool, int, float, str))},
    }


def find(lm: LanguageModel, prompts: Sequence[str], answer: str, params: Mapping[str, Any],
         on_prompt: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The knowledge neurons of ``answer`` after ``prompts`` (1 to :data:`MAX_FIND_PROMPTS`), found as the atlas
    finds them: :func:`~kneuron.attribution.find_knowledge_neurons` with the estimator ``params`` record
    (:func:`~kneuron.attribution.estimators.estimator_from_params`; ``params`` is ``atlas.params``) and their
    ``threshold`` and ``share``.

    ``on_prompt(done, total)`` is called once before the first prompt (``done`` 0) and after each prompt.
    Returns :func:`found_dict`. Every prompt is checked and encoded before the attribution starts.

    Raises:
        ProbeInputError: no prompt, too many, or a prompt or answer :func:`probe` would refuse (the message names
            the prompt by its number).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ProbeInputError("Give at least one prompt to find the neurons of.")
    if len(prompts) > MAX_FIND_PROMPTS:
        raise ProbeInputError(f"{len(prompts)} prompts were given; find takes at most {MAX_FIND_PROMPTS}: choose "
                              "fewer.")
    answer = check_answer(answer)
    parsed = []
    for number, text in enumerate(prompts, 1):
        what = f"prompt {number}" if len(prompts) > 1 else "prompt"
        prompt = _prompt(lm, check_prompt(text, what), what)
        _encoded(lm, prompt, answer, what)
        parsed.append(prompt)
    estimator = estimator_from_params(params)
    total, done = len(parsed), [0]

    def report(_index: int, _scores: NeuronScores) -> None:
        done[0] += 1
        if on_prompt is not None:
            on_prompt(done[0], total)

    if on_prompt is not None:
        on_prompt(0, total)
    kn = find_knowledge_neurons(lm, parsed, answer, threshold=float(params.get("threshold", 0.2)),
                                share=params.get("share", "adaptive"), estimator=estimator, on_prompt=report)
    return found_dict(lm, kn, [p.causal_text if lm.kind == "causal" else p.template for p in parsed])


# -------------------------------------------------------------------------------------------------------- save


def fact_from_probe(subject: str, relation: str, answer: str, templates: Sequence[str]) -> Fact:
    """The fact a page saves: ``subject``, ``relation`` (its name, e.g. "capital"), ``answer`` and 1 to
    :data:`MAX_FIND_PROMPTS` ``templates`` with ``[Y]`` where the answer goes and ``[X]`` where the subject does
    ("The capital of [X] is [Y]."), as the atlas's own facts are (id ``relation:subject``).

    Raises:
        ProbeInputError: a part :func:`check_answer` / :func:`check_prompt` refuses, or a template the facts API
            refuses (no [Y], two of them, a mask token).
    """
    subject = check_answer(subject, "subject")
    relation = check_answer(relation, "relation name")
    answer = check_answer(answer)
    if isinstance(templates, str):
        templates = [templates]
    if not templates or len(templates) > MAX_FIND_PROMPTS:
        raise ProbeInputError(f"A fact needs 1 to {MAX_FIND_PROMPTS} templates; {len(templates)} were given.")
    checked = tuple(check_prompt(t, f"template {i}") for i, t in enumerate(templates, 1))
    try:
        fact = Fact(subject, relation, answer, checked)
        fact.prompts()
    except FactError as exc:
        raise ProbeInputError(str(exc)) from None
    return fact


def _run_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`kneuron.store.run` keywords that reproduce an atlas's params (its identity): the estimator as the
    object the params record (it carries its steps, alphas, objective, norm and screen)."""
    arguments = {"estimator": estimator_from_params(params), "threshold": params["threshold"],
                 "share": params["share"], "known_only": params["known_only"], "top": params["top"],
                 "min_share": params["min_share"], "chunk_facts": params["chunk_facts"]}
    if "keep_scores" in params:
        arguments["keep_scores"] = params["keep_scores"]
    return arguments


def _same_fact(fact: Fact, row: Mapping[str, Any], atlas) -> bool:
    templates = atlas.stored_json(row["templates"], f"the templates of {row['id']!r}")
    templates = tuple(templates) if isinstance(templates, list) else ()
    return (row["relation"], row["subject"], row["object"], templates) == (
        fact.relation, fact.subject, fact.object, tuple(fact.templates))


def save_found(path: str | Path, lm: LanguageModel, fact: Fact) -> dict[str, Any]:
    """Add ``fact`` to the atlas at ``path`` with the atlas's own parameters (:func:`kneuron.store.run` on one fact:
    it appends, and refuses another model or other parameters), only when the user asked.

    Returns ``{"status", "fact_id", "message", "neurons", "atlas"}``; ``status`` is "added" (computed and stored),
    "exists" (the atlas already holds it, done: nothing computed), "dropped" (the atlas keeps only facts the model
    knows, and this one it does not: recorded as dropped, nothing computed) or "invalid" (this model cannot read
    its prompts; recorded so). ``neurons`` are the refined neuron names stored for the fact (empty unless done).

    Raises:
        KneuronError: no atlas at ``path``, another model than the atlas's, a fact of the same id with other
            content, or another run holding the atlas's lock (one line each).
    """
    from kneuron.store import Atlas, files, model_identity, run
    from kneuron.store.atlas import IDENTITY_KEYS

    path = Path(path).expanduser()
    with Atlas.open(path, read_only=True) as atlas:
        meta, params = atlas.meta, atlas.params
        row = atlas.fact_row(fact.id)
        same = row is None or _same_fact(fact, row, atlas)
    if not same:
        raise KneuronError(f"The atlas already holds a fact {fact.id!r} with other content ({row['subject']} -> "
                           f"{row['object']}): give this one another relation name or subject.")
    identity = model_identity(lm)
    if any(meta.get(key) != identity.get(key) for key in IDENTITY_KEYS):
        raise KneuronError(f"The atlas was made with {meta.get('model')} and the loaded model is {lm.name} (another "
                           "model or other weights): found neurons can only be saved into an atlas of the same "
                           "model.")
    try:  # the run would refuse too, but in words meant for the command line
        held = files.lock(path)
    except KneuronError:
        raise KneuronError(f"{path} is being written by another kneuron run (it holds the atlas's lock): nothing "
                           "was saved; try again when that run has finished.") from None
    if held is not None:  # None: no flock on this system (Windows), the run's own locking decides
        os.close(held)
    summary = run(lm, [fact], path, **_run_arguments(params), progress=False)
    if summary.computed:
        status, message = "added", f"{fact.id} was added to the atlas."
    elif summary.already_done:
        status, message = "exists", f"The atlas already holds {fact.id}; nothing was computed."
    elif summary.dropped:
        status, message = "dropped", (f"{lm.name} does not know {fact.id} by the atlas's known filter (top "
                                      f"{params.get('top')}, more than {params.get('min_share')} of the prompts), "
                                      "so the atlas records it as dropped and computed nothing.")
    else:
        status = "invalid"
        message = f"{lm.name} cannot read the prompts of {fact.id}: {summary.invalid.get(fact.id, 'unknown reason')}"
    neurons: list[str] = []
    if status in ("added", "exists"):
        with Atlas.open(path, read_only=True) as atlas:
            neurons = [str(n) for n in atlas.knowledge_neurons(fact.id).neurons]
    return {"status": status, "fact_id": fact.id, "message": message, "neurons": neurons, "atlas": str(path)}

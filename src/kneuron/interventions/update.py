"""Update a fact through its knowledge neurons (Dai et al. 2022, section 5.1).

For a fact (h, r, t) to become (h, r, t'), each knowledge neuron's value slot moves by

    delta = -lambda_old * e(t) + lambda_new * e(t')        (lambda_old = 1, lambda_new = 8 in the paper)

where e(x) is x's *output* embedding: its row of the unembedding matrix
(``lm.model.get_output_embeddings().weight``), the direction that raises x's logit. (The paper uses BERT's
word embeddings, which its MLM head shares with the unembedding; for tied models such as SmolLM2 the two
are the same matrix.) Every neuron gets the same delta.

Multi-token answers (the paper has single-token answers only): by default (``tokens="first"``) e(x) is the
embedding of x's **first** token, the token predicted at the position where knowledge neurons are found;
later tokens follow by the model's own continuation. ``tokens="mean"`` uses the mean of all its tokens'
embeddings instead. With "first", an old and a new answer that begin with the same token cannot be told
apart (the delta would only scale that token), so that is an error; use "mean" or another answer then.

Scale: the paper writes the formula with plain lambdas (``scale="absolute"``, the default). The official code
(Hunter-DDM/knowledge-neurons, ``6_edit_knowledge_sampled.py``) scales each neuron's lambdas by the size of its
value slot: lambda_old * |v_i| / |e(old)| and lambda_new * |v_i| / |e(new)|, i.e. unit embeddings times the
slot's norm (``scale="slot_norm"``). The two differ a lot when embeddings and value slots have different sizes.

Sign: a neuron adds ``a_i * v_i`` to the residual stream, so the update moves the output towards e(new) only where
its activation a_i is positive. That holds for BERT's GELU knowledge neurons (the paper's setting), but a gated
FFN's neuron (``act(gate) * up``, Llama, Gemma, ...) is as often negative: there the plain formula pushes *away*
from the new answer. ``sign="activation"`` multiplies each neuron's delta by the sign of its mean activation at the
answer position over the fact's prompts (the paper's formula when every activation is positive); the default
``"none"`` is the formula as written.

Shared layers (ALBERT: one layer's weights at every depth): the neurons (d1, i) and (d2, i) of depths that run one
block write through one value slot, so the slot moves once, by the delta above, and that changes neuron i at every
depth of the block (``lm.sharing(d)``), not only at the knowledge neuron's. With ``sign="activation"`` the slot's
sign is that of the summed mean activations of the fact's neurons that share it (the slot adds
``sum_d a_{d,i} * v_i`` to the stream). A slot is left out when any neuron that writes through it, at any depth,
is left out. The edit's ``meta["merged"]`` lists the slots several knowledge neurons share, and
``meta["shared_depths"]`` the depths each edited slot serves.

Like the paper, neurons shared by many facts of the relation are left out: pass ``exclude`` (neurons to
skip), or the relation's neuron counts (``relation_counts``: how many of the relation's ``n_facts`` facts
each neuron is a knowledge neuron of, e.g. ``atlas.relation_neurons(relation)``), from which
:func:`shared_neurons` leaves out those of more than ``max_share`` (10%) of the facts.

Example:
    >>> kn = find_knowledge_neurons(lm, fact)
    >>> edit = update_fact(lm, kn, "Paris", "Rome", relation_counts=counts, n_facts=40)
    >>> with edit.applied(lm):
    ...     answer_probability(lm, "The capital of France is", "Rome")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch

from kneuron.attribution.types import KnowledgeNeurons, Neuron
from kneuron.errors import EditBreaksModelError, EditError, EditOptionError, FactError, KneuronError
from kneuron.facts.encoding import answer_token_ids, encode
from kneuron.facts.fact import Fact, Prompt
from kneuron.interventions.edits import Edit, slot_sharers
from kneuron.interventions.sanity import check_keeps_model
from kneuron.models.language_model import LanguageModel

NeuronKey = tuple[int, int]
TokenRule = Literal["first", "mean"]
Scale = Literal["absolute", "slot_norm"]
SignRule = Literal["none", "activation"]
NeuronsLike = KnowledgeNeurons | Iterable[Neuron | NeuronKey]


def neuron_keys(neurons: NeuronsLike | Neuron | NeuronKey) -> list[NeuronKey]:
    """``(layer, index)`` of each neuron of a KnowledgeNeurons, Neuron list or pair list; duplicates dropped."""
    if isinstance(neurons, KnowledgeNeurons):
        neurons = neurons.neurons
    elif isinstance(neurons, Neuron) or (isinstance(neurons, tuple) and len(neurons) == 2
                                         and all(isinstance(x, int) for x in neurons)):
        neurons = [neurons]
    keys = []
    for n in neurons:
        if isinstance(n, Neuron):
            keys.append(n.key)
        else:
            try:
                layer, index = n
            except (TypeError, ValueError):
                raise EditOptionError(f"{n!r} is not a neuron: give Neuron objects or (layer, index) pairs.") from None
            keys.append((int(layer), int(index)))
    return list(dict.fromkeys(keys))


def shared_neurons(relation_counts: Mapping[NeuronKey, int], n_facts: int, max_share: float = 0.1) -> set[NeuronKey]:
    """Neurons that are knowledge neurons of more than ``max_share`` of a relation's ``n_facts`` facts.

    A neuron of a single fact is never "shared", so that in a relation of fewer than 10 facts a fact's own
    neurons are not all left out (1/n > 10% there).
    """
    if n_facts <= 0:
        raise EditOptionError(f"n_facts must be positive (the number of facts behind the relation's counts), not "
                              f"{n_facts}.")
    if not 0 <= max_share <= 1:
        raise EditOptionError(f"max_share is a fraction between 0 and 1, not {max_share}.")
    return {(int(k[0]), int(k[1])) for k, count in relation_counts.items()
            if count >= 2 and count > max_share * n_facts}


def _default_prompt(lm: LanguageModel) -> Prompt:
    return Prompt(prefix="The answer is ", suffix=".", template="The answer is [Y].")


def answer_ids(lm: LanguageModel, answer: str, prompt: Prompt | None = None) -> list[int]:
    """The answer's token ids after ``prompt`` (its leading-space convention); KneuronError for an answer the
    model cannot produce (it contains the unknown token, or ids beyond the output vocabulary)."""
    prompt = prompt or _default_prompt(lm)
    ids = answer_token_ids(lm, prompt, answer)
    unk = getattr(lm.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise FactError(f"The answer {answer!r} is not in {lm.name}'s vocabulary (it contains the unknown token "
                        f"{lm.tokenizer.unk_token!r}); choose an answer spelled with known tokens.")
    vocab = output_embeddings(lm).shape[0]
    if any(not 0 <= i < vocab for i in ids):
        raise FactError(f"The answer {answer!r} has token ids {ids} outside {lm.name}'s output vocabulary ({vocab}).")
    return ids


def first_answer_id(lm: LanguageModel, answer: str, prompt: Prompt | None = None) -> int | None:
    """The first of :func:`answer_ids`, or None for an answer the model cannot produce: what the studies compare
    when they look for a new answer that begins with another token than the old one."""
    try:
        return answer_ids(lm, answer, prompt)[0]
    except KneuronError:
        return None


def output_embeddings(lm: LanguageModel) -> torch.Tensor:
    """The unembedding matrix (vocab, hidden); EditError when the model has none or it does not match the slots."""
    head = lm.model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise EditError(f"{lm.name} has no output embeddings (no LM head), so answers have no embedding to write.")
    weight = head.weight
    hidden = lm.value_slot(0, 0).shape[0]
    if weight.dim() != 2 or weight.shape[1] != hidden:
        raise EditError(f"{lm.name}'s output embeddings have shape {tuple(weight.shape)}; they do not live in the "
                        f"residual stream the value slots write to ({hidden} entries; factorised embeddings, as "
                        "ALBERT's, are narrower than the hidden states), so answers have no embedding to write: "
                        "erase with mode 'zero' instead.")
    return weight


def answer_embedding(lm: LanguageModel, ids: Sequence[int], tokens: TokenRule = "first") -> torch.Tensor:
    """e(answer): the output embedding of its first token, or the mean over its tokens (a detached copy)."""
    weight = output_embeddings(lm).detach()
    if tokens == "first":
        return weight[ids[0]].clone()
    if tokens == "mean":
        return weight[list(ids)].mean(dim=0)
    raise EditOptionError(f"tokens must be 'first' or 'mean', not {tokens!r}.")


def activation_signs(lm: LanguageModel, keys: Sequence[NeuronKey], prompts: Sequence[Prompt], answer: str,
                     ) -> dict[NeuronKey, float]:
    """+1.0 or -1.0 per neuron: the sign of its mean activation at the answer position over ``prompts`` (+1 when
    it is exactly 0)."""
    return {k: -1.0 if total < 0 else 1.0 for k, total in activation_totals(lm, keys, prompts, answer).items()}


@torch.no_grad()
def activation_totals(lm: LanguageModel, keys: Sequence[NeuronKey], prompts: Sequence[Prompt], answer: str,
                      ) -> dict[NeuronKey, float]:
    """Each neuron's activation at the answer position, summed over ``prompts``."""
    from kneuron.facts.encoding import encode
    from kneuron.models.hooks import capture

    layers = sorted({layer for layer, _ in keys})
    totals = {k: 0.0 for k in keys}
    for prompt in prompts:
        query = encode(lm, prompt, answer)
        with capture(lm, layers, positions=query.position) as acts:
            lm.model(input_ids=query.input_ids[None].to(lm.device))
        for layer, index in keys:
            totals[layer, index] += float(acts[layer][0, 0, index])
    return totals


def update_fact(
    lm: LanguageModel,
    neurons: NeuronsLike,
    old: str | None,
    new: str,
    *,
    lambda_old: float = 1.0,
    lambda_new: float = 8.0,
    exclude: Iterable[Neuron | NeuronKey] | None = None,
    relation_counts: Mapping[NeuronKey, int] | None = None,
    n_facts: int | None = None,
    max_share: float = 0.1,
    tokens: TokenRule = "first",
    scale: Scale = "absolute",
    sign: SignRule = "none",
    prompts: Sequence[Prompt] | None = None,
    prompt: Prompt | None = None,
    fact: Fact | None = None,
) -> Edit:
    """The edit that moves each knowledge neuron's value slot by ``-lambda_old*e(old) + lambda_new*e(new)``.

    Args:
        lm: the model (not changed: apply the returned :class:`Edit`).
        neurons: the fact's knowledge neurons (KnowledgeNeurons, Neurons or (layer, index) pairs).
        old: the current answer (None takes the fact's object).
        new: the wanted answer.
        lambda_old: the paper's lambda_1 (1).
        lambda_new: the paper's lambda_2 (8).
        exclude: neurons to leave out.
        relation_counts: with ``n_facts`` and ``max_share``, also leave out :func:`shared_neurons` of the
            relation (how many of its facts each neuron belongs to).
        n_facts: the relation's number of facts.
        max_share: the share of them above which a neuron is shared.
        tokens: "first" or "mean": e of a multi-token answer (see the module docstring).
        scale: "absolute" (the paper's formula) or "slot_norm" (the official code's: lambdas times |v_i| / |e|).
        sign: "none" (the formula) or "activation" (each delta times the sign of the neuron's mean activation at the
            answer position over ``prompts``, default the fact's prompts).
        prompts: the prompts the activation signs are read on.
        prompt: where the answers are tokenized (leading space); default the fact's first prompt.
        fact: the fact being updated (default ``neurons.fact``); used for the label and the prompt.

    Raises:
        KneuronError: no neurons left to edit, an answer outside the vocabulary, equal answers, non-finite
            lambdas (or a delta that overflows to inf); EditBreaksModelError: the edit, applied, makes the outputs
            on the fact's own prompts (``prompts``, else the fact's, else ``prompt``) non-finite or uniform
            (:mod:`kneuron.interventions.sanity`; the model is restored exactly).
    """
    for name, value in (("lambda_old", lambda_old), ("lambda_new", lambda_new)):
        try:
            finite = math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise EditOptionError(f"{name} must be a finite number, not {value!r}.")
    if isinstance(neurons, KnowledgeNeurons) and fact is None:
        fact = neurons.fact
    if old is None:
        if fact is None:
            raise EditOptionError("Give the old answer (or a fact whose object it is).")
        old = fact.object
    if prompt is None and fact is not None and fact.templates:
        prompt = fact.prompts()[0]
    keys = neuron_keys(neurons)
    if not keys:
        raise EditError("There are no neurons to edit: the fact has no knowledge neurons.")
    for key in keys:
        lm.check_neuron(*key)
    left_out = set(neuron_keys(exclude)) if exclude is not None else set()
    if relation_counts is not None:
        if n_facts is None:
            raise EditOptionError("relation_counts needs n_facts: how many facts of the relation the counts come from.")
        left_out |= shared_neurons(relation_counts, n_facts, max_share)
    # a slot is left out with any neuron that writes through it (with shared layers, at any depth)
    kept = [k for k in keys if not any((depth, k[1]) in left_out for depth in lm.sharing(k[0]))]
    if not kept:
        raise EditError(f"There are no neurons to edit: all {len(keys)} knowledge neurons are left out as shared "
                        "by many facts of the relation (or excluded).")
    old_ids, new_ids = answer_ids(lm, old, prompt), answer_ids(lm, new, prompt)
    if old_ids == new_ids:
        raise EditOptionError(f"The old and new answers {old!r} and {new!r} are the same tokens: nothing to update.")
    if tokens == "first" and old_ids[0] == new_ids[0]:
        raise EditOptionError(f"{old!r} and {new!r} begin with the same token, so their first-token embeddings "
                              "cannot tell them apart; use tokens='mean' or another answer.")
    e_old, e_new = answer_embedding(lm, old_ids, tokens), answer_embedding(lm, new_ids, tokens)
    dtype = torch.promote_types(lm.ffn_out(kept[0][0]).weight.dtype, torch.float32)
    e_old, e_new = e_old.to(dtype), e_new.to(dtype)
    sharers = slot_sharers(lm, kept)  # one delta per value slot (with shared layers, several neurons share one)
    if scale == "absolute":
        delta = -lambda_old * e_old + lambda_new * e_new
        deltas = {k: delta for k in sharers}
    elif scale == "slot_norm":
        deltas = {}
        for k in sharers:
            norm = lm.value_slot(*k).detach().to("cpu", dtype).norm()
            deltas[k] = -(lambda_old * norm / e_old.norm()) * e_old + (lambda_new * norm / e_new.norm()) * e_new
    else:
        raise EditOptionError(f"scale must be 'absolute' or 'slot_norm', not {scale!r}.")
    signs: dict[NeuronKey, float] = {}
    if sign == "activation":
        bag = list(prompts) if prompts else (fact.prompts() if fact is not None and fact.templates else [])
        if not bag:
            raise EditOptionError("sign='activation' needs the fact's prompts (give fact= or prompts=) to read the "
                                  "neurons' activations on.")
        totals = activation_totals(lm, kept, bag, old)
        signs = {k: -1.0 if sum(totals[m] for m in members) < 0 else 1.0 for k, members in sharers.items()}
        deltas = {k: d * signs[k] for k, d in deltas.items()}
    elif sign != "none":
        raise EditOptionError(f"sign must be 'none' or 'activation', not {sign!r}.")
    deltas = {m: deltas[k] for k, members in sharers.items() for m in members}  # Edit.build writes each slot once
    name, value = max((("lambda_old", lambda_old), ("lambda_new", lambda_new)), key=lambda item: abs(item[1]))
    cause = f"{name}={value:g} (scale {scale})"
    for key, delta in deltas.items():  # a finite lambda times a slot's norm (or an embedding) can overflow here
        if not bool(torch.isfinite(delta).all()):
            raise EditBreaksModelError(
                f"Refused: with {cause}, the change of L{key[0]}.N{key[1]}'s value slot overflows to a non-finite "
                "value, so nothing was applied or saved; use a smaller value (the paper's lambdas are 1 and 8).")
    what = f"{fact.subject} {fact.relation}: " if fact is not None else ""
    meta = {
        "fact_id": fact.id if fact is not None else "", "relation": fact.relation if fact is not None else "",
        "old": old, "new": new, "old_ids": old_ids, "new_ids": new_ids, "lambda_old": lambda_old,
        "lambda_new": lambda_new, "tokens": tokens, "scale": scale, "sign": sign,
        "signs": [[k[0], k[1], v] for k, v in signs.items()],
        "left_out": sorted([list(k) for k in set(keys) - set(kept)]), "max_share": max_share,
    }
    edit = Edit.build(lm, "add", deltas, kind="update", label=f"{what}{old} -> {new}", meta=meta)
    # refused when it breaks the model on the fact's own prompts (a finite 3e38 overflows inside the model)
    own = list(prompts) if prompts else (fact.prompts() if fact is not None and fact.templates else
                                         [prompt or _default_prompt(lm)])
    check_keeps_model(lm, edit, [encode(lm, p, old) for p in own], cause)
    return edit

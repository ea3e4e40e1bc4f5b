"""Turn a prompt and an answer into token ids, and score the answer.

An :class:`EncodedQuery` is the one representation the rest of kneuron works on, for both model
kinds: the input ids, the answer's token ids, and the positions whose logits predict each answer
token. For a causal LM the input is prompt + answer[:-1] (teacher forcing) and the first target
position is the prompt's last token; for a masked LM the answer is replaced by one mask per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kneuron.errors import AnswerVocabularyError, FactError
from kneuron.facts.fact import Prompt
from kneuron.models.language_model import LanguageModel


@dataclass(frozen=True)
class EncodedQuery:
    """Input ids and answer targets of one prompt.

    Attributes:
        input_ids: (seq,) ids the model reads.
        answer_ids: the answer's token ids, in order.
        target_positions: position whose logits predict each answer token.
        text: the prompt as the model reads it (masks shown as the mask token).
    """

    input_ids: torch.Tensor
    answer_ids: tuple[int, ...]
    target_positions: tuple[int, ...]
    text: str = ""

    @property
    def position(self) -> int:
        """Where attribution looks: the position that predicts the first answer token."""
        return self.target_positions[0]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


class _Tokens:
    """Token ids of texts, and the tokenizer's special ids, looked up once.

    :func:`encode_many` fills it with batched tokenizer calls ahead of use; a text not filled in is tokenized
    on its own, exactly as before, so results never depend on what was filled.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.known: dict[tuple[str, bool], list[int]] = {}
        self.attributes: dict[str, object] = {}

    def fill(self, texts: Sequence[str], special: bool) -> None:
        todo = list(dict.fromkeys(t for t in texts if (t, special) not in self.known))
        if todo:
            found = self.tokenizer(todo, add_special_tokens=special, return_attention_mask=False,
                                   return_token_type_ids=False)["input_ids"]
            for text, ids in zip(todo, found, strict=True):
                self.known[(text, special)] = list(ids)

    def ids(self, text: str, special: bool) -> list[int]:
        ids = self.known.get((text, special))
        return list(ids) if ids is not None else _ids(self.tokenizer, text, special)

    def attr(self, name: str):
        """``getattr(tokenizer, name, None)``, cached (transformers' tokenizer attribute look-up is slow)."""
        if name not in self.attributes:
            self.attributes[name] = getattr(self.tokenizer, name, None)
        return self.attributes[name]


def _answer_texts(lm: LanguageModel, prompt: Prompt, answer: str) -> tuple[str, str] | None:
    """The (context, context + separator + answer) that :func:`answer_token_ids` tokenizes, or None."""
    answer = answer.strip()
    if not answer:
        return None
    sep = " " if prompt.space else ""
    context = prompt.prefix.rstrip(" ") if lm.kind == "mlm" else prompt.causal_text
    return (context, context + sep + answer) if context else None


def answer_token_ids(lm: LanguageModel, prompt: Prompt, answer: str, _tokens: _Tokens | None = None) -> list[int]:
    """The answer's token ids as the model sees them after ``prompt.prefix``.

    Tokenizes prefix+answer and prefix alone and keeps the difference, so that leading-space
    conventions (BPE's "Ġ", SentencePiece's "▁") come out as they would in running text. When the
    two tokenizations disagree on the prefix (a merge across the boundary), the answer is
    tokenized on its own, with a leading space when the template has one.

    Raises:
        AnswerVocabularyError: an answer the tokenizer cannot spell (nothing, or a masked model's unknown token).
        FactError: an empty answer.
    """
    if not answer.strip():
        raise FactError("The answer is empty: give the word(s) the model should predict.")
    tokens = _tokens or _Tokens(lm.tokenizer)
    answer = answer.strip()
    sep = " " if prompt.space else ""
    context = prompt.prefix.rstrip(" ") if lm.kind == "mlm" else prompt.causal_text
    if context:
        base = tokens.ids(context, special=False)
        full = tokens.ids(context + sep + answer, special=False)
        if full[: len(base)] == base and len(full) > len(base):
            ids = full[len(base):]
        else:
            ids = tokens.ids(sep + answer, special=False)
    else:
        ids = tokens.ids(answer, special=False)
    if not ids:
        raise AnswerVocabularyError(f"The answer {answer!r} tokenizes to nothing with {lm.name}'s tokenizer.")
    unk = tokens.attr("unk_token_id") if lm.kind == "mlm" else None
    if unk is not None and unk in ids:
        raise AnswerVocabularyError(
            f"The answer {answer!r} contains a word that {lm.name}'s vocabulary does not have (it becomes "
            f"{lm.tokenizer.unk_token!r}); the model cannot predict it. Choose an answer spelled with known tokens."
        )
    return ids


def prompt_from_text(lm: LanguageModel, text: str) -> Prompt:
    """A Prompt from text a person typed: plain text to continue (or a template with [Y]) for a causal model; for
    a masked model a template with one [Y], or with the model's own mask token once in its place.

    Raises:
        FactError: a masked model's prompt without exactly one [Y] (or mask token), or what
            :meth:`Prompt.from_text` / :meth:`Prompt.from_template` refuse.
    """
    if lm.kind == "causal":
        return Prompt.from_text(text)  # (encode and top_predictions refuse one with nothing before [Y])
    mask = getattr(lm.tokenizer, "mask_token", None)
    if mask and "[Y]" not in text and text.count(mask) == 1:
        text = text.replace(mask, "[Y]")
    if text.count("[Y]") != 1:
        where = f"[Y] (or {mask})" if mask else "[Y]"
        raise FactError(f"{lm.name} is a masked model: mark the answer's place with one {where}, "
                        "e.g. 'The capital of France is [Y].'")
    return Prompt.from_template(text)


def _causal_context(prompt: Prompt) -> str:
    """The text a causal model continues; an error when there is none."""
    if not prompt.causal_text.strip():
        raise FactError(
            f"Template {prompt.template!r} has nothing before [Y]: a causal model needs text to continue. "
            "Reword it so that the answer comes after some text."
        )
    return prompt.causal_text


def _masked_text(prompt: Prompt, mask: str, count: int) -> str:
    """The sentence a masked LM reads: ``count`` mask tokens where the answer goes."""
    sep = " " if prompt.space else ""
    return prompt.prefix.rstrip(" ") + sep + " ".join([mask] * count) + prompt.suffix


def encode(lm: LanguageModel, prompt: Prompt | str, answer: str, _tokens: _Tokens | None = None) -> EncodedQuery:
    """Encode ``prompt`` (a Prompt, a template with [Y], or plain causal text) with ``answer``."""
    if isinstance(prompt, str):
        prompt = Prompt.from_text(prompt) if lm.kind == "causal" else Prompt.from_template(prompt)
    tokens = _tokens or _Tokens(lm.tokenizer)
    answer_ids = answer_token_ids(lm, prompt, answer, tokens)
    if lm.kind == "causal":
        prompt_ids = tokens.ids(_causal_context(prompt), special=True)
        if prompt_ids and prompt_ids[-1] == tokens.attr("eos_token_id") and len(prompt_ids) > 1:
            prompt_ids = prompt_ids[:-1]  # some tokenizers append EOS; a continuation must not follow it
        input_ids = prompt_ids + answer_ids[:-1]
        targets = tuple(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids)))
        text = prompt.causal_text
    else:
        mask = tokens.attr("mask_token")
        if mask is None:
            raise FactError(f"{lm.name}'s tokenizer has no mask token; it cannot be used as a masked LM.")
        text = _masked_text(prompt, mask, len(answer_ids))
        input_ids = tokens.ids(text, special=True)
        mask_id = tokens.attr("mask_token_id")
        targets = tuple(i for i, t in enumerate(input_ids) if t == mask_id)
        if len(targets) != len(answer_ids):
            raise FactError(
                f"Expected {len(answer_ids)} mask tokens in {text!r} but the tokenizer produced {len(targets)}."
            )
    lm.check_length(len(input_ids))
    return EncodedQuery(torch.tensor(input_ids, dtype=torch.long), tuple(answer_ids), targets, text)


def encode_many(lm: LanguageModel, items: Sequence[tuple[Prompt, str]]) -> list[EncodedQuery]:
    """``[encode(lm, prompt, answer) for prompt, answer in items]``, with the tokenizer called on batches of
    texts instead of three times per prompt (the cost that dominated ranking thousands of facts).

    The result is the same as the loop's, and so is the first error raised.
    """
    tokens = _Tokens(lm.tokenizer)
    pairs = [texts for prompt, answer in items if (texts := _answer_texts(lm, prompt, answer)) is not None]
    tokens.fill([text for pair in pairs for text in pair], special=False)
    if lm.kind == "causal":
        tokens.fill([p.causal_text for p, _ in items if p.causal_text.strip()], special=True)
    elif (mask := tokens.attr("mask_token")) is not None:
        texts = []
        for prompt, answer in items:
            try:
                texts.append(_masked_text(prompt, mask, len(answer_token_ids(lm, prompt, answer, tokens))))
            except FactError:
                continue  # raised again, in order, by encode below
        tokens.fill(texts, special=True)
    return [encode(lm, prompt, answer, tokens) for prompt, answer in items]


@dataclass(frozen=True)
class AnswerProbability:
    """How much the model believes an answer: joint probability and first-token rank (0 = top-1)."""

    probability: float
    rank: int
    token_probabilities: tuple[float, ...]

    @property
    def correct(self) -> bool:
        return self.rank == 0


def answer_text(lm: LanguageModel, query: EncodedQuery, answer: str | None) -> str:
    """The answer as text, as attribution records it with a prompt's scores: ``answer`` when the caller gave one,
    else the query's answer tokens decoded."""
    return answer if answer is not None else lm.tokenizer.decode(list(query.answer_ids))


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a half type; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def answer_log_probs(logits: torch.Tensor, query: EncodedQuery) -> torch.Tensor:
    """Log-probability of each answer token, from (seq, vocab) logits of one row."""
    positions = torch.tensor(query.target_positions, device=logits.device)
    return _target_log_probs(logits[positions], query)


def _target_log_probs(at_targets: torch.Tensor, query: EncodedQuery) -> torch.Tensor:
    """Log-probability of each answer token, from (answer tokens, vocab) logits at the target positions."""
    targets = torch.tensor(query.answer_ids, device=at_targets.device)
    return torch.log_softmax(at_least_float32(at_targets), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def answer_from_logits(at_targets: torch.Tensor, query: EncodedQuery) -> AnswerProbability:
    """The :class:`AnswerProbability` of ``query`` from its (answer tokens, vocab) logits at its target positions
    (the first row, at :attr:`EncodedQuery.position`, gives the first token's rank), in at least float32."""
    log_probs = _target_log_probs(at_targets, query)
    first = at_least_float32(at_targets[0])
    rank = int((first > first[query.answer_ids[0]]).sum())
    return AnswerProbability(float(log_probs.sum().exp()), rank, tuple(float(p) for p in log_probs.exp()))


def model_logits(lm: LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq, vocab) logits of a batch of equal-length id rows."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    return lm.model(input_ids=input_ids.to(lm.device)).logits


@torch.no_grad()
def answer_probability(lm: LanguageModel, prompt: Prompt | str | EncodedQuery, answer: str | None = None,
                       ) -> AnswerProbability:
    """Joint probability of ``answer`` after ``prompt`` (teacher-forced product of its tokens' probabilities;
    for a masked LM, the product over one mask per answer token) and the rank of its first token.

    Example:
        >>> answer_probability(lm, "The capital of France is", "Paris").probability
        0.77...
    """
    query = prompt if isinstance(prompt, EncodedQuery) else encode(lm, prompt, answer or "")
    logits = model_logits(lm, query.input_ids)[0]
    return answer_from_logits(logits[torch.tensor(query.target_positions, device=logits.device)], query)


@torch.no_grad()
def top_predictions(lm: LanguageModel, prompt: Prompt | str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens (causal) or mask fillers (masked) with their probabilities."""
    tokenizer = lm.tokenizer
    if isinstance(prompt, str):
        prompt = Prompt.from_text(prompt) if lm.kind == "causal" else Prompt.from_template(prompt)
    if lm.kind == "causal":
        ids = _ids(tokenizer, _causal_context(prompt), special=True)
        position = len(ids) - 1
    else:
        sep = " " if prompt.space else ""
        ids = _ids(tokenizer, prompt.prefix.rstrip(" ") + sep + tokenizer.mask_token + prompt.suffix, special=True)
        position = ids.index(tokenizer.mask_token_id)
    lm.check_length(len(ids))
    logits = at_least_float32(model_logits(lm, torch.tensor(ids))[0, position])
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, k)
    return [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices, strict=True)]

"""Turn a prompt and an answer into token ids, and score the answer.

An :class:`EncodedQuery` is the one representation the rest of kneuron works on, for both model
kinds: the input ids, the answer's token ids, and the positions whose logits predict each answer
token. For a causal LM the input is prompt + answer[:-1] (teacher forcing) and the first target
position is the prompt's last token; for a masked LM the answer is replaced by one mask per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kneuron.errors import FactError
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


def answer_token_ids(lm: LanguageModel, prompt: Prompt, answer: str) -> list[int]:
    """The answer's token ids as the model sees them after ``prompt.prefix``.

    Tokenizes prefix+answer and prefix alone and keeps the difference, so that leading-space
    conventions (BPE's "Ġ", SentencePiece's "▁") come out as they would in running text. When the
    two tokenizations disagree on the prefix (a merge across the boundary), the answer is
    tokenized on its own, with a leading space when the template has one.
    """
    if not answer.strip():
        raise FactError("The answer is empty: give the word(s) the model should predict.")
    tokenizer = lm.tokenizer
    answer = answer.strip()
    if lm.kind == "mlm":
        sep = " " if prompt.space else ""
        context = prompt.prefix.rstrip(" ")
    else:
        sep, context = " " if prompt.space else "", prompt.causal_text
    if context:
        base = _ids(tokenizer, context, special=False)
        full = _ids(tokenizer, context + sep + answer, special=False)
        if full[: len(base)] == base and len(full) > len(base):
            ids = full[len(base):]
        else:
            ids = _ids(tokenizer, sep + answer, special=False)
    else:
        ids = _ids(tokenizer, answer, special=False)
    if not ids:
        raise FactError(f"The answer {answer!r} tokenizes to nothing with {lm.name}'s tokenizer.")
    unk = getattr(tokenizer, "unk_token_id", None)
    if lm.kind == "mlm" and unk is not None and unk in ids:
        raise FactError(
            f"The answer {answer!r} contains a word that {lm.name}'s vocabulary does not have (it becomes "
            f"{tokenizer.unk_token!r}); the model cannot predict it. Choose an answer spelled with known tokens."
        )
    return ids


def _causal_context(prompt: Prompt) -> str:
    """The text a causal model continues; an error when there is none."""
    if not prompt.causal_text.strip():
        raise FactError(
            f"Template {prompt.template!r} has nothing before [Y]: a causal model needs text to continue. "
            "Reword it so that the answer comes after some text."
        )
    return prompt.causal_text


def encode(lm: LanguageModel, prompt: Prompt | str, answer: str) -> EncodedQuery:
    """Encode ``prompt`` (a Prompt, a template with [Y], or plain causal text) with ``answer``."""
    if isinstance(prompt, str):
        prompt = Prompt.from_text(prompt) if lm.kind == "causal" else Prompt.from_template(prompt)
    tokenizer = lm.tokenizer
    answer_ids = answer_token_ids(lm, prompt, answer)
    if lm.kind == "causal":
        prompt_ids = _ids(tokenizer, _causal_context(prompt), special=True)
        if prompt_ids and prompt_ids[-1] == getattr(tokenizer, "eos_token_id", None) and len(prompt_ids) > 1:
            prompt_ids = prompt_ids[:-1]  # some tokenizers append EOS; a continuation must not follow it
        input_ids = prompt_ids + answer_ids[:-1]
        targets = tuple(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids)))
        text = prompt.causal_text
    else:
        mask = tokenizer.mask_token
        if mask is None:
            raise FactError(f"{lm.name}'s tokenizer has no mask token; it cannot be used as a masked LM.")
        sep = " " if prompt.space else ""
        text = prompt.prefix.rstrip(" ") + sep + " ".join([mask] * len(answer_ids)) + prompt.suffix
        input_ids = _ids(tokenizer, text, special=True)
        targets = tuple(i for i, t in enumerate(input_ids) if t == tokenizer.mask_token_id)
        if len(targets) != len(answer_ids):
            raise FactError(
                f"Expected {len(answer_ids)} mask tokens in {text!r} but the tokenizer produced {len(targets)}."
            )
    lm.check_length(len(input_ids))
    return EncodedQuery(torch.tensor(input_ids, dtype=torch.long), tuple(answer_ids), targets, text)


@dataclass(frozen=True)
class AnswerProbability:
    """How much the model believes an answer: joint probability and first-token rank (0 = top-1)."""

    probability: float
    rank: int
    token_probabilities: tuple[float, ...]

    @property
    def correct(self) -> bool:
        return self.rank == 0


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a half type; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def answer_log_probs(logits: torch.Tensor, query: EncodedQuery) -> torch.Tensor:
    """Log-probability of each answer token, from (seq, vocab) logits of one row."""
    positions = torch.tensor(query.target_positions, device=logits.device)
    targets = torch.tensor(query.answer_ids, device=logits.device)
    return torch.log_softmax(at_least_float32(logits[positions]), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


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
    log_probs = answer_log_probs(logits, query)
    first = at_least_float32(logits[query.position])
    rank = int((first > first[query.answer_ids[0]]).sum())
    return AnswerProbability(float(log_probs.sum().exp()), rank, tuple(float(p) for p in log_probs.exp()))


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
    logits = at_least_float32(model_logits(lm, torch.tensor(ids))[0, position])
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, k)
    return [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices, strict=True)]

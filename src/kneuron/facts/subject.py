"""Where a prompt's subject sits among the tokens the model reads: its token positions, and its last token.

Causal tracing corrupts the subject's tokens and finds the facts' recall at the subject's last token (Meng et al.
2022); ROME's key is the FFN activation there. The positions come from the tokenizer's character offsets, not from
re-tokenizing pieces of the text, so that a subject whose first token merges with the space or the word before it
("▁France", "ĠFrance") is found as the model reads it: a token is the subject's when its characters overlap the
subject's.

Example:
    >>> query = encode(lm, prompt, fact.object)
    >>> subject_positions(lm, prompt, fact.subject, query)     # (3,) for "The capital of France is"
    >>> subject_last_position(lm, prompt, fact.subject, query)  # 3
"""

from __future__ import annotations

from kneuron.errors import FactError
from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.fact import OBJECT, SUBJECT, Prompt
from kneuron.models.language_model import LanguageModel


def subject_span(prompt: Prompt, subject: str, text: str) -> tuple[int, int]:
    """The ``(start, end)`` characters of ``subject`` in ``text``, the prompt as the model reads it (a causal model:
    ``prompt.causal_text``; a masked one: the sentence with its masks at [Y]).

    From the prompt's template where it has [X]: the text before [X] is the template's own, so the place is exact
    even when the subject's words occur elsewhere in the prompt; for a plain-text prompt, the subject's first
    occurrence.

    Raises:
        FactError: the subject is not in ``text`` (a causal template whose [X] comes after [Y]).
    """
    template = prompt.template
    if SUBJECT in template and OBJECT in template:
        before, after = template.split(OBJECT)
        # after the answer only a masked model reads it, after the masks
        start = (before.index(SUBJECT) if SUBJECT in before
                 else len(text) - len(prompt.suffix) + after.index(SUBJECT))
    else:
        start = text.find(subject)
    end = start + len(subject)
    if start < 0 or text[start:end] != subject:
        raise FactError(f"The subject {subject!r} is not in the text the model reads, {text!r} (a causal model reads "
                        "only what comes before [Y]); choose a template with [X] before [Y].")
    return start, end


def subject_positions(lm: LanguageModel, prompt: Prompt, subject: str, query: EncodedQuery) -> tuple[int, ...]:
    """The positions of ``query.input_ids`` whose tokens overlap the subject's characters, ascending.

    Raises:
        FactError: the subject is not in the prompt the model reads, no token covers it, the tokenizer gives no
            character offsets (a slow tokenizer) or tokenizes the text differently from the encoded query.
    """
    start, end = subject_span(prompt, subject, query.text)
    try:
        encoded = lm.tokenizer(query.text, add_special_tokens=True, return_offsets_mapping=True)
    except NotImplementedError:  # slow (Python) tokenizers have no offsets
        raise FactError(f"{lm.name}'s tokenizer gives no character offsets (a slow tokenizer), so the subject's "
                        "tokens cannot be found; load the model with its fast tokenizer.") from None
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    known = query.input_ids.tolist()
    n = min(len(ids), len(known))
    if ids[:n] != known[:n] or n == 0:
        raise FactError(f"{lm.name}'s tokenizer reads {query.text!r} differently with offsets than it encoded it; the "
                        "subject's tokens cannot be placed.")
    found = tuple(i for i, (s, e) in enumerate(offsets[:n]) if e > s and s < end and e > start)
    if not found:
        raise FactError(f"No token of {query.text!r} covers the subject {subject!r}.")
    return found


def subject_last_position(lm: LanguageModel, prompt: Prompt, subject: str, query: EncodedQuery) -> int:
    """The position of the subject's last token in ``query.input_ids`` (ROME's key is the FFN activation there)."""
    return subject_positions(lm, prompt, subject, query)[-1]


__all__ = ["subject_last_position", "subject_positions", "subject_span"]

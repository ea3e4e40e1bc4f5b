"""Facts and their prompts: a (subject, relation, object) triple seen through several templates.

Templates are PARAREL-style: ``"The capital of [X] is [Y]."``. ``[X]`` takes the subject and
``[Y]`` stands for the answer. A masked LM reads the whole sentence with one mask per answer token
at ``[Y]``; a causal LM reads the text before ``[Y]`` and is asked to continue it with the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kneuron.errors import FactError

SUBJECT, OBJECT = "[X]", "[Y]"

#: the mask token as the common tokenizers spell it: BERT, ALBERT, ELECTRA, DeBERTa, ModernBERT ``[MASK]``;
#: RoBERTa, XLM-R, BART, MPNet, XLNet, Funnel ``<mask>``; any case. kneuron places masks itself, at [Y].
MASK_TOKEN = re.compile(r"\[mask\]|<mask>", re.IGNORECASE)

CAUSAL_HOW = ("a causal model reads the text before [Y] and the answer continues it: write a template such as "
              "'The capital of [X] is [Y].' or, for predict/find, plain text such as 'The capital of France is'")


def mask_token_in(text: str) -> str | None:
    """The first mask-token spelling (``[MASK]``, ``<mask>``) found in ``text``, or None."""
    found = MASK_TOKEN.search(text)
    return found.group() if found else None


def _refuse_mask(text: str, what: str) -> None:
    mask = mask_token_in(text)
    if mask is None:
        return
    if what == "Template":
        raise FactError(f"Template {text!r} contains the mask token {mask}: mark the answer's place with [Y] "
                        f"(kneuron puts the masks there for a masked model); {CAUSAL_HOW}.")
    raise FactError(f"The prompt {text!r} contains the mask token {mask}, which a causal model reads as literal "
                    f"text: {CAUSAL_HOW}.")


def check_filler(value: str, name: str, fact: str) -> None:
    """Raise FactError when a subject or object (``name``) contains a placeholder or a mask token.

    ``fact`` names the fact in the message, e.g. ``"capital:France -> Paris"``.
    """
    for placeholder in (SUBJECT, OBJECT):
        if placeholder in value:
            raise FactError(
                f"Fact {fact}: the {name} {value!r} contains {placeholder}, which marks a place in a template; "
                "it must be plain text."
            )
    mask = mask_token_in(value)
    if mask is not None:
        raise FactError(f"Fact {fact}: the {name} {value!r} contains the mask token {mask}; "
                        "it must be plain text.")


def check_template(template: str) -> None:
    """Raise FactError unless ``template`` has exactly one [Y], at most one [X] and no mask token."""
    _refuse_mask(template, "Template")
    if template.count(OBJECT) != 1:
        raise FactError(
            f"Template {template!r} has {template.count(OBJECT)} '{OBJECT}' placeholders; it needs exactly one, "
            f"where the answer goes (e.g. 'The capital of {SUBJECT} is {OBJECT}.')."
        )
    if template.count(SUBJECT) > 1:
        raise FactError(f"Template {template!r} has more than one '{SUBJECT}'; use it once, for the subject.")


@dataclass(frozen=True)
class Prompt:
    """One filled template: ``prefix`` + answer + ``suffix`` is the full sentence.

    ``prefix`` ends where the answer starts; ``space`` says whether a space separates the answer
    from the text before it (BPE and SentencePiece tokenizers encode the answer differently then).
    """

    prefix: str
    suffix: str
    template: str = ""

    @property
    def space(self) -> bool:
        return self.prefix.endswith(" ")

    @property
    def causal_text(self) -> str:
        """What a causal LM reads: the text before the answer, without its trailing space."""
        return self.prefix.rstrip(" ")

    def sentence(self, answer: str) -> str:
        return f"{self.prefix}{answer}{self.suffix}"

    @classmethod
    def from_template(cls, template: str, subject: str = "") -> Prompt:
        check_template(template)
        if SUBJECT in template and not subject:
            raise FactError(f"Template {template!r} needs a subject for '{SUBJECT}', but the subject is empty.")
        check_filler(subject, "subject", repr(subject))
        prefix, suffix = template.replace(SUBJECT, subject).split(OBJECT)
        return cls(prefix=prefix, suffix=suffix, template=template)

    @classmethod
    def from_text(cls, text: str) -> Prompt:
        """A causal prompt given as plain text: the answer continues it after a space."""
        if not text.strip():
            raise FactError("The prompt is empty: give the text that the answer should continue.")
        if OBJECT in text:
            return cls.from_template(text)
        _refuse_mask(text, "The prompt")
        return cls(prefix=text.rstrip(" ") + " ", suffix="", template=text)


@dataclass(frozen=True)
class Fact:
    """A relational fact expressed by a bag of prompts.

    Examples:
        >>> fact = Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "[X]'s capital is [Y]."))
        >>> [p.causal_text for p in fact.prompts()]
        ['The capital of France is', "France's capital is"]
    """

    subject: str
    relation: str
    object: str
    templates: tuple[str, ...] = field(default_factory=tuple)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.object.strip():
            raise FactError(f"The answer (object) of fact {self.subject!r} / {self.relation!r} is empty.")
        if not self.subject.strip():
            raise FactError(f"The subject of a {self.relation!r} fact (answer {self.object!r}) is empty.")
        name = f"{self.id or self.relation + ':' + self.subject} ({self.subject!r} -> {self.object!r})"
        check_filler(self.subject, "subject", name)
        check_filler(self.object, "object", name)
        object.__setattr__(self, "templates", tuple(self.templates))
        for template in self.templates:
            check_template(template)
        if not self.id:
            object.__setattr__(self, "id", f"{self.relation}:{self.subject}")

    def prompts(self) -> list[Prompt]:
        return [Prompt.from_template(t, self.subject) for t in self.templates]

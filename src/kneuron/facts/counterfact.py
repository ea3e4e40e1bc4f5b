"""Read CounterFact (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME), the
benchmark of counterfactual edits: ``counterfact.json`` / ``multi_counterfact.json``.

The file is one JSON list of records::

    [{"case_id": 0, "pararel_idx": 2796,
      "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                            "relation_id": "P103", "target_new": {"str": "English", "id": "Q1860"},
                            "target_true": {"str": "French", "id": "Q150"}},
      "paraphrase_prompts": ["Shayna does this and Yossi does Nineveh. Danielle Darrieux, a native"],
      "neighborhood_prompts": ["The mother tongue of Léon Blum is", "..."],
      "attribute_prompts": ["J. R. R. Tolkien is a native speaker of", "..."],
      "generation_prompts": ["Danielle Darrieux's mother tongue is", "..."]}]

- ``requested_rewrite.prompt`` has one ``{}`` where the subject goes; the answer continues the text.
- ``paraphrase_prompts`` state the same fact differently (the edit should carry over: *generalization*);
  ``neighborhood_prompts`` are other subjects whose true answer is ``target_true`` (the edit should leave them
  alone: *specificity*); ``attribute_prompts`` are subjects whose true answer is ``target_new``;
  ``generation_prompts`` are for free generation (fluency, consistency).
- Some derived files give neighbourhood prompts as ``{"prompt": ..., "target": ...}``; both forms are read, a
  bare string's target being ``target_true``.

Example:
    >>> records = read_counterfact("counterfact.json")
    >>> records[0].rewrite_prompt, records[0].target_true, records[0].target_new
    ('The mother tongue of Danielle Darrieux is', 'French', 'English')
    >>> records[0].fact().prompts()[0].causal_text
    'The mother tongue of Danielle Darrieux is'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import Fact


@dataclass(frozen=True)
class CounterFactRecord:
    """One CounterFact case: rewrite ``subject``'s answer from ``target_true`` to ``target_new``.

    Attributes:
        case_id: the record's id.
        subject: the edited subject.
        prompt: the rewrite prompt with ``{}`` for the subject.
        relation_id: the Wikidata relation (e.g. "P103").
        target_new, target_true: the counterfactual and the true answer (strings).
        paraphrase_prompts, attribute_prompts, generation_prompts: prompts as in the file.
        neighborhood_prompts: ``(prompt, target)`` pairs (target_true unless the file names another).
        target_new_id, target_true_id: Wikidata ids when given.
        pararel_idx: the PARAREL index when given.
    """

    case_id: int
    subject: str
    prompt: str
    relation_id: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[tuple[str, str], ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    target_new_id: str = ""
    target_true_id: str = ""
    pararel_idx: int | None = None

    @property
    def rewrite_prompt(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    def fact(self) -> Fact:
        """The true fact as a :class:`Fact` whose prompts are the rewrite prompt and the paraphrases (answer at
        the end), relation ``relation_id``, id ``counterfact:<case_id>``."""
        templates = [self.prompt.replace("{}", "[X]") + " [Y]."]
        templates += [p.rstrip() + " [Y]." for p in self.paraphrase_prompts if "[" not in p]
        return Fact(self.subject, self.relation_id, self.target_true, tuple(dict.fromkeys(templates)),
                    id=f"counterfact:{self.case_id}")


def _string(value, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FactError(f"{where}: {name} must be a non-empty string, not {value!r}.")
    return value


def _target(value, where: str, name: str) -> tuple[str, str]:
    if isinstance(value, str):
        return _string(value, where, name), ""
    if not isinstance(value, dict) or "str" not in value:
        raise FactError(f"{where}: {name} must be an object with a 'str' field (e.g. {{\"str\": \"English\"}}), "
                        f"not {value!r}.")
    return _string(value["str"], where, f"{name}.str"), str(value.get("id", ""))


def _strings(record: dict, key: str, where: str) -> tuple[str, ...]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FactError(f"{where}: {key} must be a list of strings.")
    return tuple(value)


def _neighbours(record: dict, where: str, default: str) -> tuple[tuple[str, str], ...]:
    value = record.get("neighborhood_prompts", [])
    if not isinstance(value, list):
        raise FactError(f"{where}: neighborhood_prompts must be a list.")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, default))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            target = item.get("target", default)
            out.append((item["prompt"], str(target).strip() or default))
        else:
            raise FactError(f"{where}: a neighborhood prompt is {item!r}; give a string or "
                            "{\"prompt\": ..., \"target\": ...}.")
    return tuple(out)


def parse_record(record: dict, where: str = "record") -> CounterFactRecord:
    """One CounterFact record (a dict as in the file) to a :class:`CounterFactRecord`; FactError if malformed."""
    if not isinstance(record, dict):
        raise FactError(f"{where}: a CounterFact record is a JSON object, not {type(record).__name__}.")
    rewrite = record.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise FactError(f"{where}: 'requested_rewrite' is missing or not an object.")
    prompt = _string(rewrite.get("prompt"), where, "requested_rewrite.prompt")
    if prompt.count("{}") != 1:
        raise FactError(f"{where}: the rewrite prompt {prompt!r} needs exactly one '{{}}' where the subject goes.")
    subject = _string(rewrite.get("subject"), where, "requested_rewrite.subject")
    new, new_id = _target(rewrite.get("target_new"), where, "target_new")
    true, true_id = _target(rewrite.get("target_true"), where, "target_true")
    case_id = record.get("case_id")
    if not isinstance(case_id, int) or isinstance(case_id, bool):
        raise FactError(f"{where}: case_id must be an integer, not {case_id!r}.")
    pararel = record.get("pararel_idx")
    return CounterFactRecord(
        case_id=case_id, subject=subject, prompt=prompt, relation_id=str(rewrite.get("relation_id", "")),
        target_new=new.strip(), target_true=true.strip(),
        paraphrase_prompts=_strings(record, "paraphrase_prompts", where),
        neighborhood_prompts=_neighbours(record, where, true.strip()),
        attribute_prompts=_strings(record, "attribute_prompts", where),
        generation_prompts=_strings(record, "generation_prompts", where),
        target_new_id=new_id, target_true_id=true_id,
        pararel_idx=pararel if isinstance(pararel, int) else None,
    )


def read_counterfact(path: str | Path, limit: int | None = None) -> list[CounterFactRecord]:
    """The records of a CounterFact JSON file (a list of records; the first ``limit`` when given).

    Raises:
        FactError: a missing file, invalid JSON, or a malformed record (named by its position and case id).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FactError(f"No CounterFact file at {path}.") from None
    except json.JSONDecodeError as exc:
        raise FactError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(data, list):
        raise FactError(f"{path}: a CounterFact file is a JSON list of records, not a {type(data).__name__}.")
    records = []
    for i, record in enumerate(data[:limit] if limit is not None else data):
        case = record.get("case_id") if isinstance(record, dict) else None
        records.append(parse_record(record, f"{path}: record {i}" + (f" (case_id {case})" if case is not None else "")))
    return records

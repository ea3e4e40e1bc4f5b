"""Facts, prompts and their encoding for either model kind."""

from kneuron.facts.encoding import (
    AnswerProbability,
    EncodedQuery,
    answer_probability,
    answer_token_ids,
    encode,
    top_predictions,
)
from kneuron.facts.fact import Fact, Prompt, check_template

__all__ = [
    "AnswerProbability", "EncodedQuery", "Fact", "Prompt", "answer_probability", "answer_token_ids",
    "check_template", "encode", "top_predictions",
]

from kneuron.facts.builtin import (  # noqa: E402
    builtin_facts,
    builtin_relations,
    discrimination_facts,
    discrimination_sentences,
)
from kneuron.facts.known import answer_ranks, known_facts  # noqa: E402
from kneuron.facts.multilingual import (  # noqa: E402
    multilingual_facts,
    multilingual_languages,
    multilingual_relations,
    read_multilingual,
    select_languages,
)
from kneuron.facts.schema import read_csv, read_jsonl, write_jsonl  # noqa: E402
from kneuron.facts.sources import FactSource, fact_source, fact_sources, load_facts, register_source  # noqa: E402
from kneuron.facts.validation import causal_templates, validate_facts  # noqa: E402

__all__ += [
    "FactSource", "answer_ranks", "builtin_facts", "builtin_relations", "causal_templates", "discrimination_facts",
    "discrimination_sentences", "fact_source", "fact_sources", "known_facts", "load_facts", "multilingual_facts",
    "multilingual_languages", "multilingual_relations", "read_csv", "read_jsonl", "read_multilingual",
    "register_source", "select_languages", "validate_facts", "write_jsonl",
]

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

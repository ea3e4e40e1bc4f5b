"""Tiny random language models of every registered family, built offline from configs.

Import this from any test::

    from tiny_models import FAMILIES, MLM_FAMILIES, CAUSAL_FAMILIES, tiny_lm, tiny_tokenizer

    lm = tiny_lm("llama")                          # LanguageModel, 2 layers, 32 neurons per layer
    lm = tiny_lm("albert")                         # one shared layer run at 3 depths (lm.n_layers == 3)
    lm = tiny_lm("bert", dtype=torch.float64)      # float64 for exactness checks
    lm = tiny_lm("gpt2", seed=1, layers=3, neurons=48)

(``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there.) ``tests/conftest.py`` also
offers fixtures: ``family`` (parametrized over :data:`FAMILIES`), ``lm`` (a fresh float32 tiny model of
that family) and ``lm64`` (the same in float64).

The tokenizer
-------------
:func:`tiny_tokenizer` builds a ``PreTrainedTokenizerFast`` with the ``tokenizers`` library, no hub and
no files: a WordPiece model over the fixed word list :data:`WORDS` (plus "##" continuation pieces
:data:`PIECES`), a BERT pre-tokenizer (split on whitespace and punctuation, so "France's" is
``France ' s``) and a WordPiece decoder. Case is kept. The vocabulary is identical for both kinds except for
the special tokens, which come first (ids 0..4 for "mlm", 0..3 for "causal").

Multi-token answers come from WordPiece's greedy longest-match: a word that is *not* in the vocabulary
but can be spelled from a head piece and "##" pieces splits into them, e.g. ``"Copenhagen" ->
["Copen", "##hagen"]``, ``"Stockholm" -> ["Stock", "##holm"]``, ``"Amsterdam" -> ["Amster", "##dam"]``,
``"Canberra" -> ["Can", "##berra"]``, ``"Lisbon" -> ["Lis", "##bon"]`` (see :data:`MULTI_TOKEN_WORDS`).
A word with no spelling, e.g. ``"Xylophone"``, becomes the unknown token.

* ``kind="mlm"``: specials ``[PAD] [UNK] [CLS] [SEP] [MASK]``; encoding with special tokens gives
  ``[CLS] ... [SEP]`` (pairs: ``[CLS] A [SEP] B [SEP]``).
* ``kind="causal"``: specials ``<pad> <unk> <bos> <eos>``; encoding with special tokens prepends
  ``<bos>`` (as Llama's tokenizer does); there is no mask token.

The models
----------
:func:`tiny_lm` builds ``AutoModelFor{MaskedLM,CausalLM}.from_config`` with hidden size 16, 2 heads (one
key/value head less where grouped-query attention exists, to exercise it), ``neurons`` FFN units, the
tokenizer's vocabulary, 64 positions, SDPA attention (eager where a family lacks it; see
:func:`attention_of`), and an ``initializer_range`` of 0.2 so that activations and logits are far from uniform.
Weights come from ``torch.manual_seed(seed)``, so the same arguments give bit-identical models. The model is in
eval mode (no dropout). BLOOM fixes its FFN at 4 × hidden, so its tiny model gets ``neurons``-wide projections
(:func:`_resize_bloom`); ``tiny_lm(family, **overrides)`` sets further config fields (block variants).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedTokenizerFast

from kneuron.models import LanguageModel, from_model

TokenizerKind = Literal["mlm", "causal"]

# ---------------------------------------------------------------------------------------------- tokenizer

_WORDS_TEXT = """
    . , ' s ? ! : ; - ( )
    the The a A an An of is was are were in In on at to by for from with as and or not it It its
    he He she She they They his her their this This that which who what where when has had have be
    capital city country countries language languages spoken speak official native born died located
    part member river mountain continent island ocean sea lake currency money name named called known
    famous largest biggest small big old new first second third one two three four five
    France Paris French Germany Berlin German Italy Rome Italian Spain Madrid Spanish Japan Tokyo
    Japanese China Beijing Chinese England London English Britain British Russia Moscow Russian
    Portugal Portuguese Denmark Danish Sweden Swedish Netherlands Dutch Australia Canada Ottawa Egypt
    Cairo Arabic India Delhi Hindi Brazil Brasilia Mexico Europe Asia Africa America Seine Thames
    Rhine Tiber Nile Alps Everest euro yen dollar pound rupee
    founded company developed created made produced owned by Apple Google Microsoft Sony Toyota
    Nokia Samsung president king queen leader author wrote book music plays played instrument piano
    guitar violin position football soccer player team works worked job occupation religion
    Christianity Islam Buddhism sport tennis chess physicist chemist writer painter composer Mozart
    Einstein Newton Curie Picasso symbol chemical element gold silver iron water
"""
#: whole words of the tiny vocabulary (order fixes the ids; do not reorder, append at the end).
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())

#: head pieces and "##" continuation pieces from which multi-token words are spelled.
PIECES: tuple[str, ...] = (
    "Copen", "Stock", "Amster", "Can", "Lis", "Hel", "Bu",
    "##hagen", "##holm", "##dam", "##berra", "##bon", "##sinki", "##dapest", "##s", "##ed", "##ing", "##er",
)

#: words that are out of the vocabulary but split into several known pieces (multi-token answers).
MULTI_TOKEN_WORDS: dict[str, tuple[str, ...]] = {
    "Copenhagen": ("Copen", "##hagen"),
    "Stockholm": ("Stock", "##holm"),
    "Amsterdam": ("Amster", "##dam"),
    "Canberra": ("Can", "##berra"),
    "Lisbon": ("Lis", "##bon"),
    "Helsinki": ("Hel", "##sinki"),
    "Budapest": ("Bu", "##dapest"),
}

SPECIALS: dict[str, tuple[str, ...]] = {
    "mlm": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "causal": ("<pad>", "<unk>", "<bos>", "<eos>"),
}


def _vocab(kind: TokenizerKind) -> dict[str, int]:
    tokens = list(SPECIALS[kind]) + list(dict.fromkeys(WORDS + PIECES))
    return {token: index for index, token in enumerate(tokens)}


@functools.cache
def _tokenizer_json(kind: TokenizerKind) -> str:
    if kind not in SPECIALS:
        raise ValueError(f"kind must be 'mlm' or 'causal', not {kind!r}")
    vocab = _vocab(kind)
    unk = SPECIALS[kind][1]
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    if kind == "mlm":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", vocab["<bos>"])],
        )
    return tok.to_str()


def tiny_tokenizer(kind: TokenizerKind = "mlm") -> PreTrainedTokenizerFast:
    """A fresh offline WordPiece tokenizer over :data:`WORDS` + :data:`PIECES` (see the module docstring)."""
    tok = Tokenizer.from_str(_tokenizer_json(kind))
    if kind == "mlm":
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                     mask_token="[MASK]")
    else:
        names = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, **names)


# -------------------------------------------------------------------------------------------------- models

MLM_FAMILIES: tuple[str, ...] = ("bert", "roberta", "distilbert", "electra", "modernbert", "albert")
CAUSAL_FAMILIES: tuple[str, ...] = (
    "gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "falcon", "bloom", "phi", "starcoder2", "llama", "mistral",
    "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "stablelm", "granite", "cohere", "olmo", "olmo2",
)
#: families whose blocks pass the FFN output through a norm before the residual (post_feedforward_layernorm)
NORMED_FAMILIES: tuple[str, ...] = ("gemma2", "gemma3", "olmo2")
#: families whose one block runs at several depths (a neuron is (depth, index)), see ``LanguageModel.shared_layers``
SHARED_LAYER_FAMILIES: tuple[str, ...] = ("albert",)
#: every family of the registry, in registry order, by its ``ArchSpec.family`` name.
FAMILIES: tuple[str, ...] = MLM_FAMILIES + CAUSAL_FAMILIES

#: the ``config.model_type`` each family is built from (Gemma 3 as its text-only model).
MODEL_TYPES: dict[str, str] = {family: family for family in FAMILIES} | {"gemma3": "gemma3_text"}

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, POSITIONS = 16, 2, 1, 8, 64

#: layers (depths) of a family's tiny model when ``tiny_lm`` is not told: 2, except ALBERT's 3, so that its one
#: shared layer runs at several depths in every family-parametrized test and depth mix-ups show
DEFAULT_LAYERS: dict[str, int] = {"albert": 3}


def default_layers(family: str) -> int:
    return DEFAULT_LAYERS.get(family, 2)


def config_kwargs(family: str, layers: int, neurons: int) -> dict:
    """Config arguments for a tiny model of ``family`` (names differ between families)."""
    gated = dict(hidden_size=HIDDEN, intermediate_size=neurons, num_hidden_layers=layers,
                 num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                 max_position_embeddings=POSITIONS)
    mlm_ids = _vocab("mlm")
    bert_like = dict(hidden_size=HIDDEN, intermediate_size=neurons, num_hidden_layers=layers,
                     num_attention_heads=HEADS, max_position_embeddings=POSITIONS)
    table: dict[str, dict] = {
        "bert": bert_like | dict(type_vocab_size=2),
        # RoBERTa offsets positions by padding_idx + 1
        "roberta": bert_like | dict(max_position_embeddings=POSITIONS + 2, type_vocab_size=1),
        "distilbert": dict(dim=HIDDEN, hidden_dim=neurons, n_layers=layers, n_heads=HEADS,
                           max_position_embeddings=POSITIONS),
        "electra": bert_like | dict(embedding_size=HIDDEN),
        # layer 0 global, layer 1 local (a window of 4 tokens each side), layer 2 global again; the special ids
        # default to ModernBERT's own vocabulary, so they are given the tiny tokenizer's
        "modernbert": bert_like | dict(global_attn_every_n_layers=2, local_attention=8,
                                       cls_token_id=mlm_ids["[CLS]"], bos_token_id=mlm_ids["[CLS]"],
                                       sep_token_id=mlm_ids["[SEP]"], eos_token_id=mlm_ids["[SEP]"]),
        # one group of one layer, run at every depth; the factorised embeddings are smaller than the hidden size
        "albert": bert_like | dict(embedding_size=8, num_hidden_groups=1, inner_group_num=1, type_vocab_size=2),
        "gpt2": dict(n_embd=HIDDEN, n_inner=neurons, n_layer=layers, n_head=HEADS, n_positions=POSITIONS),
        "gpt_neo": dict(hidden_size=HIDDEN, intermediate_size=neurons, num_layers=layers, num_heads=HEADS,
                        max_position_embeddings=POSITIONS, window_size=8,
                        attention_types=[[["global", "local"], layers // 2]] + [[["global"], 1]] * (layers % 2)),
        "gptj": dict(n_embd=HIDDEN, n_inner=neurons, n_layer=layers, n_head=HEADS, n_positions=POSITIONS,
                     rotary_dim=4),
        "gpt_neox": dict(hidden_size=HIDDEN, intermediate_size=neurons, num_hidden_layers=layers,
                         num_attention_heads=HEADS, max_position_embeddings=POSITIONS, rotary_pct=0.5),
        "opt": dict(hidden_size=HIDDEN, ffn_dim=neurons, num_hidden_layers=layers, num_attention_heads=HEADS,
                    max_position_embeddings=POSITIONS, word_embed_proj_dim=HIDDEN),
        "falcon": dict(hidden_size=HIDDEN, ffn_hidden_size=neurons, num_hidden_layers=layers,
                       num_attention_heads=HEADS, max_position_embeddings=POSITIONS),
        # BLOOM's FFN is 4 × hidden by construction: tiny_lm swaps in projections of `neurons` (see _resize_bloom)
        "bloom": dict(hidden_size=HIDDEN, n_layer=layers, n_head=HEADS),
        "phi": dict(hidden_size=HIDDEN, intermediate_size=neurons, num_hidden_layers=layers,
                    num_attention_heads=HEADS, max_position_embeddings=POSITIONS, partial_rotary_factor=0.5),
        "llama": gated,
        "mistral": gated | dict(sliding_window=None),
        "qwen2": gated,
        "qwen3": gated,
        "gemma": gated,
        "gemma2": gated | dict(sliding_window=8, query_pre_attn_scalar=HEAD_DIM),
        "gemma3": gated | dict(sliding_window=8, query_pre_attn_scalar=HEAD_DIM),
        # a sliding window of 4 tokens (StarCoder2-3b: 4096), so that the tiny prompts run past it
        "starcoder2": gated | dict(sliding_window=4),
        "phi3": {k: v for k, v in gated.items() if k != "head_dim"},
        "stablelm": {k: v for k, v in gated.items() if k != "head_dim"} | dict(partial_rotary_factor=0.5),
        # Granite's multipliers away from 1 (granite-3.0-2b: 12, 0.015625, 0.22, 8), so that a test ignoring one fails
        "granite": {k: v for k, v in gated.items() if k != "head_dim"}
                   | dict(embedding_multiplier=4.0, attention_multiplier=0.25, residual_multiplier=0.5,
                          logits_scaling=2.0),
        # Cohere's default logit_scale (0.0625) would leave the tiny model's logits nearly uniform
        "cohere": {k: v for k, v in gated.items() if k != "head_dim"} | dict(logit_scale=0.5),
        "olmo": {k: v for k, v in gated.items() if k != "head_dim"},
        "olmo2": {k: v for k, v in gated.items() if k != "head_dim"},
    }
    if family not in table:
        raise ValueError(f"No tiny config for family {family!r}; known: {', '.join(FAMILIES)}")
    return table[family]


#: families whose transformers class has no SDPA attention (their eager attention is used)
EAGER_ONLY = {"gpt_neo", "gemma2", "bloom"}


def attention_of(family: str) -> str:
    """SDPA attention, which keeps float64 in float64; transformers' eager attention takes its softmax in float32
    (``softmax(..., dtype=torch.float32)``), so padded and unpadded float64 batches differ by float32 rounding."""
    return "eager" if family in EAGER_ONLY else "sdpa"


def tiny_config(family: str, *, layers: int | None = None, neurons: int = 32, vocab_size: int | None = None,
                **overrides):
    """The ``transformers`` config of a tiny ``family`` model (vocabulary and special ids of its tokenizer);
    ``layers`` defaults to :func:`default_layers`; ``overrides`` replace or add config fields (e.g. StableLM's
    ``use_parallel_residual=True``)."""
    layers = default_layers(family) if layers is None else layers
    kind: TokenizerKind = "mlm" if family in MLM_FAMILIES else "causal"
    vocab = _vocab(kind)
    specials = SPECIALS[kind]
    ids = dict(pad_token_id=vocab[specials[0]])
    if kind == "causal":
        ids |= dict(bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"])
    config = AutoConfig.for_model(
        MODEL_TYPES[family], vocab_size=vocab_size or len(vocab), initializer_range=0.2,
        **ids, **(config_kwargs(family, layers, neurons) | overrides),
    )
    config._attn_implementation = attention_of(family)
    return config


def tiny_lm(
    family: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    layers: int | None = None,
    neurons: int = 32,
    **overrides,
) -> LanguageModel:
    """A fresh tiny random ``family`` model with its tiny tokenizer, wrapped as a LanguageModel; ``layers``
    (depths) defaults to :func:`default_layers` (2; ALBERT 3).

    Same arguments, bit-identical weights. ``neurons`` is the FFN intermediate width (``lm.n_neurons``).
    Each call builds a new model, so tests may change its weights freely. ``overrides`` are config fields
    (see :func:`tiny_config`).
    """
    kind: TokenizerKind = "mlm" if family in MLM_FAMILIES else "causal"
    config = tiny_config(family, layers=layers, neurons=neurons, **overrides)
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config, attn_implementation=attention_of(family))
    if family == "bloom":
        _resize_bloom(model, neurons)
    model.to(dtype)
    model.eval()
    return from_model(model, tiny_tokenizer(kind), name=f"tiny-{family}")


def _resize_bloom(model, neurons: int) -> None:
    """Give every BLOOM block an FFN of ``neurons`` units (BLOOM fixes it at 4 × hidden; its MLP reads its
    projections' shapes from their weights), initialised as BLOOM initialises its linear layers."""
    hidden = model.config.hidden_size
    for block in model.transformer.h:
        block.mlp.dense_h_to_4h = torch.nn.Linear(hidden, neurons)
        block.mlp.dense_4h_to_h = torch.nn.Linear(neurons, hidden)
        for linear in (block.mlp.dense_h_to_4h, block.mlp.dense_4h_to_h):
            torch.nn.init.normal_(linear.weight, std=model.config.initializer_range)
            torch.nn.init.zeros_(linear.bias)


def tiny_kind(family: str) -> TokenizerKind:
    """"mlm" or "causal" for one of :data:`FAMILIES`."""
    return "mlm" if family in MLM_FAMILIES else "causal"

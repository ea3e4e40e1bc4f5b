"""The statistics behind ROME's update: C = E[k kᵀ], the second moment of one layer's FFN keys over text.

A *key* is the FFN intermediate activation at one token: kneuron's neuron space, the input of the FFN output
projection whose columns are the knowledge neurons' value slots. ROME (Meng et al. 2022) estimates C from 100,000
Wikipedia tokens; kneuron is offline (no downloads), so the text is one of:

* ``"generated"`` (the default): text **sampled from the model itself**, seeded (top-k 50 sampling from the
  beginning-of-text token, sequences of 128 tokens or the model's context length, no end-of-text before their
  end). It needs nothing outside the model, it is the distribution
  of text the model knows (which Wikipedia stands in for: C says which key directions ordinary text
  uses, so that the update leaves them alone), and ROME samples its context prefixes from the model the same way.
  The first position of each sequence (the beginning-of-text token, whose key is an outlier) is not counted.
* ``"facts"``: the sentences of kneuron's built-in facts (every template filled with its subject and object),
  about 30,000 tokens. It is small and repetitive (a few templates per relation), and it holds the very facts being
  edited, so it is here to compare with, not the default.

Keys are summed in float64 as ``Σ k kᵀ`` and divided by their number. With fewer keys than neurons (1,000 keys of
SmolLM2's 1,536 neurons) C is singular; :func:`ridge` adds ``ridge · trace(C) / n · I`` before it is inverted
(:mod:`kneuron.interventions.rome` uses ``1e-4``; ROME inverts C as it is, from 100,000 keys).

Example:
    >>> stats = key_second_moment(lm, layer=10, samples=10_000)      # about 20 s for SmolLM2-135M on one CPU core
    >>> stats.moment.shape
    torch.Size([1536, 1536])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from kneuron.errors import EditOptionError
from kneuron.models.hooks import capture
from kneuron.models.language_model import LanguageModel

TextSource = Literal["generated", "facts"]
TEXT_SOURCES: tuple[str, ...] = ("generated", "facts")
#: tokens per generated sequence
GENERATED_LENGTH = 128


@dataclass(frozen=True)
class KeyStats:
    """C = E[k kᵀ] of ``layer``'s keys over ``samples`` tokens of ``source`` text (seeded by ``seed``).

    Attributes:
        layer: the layer.
        moment: (n_neurons, n_neurons) float64, on the CPU.
        samples: how many keys were averaged.
        source: "generated" or "facts".
        seed: the sampling seed (generated text only).
    """

    layer: int
    moment: torch.Tensor
    samples: int
    source: str
    seed: int

    def describe(self) -> dict:
        """What an edit records about its statistics (JSON-able)."""
        return {"layer": self.layer, "samples": self.samples, "text": self.source, "seed": self.seed}


def _start_id(lm: LanguageModel) -> int:
    """The id generation starts from: the beginning-of-text token (or end-of-text, as GPT-2 uses it)."""
    tok = lm.tokenizer
    for name in ("bos_token_id", "eos_token_id", "cls_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            return int(value)
    config = getattr(lm.model, "config", None)
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise EditOptionError(f"{lm.name}'s tokenizer has no beginning- or end-of-text token to start sampling from; "
                          "use text='facts'.")


@torch.no_grad()
def sample_sequences(lm: LanguageModel, count: int, length: int, *, seed: int = 0, batch_size: int = 16,
                     ) -> list[torch.Tensor]:
    """``count`` token sequences of ``1 + length`` ids (the start token, then ``length`` sampled ones) sampled from
    ``lm`` with top-k 50, seeded: the same arguments give the same sequences on one machine (torch's generator is
    forked, so the caller's random state is untouched)."""
    if lm.kind != "causal":
        raise EditOptionError(f"{lm.name} is a masked model; sampling text needs a causal one.")
    start = _start_id(lm)
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    out: list[torch.Tensor] = []
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        while len(out) < count:
            n = min(batch_size, count - len(out))
            ids = torch.full((n, 1), start, dtype=torch.long, device=lm.device)
            generated = lm.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50, top_p=1.0,
                temperature=1.0, max_new_tokens=length, min_new_tokens=length,
                pad_token_id=pad if pad is not None else start)
            out.extend(row.detach().cpu() for row in generated)
    return out


def _fact_sequences(lm: LanguageModel) -> list[torch.Tensor]:
    from kneuron.facts import builtin_facts

    texts = list(dict.fromkeys(p.sentence(f.object) for f in builtin_facts() for p in f.prompts()))
    found = lm.tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in found]


def text_sequences(lm: LanguageModel, samples: int, source: TextSource = "generated", *, seed: int = 0,
                   ) -> list[torch.Tensor]:
    """The token sequences whose keys (after the first token of each) make up ``samples`` keys at least."""
    if source == "generated":
        length = GENERATED_LENGTH if lm.max_positions is None else min(GENERATED_LENGTH, lm.max_positions - 1)
        return sample_sequences(lm, math.ceil(samples / length), length, seed=seed)
    if source == "facts":
        return _fact_sequences(lm)
    raise EditOptionError(f"text must be one of {', '.join(TEXT_SOURCES)}, not {source!r}.")


@torch.no_grad()
def key_second_moment(lm: LanguageModel, layer: int, samples: int = 10_000, *, source: TextSource = "generated",
                      seed: int = 0, batch_size: int = 16) -> KeyStats:
    """E[k kᵀ] of ``layer``'s keys over the first ``samples`` tokens of ``source`` text (see the module docstring);
    fewer when the text has fewer (the built-in facts: about 30,000)."""
    lm.check_layer(layer)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise EditOptionError(f"samples is a positive number of tokens, not {samples!r}.")
    sequences = text_sequences(lm, samples, source, seed=seed)
    n = lm.n_neurons
    total = torch.zeros(n, n, dtype=torch.float64)
    count = 0
    for start in range(0, len(sequences), batch_size):
        if count >= samples:
            break
        rows = sequences[start:start + batch_size]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        with capture(lm, [layer]) as acts:
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
        keys = acts[layer].to("cpu", torch.float64)
        for i, r in enumerate(rows):
            k = keys[i, 1:len(r)][: samples - count]
            total += k.T @ k
            count += int(k.shape[0])
    if count == 0:
        raise EditOptionError(f"The {source} text gave no keys to average.")
    return KeyStats(layer, total / count, count, source, seed if source == "generated" else 0)


def ridge(moment: torch.Tensor, amount: float) -> torch.Tensor:
    """``moment + amount · trace(moment) / n · I``: C made invertible when it was estimated from few keys."""
    n = moment.shape[0]
    return moment + amount * float(torch.trace(moment)) / n * torch.eye(n, dtype=moment.dtype)

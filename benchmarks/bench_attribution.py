"""kneuron's integrated gradients against EleutherAI's knowledge-neurons (PyPI 0.0.2), side by side.

Run with ``make bench`` (it installs knowledge-neurons beside kneuron) or ``.venv/bin/python
benchmarks/bench_attribution.py``. Everything is built offline: randomly initialised models of
the bert-base-cased shape (BertForMaskedLM: 12 layers, 768 hidden, 3072 FFN neurons, vocabulary
28996) and the gpt2-small shape (GPT2LMHeadModel: 12 layers, 768, 3072, vocabulary 50257), with
fixed seeds and ``model.eval()`` (EleutherAI's class never calls it: a model built from a config
has dropout on, which would randomise its scores), and word-level WordPiece tokenizers over a
synthetic vocabulary of the model's size, saved to a temporary folder and loaded back with
``PreTrainedTokenizerFast.from_pretrained`` (in transformers 5, ``BertTokenizer(vocab_file=...)``
silently ignores the file).

Cases: each shape with prompts of 5 and of 15 tokens (the number of tokens the model reads,
[CLS] ... [MASK] [SEP] included for the masked model), a bag of ``PROMPTS`` prompts per case that
share one answer (the model's top prediction for the bag's first prompt) and differ in one word.
Both tools take 20 steps; EleutherAI's batch is 20 (one batch per layer). Per prompt, the two
run alternately (other processes share the cores: the ratios are what count). The prompts of a
case do the same work (same shapes), so a case's seconds per prompt is the best of its runs, the
one least slowed by other processes; the median and the CPU seconds are printed beside it.

What is compared, and where the two agree
-----------------------------------------
EleutherAI's ``get_scores`` scales one layer's activations at the mask (BERT) or last (GPT)
position by α = linspace(0, 1, steps), i.e. 0, 1/19, ..., 1, takes the gradient of the answer's
softmax probability and multiplies the mean gradient by the activation. kneuron does the same
with ``alphas="linspace"`` and ``objective="prob"``, so on equal patch points the scores agree.

* bert shape: EleutherAI patches ``bert.encoder.layer[l].intermediate`` (its output is the
  post-GELU activation), which is the input of ``output.dense``, kneuron's neurons. Scores and
  refined neurons are compared directly.
* gpt2 shape: EleutherAI patches ``mlp.c_fc`` (the pre-GELU projection), kneuron the input of
  ``mlp.c_proj`` (post-GELU): different neurons' values, so the stock class is compared on speed
  only. For scores, the same class is run with its patch point moved to ``mlp.act`` (a subclass
  that sets ``input_ff_attr = "mlp.act"``; GPT2MLP calls ``self.act`` as a module, so EleutherAI's
  ``Patch`` wraps it and replaces its output): that is exactly kneuron's patch point. Both variants
  do the same work; the speed-up is quoted against the stock one.

EleutherAI's refined neurons come from its own ``get_refined_neurons`` (coarse threshold 0.2 of
the maximum, share p = 0.5) fed with the scores its ``get_scores`` produced in the timed runs
(the instance's ``get_scores`` is replaced by a look-up; the refinement itself is a counter).
kneuron's come from ``refine(bag, share=0.5, threshold=0.2)``: the same rule.

kneuron's completeness gap needs each layer's zero-baseline probability; with ``alphas="linspace"``
the α = 0 step is that baseline, so no extra row runs (with the paper's k/m it costs one
forward-only row per layer).

The lower bound
---------------
For each case the script prints kneuron's time as a fraction of the float32 (and bfloat16)
lower bound: the floating-point work that exact integrated gradients cannot avoid, divided by the
matrix-multiply rate measured in the same run (a 2048 x 2048 ``torch.matmul``, best of a few,
just before each kneuron run). With L layers, m steps, T tokens read, A answer tokens, d the
hidden size, W_k the multiply-accumulates of block k's weight matrices per token (all its
Linear/Conv1D weights), D_l those of layer l's FFN output projection and H those of the output
head per position (every Linear outside the blocks: the vocabulary projection, plus BERT's
transform):

    block_k(P) = 2 W_k P + 4 P T d                    (forward FLOPs of block k over P positions,
                                                       attention scores and mixing included)
    clean      = sum_k block_k(T) + 2 H A             (one clean pass for the activations)
    row_l      = 2 D_l + sum_{k > l} block_k(P) + 2 H A
    bound      = clean + m * sum_l 2 row_l            (forward + input-backward of every row)

where P = A for a causal model (with the clean prefix's key/value cache only the answer position
and the answer tokens after it change above the scaled layer; in layer l itself only the output
projection sees the scaled activation) and P = T for a masked model (scaling the mask position
changes every position from the next layer on). The input-backward of a matrix product
Y = X W needs dX = dY W^T, as many FLOPs as the forward, so counting the backward as equal to
the forward is a lower bound; weight gradients are not needed and not counted. The bound ignores
element-wise work (norms, activations, softmax), which is small next to the products, and for a
masked model the fact that the last block needs only K and V (not Q, O, FFN) at non-mask positions.
For the gpt2 shape this is about 80 GFLOP per prompt, nearly half of it the 50257-word head.

SmolLM2-135M (the embedded default model, ``kneuron.load()``): seconds per fact for a bag of 5
prompts (20 steps, the paper's α = k/m, probability objective, adaptive refinement), float32 and
bfloat16 side by side.

The last line is machine-readable:
``speedup_gpt2_15=X speedup_gpt2_5=X speedup_bert_15=Y speedup_bert_5=Y score_corr_min=Z smollm2_s_per_fact=W``
(score_corr_min: the lowest per-prompt Pearson correlation of float32 scores over all the
comparisons where the objectives agree: bert shape and the gpt2 shape at the matching patch point).
"""

from __future__ import annotations

import copy
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from scipy.stats import pearsonr
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import BertProcessing
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)
from transformers import logging as hf_logging

import kneuron
from bounds import lower_bound_flops, matmul_rate  # benchmarks/ is the script's folder, on sys.path
from json_results import table, write_results
from kneuron.attribution import refine
from kneuron.attribution.integrated_gradients import integrated_gradients
from kneuron.facts.encoding import EncodedQuery
from kneuron.models import from_model

try:
    from knowledge_neurons import KnowledgeNeurons
except ImportError as error:  # pragma: no cover - depends on the environment
    sys.exit(f"knowledge-neurons is not installed ({error}); run `make bench`, which installs it.")

STEPS = 20
BATCH = 20  # EleutherAI's batch_size: 20 steps in one batch per layer
PROMPTS = 2  # prompts per case (a bag for refinement; more would not fit the time on a shared machine)
LENGTHS = (5, 15)
THRESHOLD = 0.2  # coarse threshold, relative to the prompt's maximum score (the paper's t)
SHARE = 0.5  # refined: coarse in more than this share of the bag's prompts
FLOORS = {("gpt2", 15): 10.0, ("gpt2", 5): 5.0, ("bert", 5): 2.0, ("bert", 15): 1.5}
SMOLLM2_BAG = [
    "The capital of France is",
    "The capital city of France is",
    "France's capital is",
    "The French capital is called",
    "The seat of the French government is the city of",
]
SMOLLM2_ANSWER = "Paris"


# ------------------------------------------------------------------------------------------- setup

def offline_tokenizer(kind: str, vocab_size: int, directory: Path) -> PreTrainedTokenizerFast:
    """A word-level WordPiece tokenizer whose vocabulary is the specials plus ``w0``, ``w1``, ...

    Built with ``tokenizers``, wrapped, saved and loaded back with ``from_pretrained`` (as a real
    checkpoint's tokenizer would be). The GPT one returns no ``token_type_ids``: GPT2Model adds
    ``wte(token_type_ids)`` when it gets them, which would shift EleutherAI's clean pass.
    """
    if kind == "mlm":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                     mask_token="[MASK]")
        inputs = ["input_ids", "token_type_ids", "attention_mask"]
    else:
        specials = ["<|endoftext|>"]
        names = dict(unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        inputs = ["input_ids", "attention_mask"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tok = Tokenizer(WordPiece(vocab, unk_token=names["unk_token"]))
    tok.pre_tokenizer = WhitespaceSplit()
    if kind == "mlm":
        tok.post_processor = BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=inputs, model_max_length=512,
                                      **names)
    wrapped.save_pretrained(directory)
    loaded = PreTrainedTokenizerFast.from_pretrained(directory)
    assert len(loaded) == vocab_size and list(loaded.model_input_names) == inputs, "tokenizer did not round-trip"
    return loaded


def build_model(shape: str) -> nn.Module:
    """A randomly initialised model of the shape, from its config only, in eval mode."""
    torch.manual_seed(0)
    # bert-base-cased's shape (its vocabulary is 28996 words), gpt2-small's shape (the config's defaults)
    model = BertForMaskedLM(BertConfig(vocab_size=28996)) if shape == "bert" else GPT2LMHeadModel(GPT2Config())
    return model.eval()


class PostActivationKnowledgeNeurons(KnowledgeNeurons):
    """EleutherAI's class with its GPT patch point moved from ``mlp.c_fc`` (pre-activation) to
    ``mlp.act`` (post-activation: the input of ``mlp.c_proj``, which is what kneuron scores)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_ff_attr = "mlp.act"


# ------------------------------------------------------------------------------------ measurements

@dataclass
class Runs:
    """Wall-clock and CPU seconds of repeated runs of the same work."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def time(self, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return result

    @property
    def best(self) -> float:
        """Best of the runs: the prompts of a case do the same work, so the fastest run is the one
        least slowed by other processes."""
        return min(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def total(self) -> float:
        return sum(self.wall)

    def __str__(self) -> str:
        return (f"best {self.best:6.2f} s, median {self.median:6.2f} s, CPU {statistics.mean(self.cpu):6.2f} s  "
                f"(runs: {' '.join(f'{s:.2f}' for s in self.wall)})")


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten().numpy(), b.detach().double().flatten().numpy()
    return float(pearsonr(a, b).statistic)


def overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> str:
    sa, sb = set(a), set(b)
    if sa == sb:
        return f"same ({len(sa)})"
    return f"{len(sa & sb)} shared of {len(sa)} vs {len(sb)}"


def fmt_neurons(keys: list[tuple[int, int]], limit: int = 6) -> str:
    shown = ", ".join(f"L{layer}.N{index}" for layer, index in sorted(keys)[:limit])
    return "[" + shown + (", ..." if len(keys) > limit else "") + "]"


# ------------------------------------------------------------------------------------------- cases

@dataclass
class Prompt:
    text: str  # what EleutherAI's class tokenizes
    query: EncodedQuery  # the same ids for kneuron


@dataclass
class CaseResult:
    shape: str
    length: int
    eleuther: Runs = field(default_factory=Runs)
    eleuther_postact: Runs = field(default_factory=Runs)
    kneuron: Runs = field(default_factory=Runs)
    bf16: Runs = field(default_factory=Runs)
    rate_f32: float = 0.0  # best matrix-multiply rate measured just before this case's kneuron runs
    rate_bf16: float = 0.0
    corr: list[float] = field(default_factory=list)  # kneuron vs EleutherAI (matching patch point)
    corr_bf16: list[float] = field(default_factory=list)  # kneuron bf16 vs kneuron float32
    max_abs_diff: list[float] = field(default_factory=list)
    flops: float = 0.0
    refined: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.eleuther.best / self.kneuron.best

    @property
    def cpu_speedup(self) -> float:
        return sum(self.eleuther.cpu) / sum(self.kneuron.cpu)


def make_bag(shape: str, tokenizer, model: nn.Module, length: int, seed: int) -> tuple[list[Prompt], str]:
    """``PROMPTS`` prompts of ``length`` tokens that differ in one word, and their shared answer."""
    rng = random.Random(seed)
    n_words = length - 3 if shape == "bert" else length
    first_word = 5 if shape == "bert" else 1
    base = [rng.randrange(first_word, len(tokenizer)) for _ in range(n_words)]
    bags = [list(base)]
    for k in range(1, PROMPTS):
        changed = list(base)
        changed[(k * 7) % n_words] = rng.randrange(first_word, len(tokenizer))
        bags.append(changed)
    prompts = []
    for words in bags:
        text = " ".join(f"w{w - first_word}" for w in words) + (" [MASK]" if shape == "bert" else "")
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        assert len(ids) == length, (text, ids)
        prompts.append((text, ids))
    with torch.no_grad():
        ids = prompts[0][1]
        position = len(ids) - 2 if shape == "bert" else len(ids) - 1
        logits = model(input_ids=ids[None]).logits[0, position]
        logits[:first_word] = -float("inf")
        answer_id = int(logits.argmax())
    answer = tokenizer.convert_ids_to_tokens(answer_id)
    bag = []
    for text, ids in prompts:
        position = len(ids) - 2 if shape == "bert" else len(ids) - 1
        bag.append(Prompt(text, EncodedQuery(ids, (answer_id,), (position,), text)))
    return bag, answer


def run_case(shape: str, length: int, model: nn.Module, tokenizer, rates: dict[torch.dtype, float]) -> CaseResult:
    result = CaseResult(shape, length)
    lm = from_model(model, tokenizer)
    lm_bf16 = from_model(copy.deepcopy(model).to(torch.bfloat16), tokenizer)
    peer = KnowledgeNeurons(model, tokenizer, model_type=shape, device="cpu")
    peer_postact = PostActivationKnowledgeNeurons(model, tokenizer, model_type=shape, device="cpu")
    bag, answer = make_bag(shape, tokenizer, model, length, seed=length + (0 if shape == "bert" else 100))
    # warm-up of both (allocator, kernels): one layer each
    peer.get_scores_for_layer(bag[0].text, answer, layer_idx=lm.n_layers - 1, batch_size=BATCH, steps=STEPS)
    integrated_gradients(lm, bag[0].query, steps=STEPS, alphas="linspace", layers=[lm.n_layers - 1])
    integrated_gradients(lm_bf16, bag[0].query, steps=STEPS, alphas="linspace", layers=[lm.n_layers - 1])

    peer_scores, peer_postact_scores, ours, ours_bf16 = {}, {}, [], []
    for prompt in bag:
        result.flops = lower_bound_flops(lm, prompt.query, STEPS)
        scores = result.eleuther.time(peer.get_scores, prompt.text, answer, batch_size=BATCH, steps=STEPS, pbar=False)
        peer_scores[prompt.text] = scores.detach()
        result.rate_f32 = max(result.rate_f32, matmul_rate(torch.float32))
        ours.append(result.kneuron.time(integrated_gradients, lm, prompt.query, steps=STEPS, alphas="linspace"))
        if shape == "gpt2":
            scores = result.eleuther_postact.time(peer_postact.get_scores, prompt.text, answer, batch_size=BATCH,
                                                  steps=STEPS, pbar=False)
            peer_postact_scores[prompt.text] = scores.detach()
        result.rate_bf16 = max(result.rate_bf16, matmul_rate(torch.bfloat16))
        ours_bf16.append(result.bf16.time(integrated_gradients, lm_bf16, prompt.query, steps=STEPS, alphas="linspace"))
    rates[torch.float32] = max(rates.get(torch.float32, 0.0), result.rate_f32)
    rates[torch.bfloat16] = max(rates.get(torch.bfloat16, 0.0), result.rate_bf16)

    comparable = peer_scores if shape == "bert" else peer_postact_scores
    comparable_peer = peer if shape == "bert" else peer_postact
    for prompt, mine, mine_bf16 in zip(bag, ours, ours_bf16, strict=True):
        theirs = comparable[prompt.text]
        result.corr.append(correlation(mine.scores, theirs))
        result.max_abs_diff.append(float((mine.scores.double() - theirs.double()).abs().max()
                                         / theirs.double().abs().max()))
        result.corr_bf16.append(correlation(mine_bf16.scores.float(), mine.scores))

    def refined_by_peer(instance: KnowledgeNeurons, recorded: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
        instance.get_scores = lambda prompt, ground_truth, **_: recorded[prompt]
        try:
            found = instance.get_refined_neurons([p.text for p in bag], answer, p=SHARE, batch_size=BATCH,
                                                 steps=STEPS, coarse_adaptive_threshold=THRESHOLD, quiet=True)
        finally:
            del instance.get_scores
        return [tuple(n) for n in found]

    result.refined["eleuther"] = refined_by_peer(comparable_peer, comparable)
    result.refined["kneuron"] = refine(ours, share=SHARE, threshold=THRESHOLD).keys
    result.refined["kneuron_bf16"] = refine(ours_bf16, share=SHARE, threshold=THRESHOLD).keys
    return result


def report_case(r: CaseResult) -> None:
    name = f"{r.shape}-{r.length}"
    floor = FLOORS[(r.shape, r.length)]
    verdict = "meets" if r.speedup >= floor else "MISSES"
    print(f"\n[{name}] {len(r.kneuron.wall)} prompts of {r.length} tokens, {STEPS} steps; seconds per prompt:")
    print(f"  EleutherAI get_scores (batch {BATCH}):   {r.eleuther}")
    if r.eleuther_postact.wall:
        print(f"  EleutherAI at mlp.act (same work): {r.eleuther_postact}")
    print(f"  kneuron float32:                   {r.kneuron}")
    print(f"  speed-up {r.speedup:.2f}x best vs best ({verdict} the {floor:g}x floor); "
          f"{r.eleuther.median / r.kneuron.median:.2f}x median vs median, {r.cpu_speedup:.2f}x in CPU seconds")
    where = "post-GELU intermediate, both" if r.shape == "bert" else "EleutherAI moved to mlp.act = kneuron's"
    print(f"  scores vs EleutherAI ({where}): Pearson min {min(r.corr):.8f}, "
          f"max |diff|/max|score| {max(r.max_abs_diff):.1e}")
    print(f"  refined (t={THRESHOLD}, p={SHARE}): EleutherAI {fmt_neurons(r.refined['eleuther'])}, "
          f"kneuron {fmt_neurons(r.refined['kneuron'])}: {overlap(r.refined['eleuther'], r.refined['kneuron'])}")
    fraction = r.flops / r.rate_f32 / r.kneuron.best
    print(f"  lower bound {r.flops / 1e9:.1f} GFLOP/prompt = {r.flops / r.rate_f32:.2f} s at "
          f"{r.rate_f32 / 1e9:.0f} GFLOP/s float32: kneuron float32 at {100 * fraction:.0f}% of it")
    print(f"  kneuron bfloat16:                  {r.bf16}")
    print(f"  bfloat16 {r.kneuron.best / r.bf16.best:.2f}x float32's speed, at "
          f"{100 * r.flops / r.rate_bf16 / r.bf16.best:.0f}% of the bfloat16 bound ({r.rate_bf16 / 1e9:.0f} GFLOP/s); "
          f"Pearson vs float32 min "
          f"{min(r.corr_bf16):.5f}, refined vs float32: {overlap(r.refined['kneuron'], r.refined['kneuron_bf16'])}")


# ----------------------------------------------------------------------------------------- SmolLM2

@dataclass
class FactResult:
    f32: Runs = field(default_factory=Runs)  # one run per prompt of the bag
    bf16: Runs = field(default_factory=Runs)
    bound_f32_s: float = 0.0  # the bag's lower bound in seconds at the rate measured before each prompt
    bound_bf16_s: float = 0.0
    corr_bf16: list[float] = field(default_factory=list)
    refined: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    flops: float = 0.0
    load_s: float = 0.0

    @property
    def f32_s(self) -> float:
        return self.f32.total

    @property
    def bf16_s(self) -> float:
        return self.bf16.total


def run_smollm2(rates: dict[torch.dtype, float]) -> FactResult:
    result = FactResult()
    load = Runs()
    lm = load.time(kneuron.load)
    result.load_s = load.total
    lm.model.eval()
    lm_bf16 = from_model(copy.deepcopy(lm.model).to(torch.bfloat16), lm.tokenizer, name="SmolLM2-135M bf16")
    queries = [kneuron.encode(lm, prompt, SMOLLM2_ANSWER) for prompt in SMOLLM2_BAG]
    integrated_gradients(lm, queries[0], steps=STEPS, layers=[lm.n_layers - 1])  # warm-up
    integrated_gradients(lm_bf16, queries[0], steps=STEPS, layers=[lm.n_layers - 1])
    bag, bag_bf16 = [], []
    for prompt, query in zip(SMOLLM2_BAG, queries, strict=True):
        flops = lower_bound_flops(lm, query, STEPS)
        result.flops += flops
        rate = matmul_rate(torch.float32)
        rates[torch.float32] = max(rates.get(torch.float32, 0.0), rate)
        result.bound_f32_s += flops / rate
        scored = result.f32.time(integrated_gradients, lm, prompt, SMOLLM2_ANSWER, steps=STEPS)
        bag.append(scored)
        rate = matmul_rate(torch.bfloat16)
        rates[torch.bfloat16] = max(rates.get(torch.bfloat16, 0.0), rate)
        result.bound_bf16_s += flops / rate
        scored_bf16 = result.bf16.time(integrated_gradients, lm_bf16, prompt, SMOLLM2_ANSWER, steps=STEPS)
        bag_bf16.append(scored_bf16)
        result.corr_bf16.append(correlation(scored_bf16.scores.float(), scored.scores))
    kn = result.f32.time(refine, bag)
    kn_bf16 = result.bf16.time(refine, bag_bf16)
    result.refined = {"f32": kn.keys, "bf16": kn_bf16.keys}
    return result


def report_smollm2(r: FactResult) -> None:
    print(f"\n[SmolLM2-135M] one fact, a bag of {len(SMOLLM2_BAG)} prompts -> {SMOLLM2_ANSWER!r}, {STEPS} steps, "
          f"alpha k/m (loaded in {r.load_s:.1f} s, not counted)")
    print(f"  float32:  {r.f32_s:.2f} s/fact (CPU {sum(r.f32.cpu):.2f} s), {100 * r.bound_f32_s / r.f32_s:.0f}% of "
          f"the float32 lower bound ({r.flops / 1e9:.1f} GFLOP/fact); refined {fmt_neurons(r.refined['f32'])}")
    print(f"  bfloat16: {r.bf16_s:.2f} s/fact ({r.f32_s / r.bf16_s:.2f}x float32), "
          f"{100 * r.bound_bf16_s / r.bf16_s:.0f}% of the bfloat16 bound; Pearson vs float32 min "
          f"{min(r.corr_bf16):.5f}; refined {fmt_neurons(r.refined['bf16'])}: "
          f"{overlap(r.refined['f32'], r.refined['bf16'])} vs float32")


# -------------------------------------------------------------------------------------------- main

def main() -> None:
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; steps {STEPS}, EleutherAI batch {BATCH}, "
          f"{PROMPTS} prompts per case")
    rates: dict[torch.dtype, float] = {}
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("bert", "gpt2"):
            model = build_model(shape)
            tokenizer = offline_tokenizer("mlm" if shape == "bert" else "causal", model.config.vocab_size,
                                          Path(tmp) / shape)
            for length in LENGTHS:
                result = run_case(shape, length, model, tokenizer, rates)
                report_case(result)
                results.append(result)
                sys.stdout.flush()
            del model
    fact = run_smollm2(rates)
    report_smollm2(fact)
    print(f"\nbest matrix-multiply rate seen: float32 {rates[torch.float32] / 1e9:.0f} GFLOP/s, "
          f"bfloat16 {rates[torch.bfloat16] / 1e9:.0f} GFLOP/s (the bounds above use the rate measured "
          f"just before each run); total {time.perf_counter() - started:.0f} s")
    by = {(r.shape, r.length): r for r in results}
    corr_min = min(min(r.corr) for r in results)
    summary = {"speedup_gpt2_15": round(by["gpt2", 15].speedup, 2), "speedup_gpt2_5": round(by["gpt2", 5].speedup, 2),
               "speedup_bert_15": round(by["bert", 15].speedup, 2), "speedup_bert_5": round(by["bert", 5].speedup, 2),
               "score_corr_min": round(corr_min, 6), "smollm2_s_per_fact": round(fact.f32_s, 2)}
    write_results("bench_attribution", command="make bench", summary=summary, tables=result_tables(results, fact))
    print(f"speedup_gpt2_15={by['gpt2', 15].speedup:.2f} speedup_gpt2_5={by['gpt2', 5].speedup:.2f} "
          f"speedup_bert_15={by['bert', 15].speedup:.2f} speedup_bert_5={by['bert', 5].speedup:.2f} "
          f"score_corr_min={corr_min:.6f} smollm2_s_per_fact={fact.f32_s:.2f}")


def result_tables(results: list[CaseResult], fact: FactResult) -> list[dict]:
    """The printed figures as the tables of ``benchmarks/results/bench_attribution.json`` (the docs render it)."""
    cases = []
    for r in sorted(results, key=lambda r: (r.shape != "gpt2", -r.length)):
        cases.append([f"{r.shape} shape, {r.length} tokens", r.eleuther.best, r.kneuron.best, r.speedup,
                      FLOORS[(r.shape, r.length)], min(r.corr), overlap(r.refined["eleuther"], r.refined["kneuron"]),
                      r.flops / r.rate_f32 / r.kneuron.best, r.kneuron.best / r.bf16.best, min(r.corr_bf16)])
    smollm2 = [["float32", fact.f32_s, fact.bound_f32_s / fact.f32_s, fact.flops / 1e9, 1.0, "–"],
               ["bfloat16", fact.bf16_s, fact.bound_bf16_s / fact.bf16_s, fact.flops / 1e9, fact.f32_s / fact.bf16_s,
                overlap(fact.refined["f32"], fact.refined["bf16"])]]
    return [
        table(f"EleutherAI's knowledge-neurons against kneuron ({len(results[0].kneuron.wall)} prompts per case, "
              f"{STEPS} steps, best run of each)",
              ["case", "EleutherAI s/prompt", "kneuron s/prompt", "speed-up", "issue's floor", "score Pearson min",
               "refined neurons", "kneuron / float32 lower bound", "bfloat16 speed vs float32",
               "bfloat16 Pearson min"], cases),
        table(f"SmolLM2-135M, one fact (a bag of {len(SMOLLM2_BAG)} prompts, {STEPS} steps)",
              ["dtype", "s/fact", "share of the lower bound", "GFLOP/fact", "speed vs float32",
               "refined vs float32"], smollm2),
    ]


if __name__ == "__main__":
    main()

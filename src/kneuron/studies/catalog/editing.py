"""``editing``: update each fact through its knowledge neurons (and the random control) and erase a relation
(Dai et al. 2022, §5; :mod:`kneuron.studies.editing`): does the edit take, and what else moves? Collateral facts
and new answers come from the built-in facts the model knows. Opt-in: it makes hundreds of edits."""

from __future__ import annotations

import time
from collections.abc import Sequence

from kneuron.errors import StudyError
from kneuron.facts import builtin_facts, known_facts
from kneuron.studies.base import SEED, Option, Study, StudyContext, StudyOutput
from kneuron.studies.editing import SETTINGS, editing_study, erase_study
from kneuron.studies.editing_summary import CONTROLS, editing_tables
from kneuron.studies.registry import register_study


def parse_settings(text: str) -> list[tuple[str, str]]:
    """``scale:sign`` pairs, comma-separated, e.g. ``absolute:none,slot_norm:none``."""
    pairs = [tuple(item.strip().split(":")) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise StudyError(f"--settings {text!r}: give scale:sign pairs, comma-separated (e.g. absolute:none).")
    return pairs  # type: ignore[return-value]


@register_study
class Editing(Study):
    """Updates through each fact's knowledge neurons (and as many random ones) to another answer, and erasing a
    relation: success, change rate and the collateral damage on other facts.

    Controls (the paired p-values of the stored aggregates): each update through the knowledge neurons against the
    same update through as many random neurons of the same layers on the same fact (``kn`` vs ``random``, and the
    ``_signed``, ``_slot_norm`` and ``_slot_norm_signed`` forms against theirs); erasing the relation's neurons
    against erasing as many random ones (``erase_zero`` vs ``erase_random_zero``, ``erase_unknown`` vs
    ``erase_random_unknown``)."""

    name = "editing"
    title = "Editing knowledge"
    changes_weights = True
    controls = CONTROLS
    options = (Option("erase", str, None, "A relation to erase (its most common knowledge neurons), in modes zero "
                      "and unknown.", stored=False),
               Option("top", int, 20, "The relation's most common knowledge neurons that --erase erases.", min=1),
               Option("n_other", int, 5, "Collateral facts per edit, per side (same relation, other relations).",
                      min=0, flag="--other"),
               Option("n_other_erase", int, 50, "Facts of other relations measured when erasing.", min=0,
                      flag="--other-erase"),
               SEED,
               Option("settings", str, ",".join(f"{a}:{b}" for a, b in SETTINGS), "The update settings as "
                      "scale:sign pairs, comma-separated.", stored=False))

    def run(self, context: StudyContext) -> list[dict]:
        options, lm = context.options, context.lm
        settings = parse_settings(options["settings"])
        facts, neurons = context.facts, context.atlas.all_refined()
        known = {f.id: f for f in known_facts(lm, builtin_facts())[0]}
        pool = list({**known, **{f.id: f for f in facts}}.values())
        rows: list[dict] = []
        for scale, sign in settings:
            start = time.perf_counter()
            rows += editing_study(lm, facts, neurons, pool=pool, scale=scale, sign=sign, n_other=options["n_other"],
                                  seed=options["seed"])
            context.say(f"update scale={scale} sign={sign}: {len(facts)} facts in {time.perf_counter() - start:.0f} s")
        if options["erase"]:
            for mode in ("zero", "unknown"):
                start = time.perf_counter()
                rows += erase_study(lm, pool, options["erase"], neurons, top=options["top"], mode=mode,
                                    n_other=options["n_other_erase"], seed=options["seed"])
                context.say(f"erase {options['erase']} ({mode}) in {time.perf_counter() - start:.0f} s")
        return rows

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        """Each update and erase measure with its stored interval, n and paired p against its control."""
        return editing_tables(output.rows, output.aggregates)

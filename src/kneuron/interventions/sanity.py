"""An edit must leave the model usable: refused when, applied, it breaks the outputs on the edited fact's prompts.

A finite lambda can still break a model: ``lambda_new=3e38`` gives a finite value slot whose product with an
activation overflows, and the saved model then predicts every token at 1/V. So :func:`update_fact
<kneuron.interventions.update.update_fact>` applies the edit it made once, reads the output distribution at the
answer positions of the fact's own prompts, undoes it (exactly: :meth:`Edit.applied
<kneuron.interventions.edits.Edit.applied>`), and refuses the edit when those outputs are non-finite or collapsed
to a uniform distribution (:func:`kneuron.attribution.health.collapsed`) where the clean model's were finite and
not uniform (a model already broken is not the edit's doing; ``find`` and ``run`` refuse it). The
refusal comes before anything is returned, so before the CLI saves a model or an edit file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kneuron.attribution.health import answer_logits, collapsed
from kneuron.errors import EditBreaksModelError
from kneuron.facts.encoding import EncodedQuery
from kneuron.interventions.edits import Edit
from kneuron.models.language_model import LanguageModel


def check_keeps_model(lm: LanguageModel, edit: Edit, queries: Sequence[EncodedQuery], cause: str) -> None:
    """Refuse ``edit`` when, applied, it makes ``lm``'s outputs at ``queries``' answer positions non-finite or
    uniform where the clean model's are not; ``cause`` names the value that did it (e.g. ``"lambda_new=3e+38"``).
    ``lm`` is restored exactly whether or not the edit is refused.

    Raises:
        EditBreaksModelError: one line naming ``cause``, the first prompt it breaks and how.
    """
    clean = [answer_logits(lm, query) for query in queries]
    with edit.applied(lm):
        edited = [answer_logits(lm, query) for query in queries]
    for query, before, after in zip(queries, clean, edited, strict=True):
        if not bool(torch.isfinite(before).all()):
            continue  # broken before the edit (a NaN weight already there): not the edit's doing
        if not bool(torch.isfinite(after).all()):
            broken = "gives non-finite logits"
        elif collapsed(after) and not collapsed(before):
            top = float(torch.softmax(after, dim=-1).max())
            broken = (f"predicts a uniform distribution (every token at {top:.4g} of a {after.shape[-1]}-token "
                      "vocabulary)")
        else:
            continue
        raise EditBreaksModelError(
            f"Refused: with {cause}, the edited model {broken} on the fact's own prompt {query.text!r}, so nothing "
            "was applied or saved; use a smaller value (the paper's lambdas are 1 and 8).")

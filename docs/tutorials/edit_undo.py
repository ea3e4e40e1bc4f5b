# %% [markdown]
# # An edit and its undo
#
# Update "The capital of France is Paris" to Rome through the fact's knowledge neurons' value slots, look at the
# answer inside the edit, and check that undoing it restores every weight bit for bit. Executed when the docs are
# built (one torch thread).

# %%
import torch

import kneuron
from kneuron.interventions import fingerprint, update_fact

torch.set_num_threads(1)
lm = kneuron.load("smollm2-135m")
prompts = ["The capital of France is", "France's capital city is", "The capital city of France is"]
kn = kneuron.find_knowledge_neurons(lm, prompts, "Paris", estimator=kneuron.IntegratedGradients(steps=8))
edit = update_fact(lm, kn, "Paris", "Rome")
edit

# %%
query = "The capital of France is"
original = fingerprint(lm, fresh=True)
before = {a: kneuron.answer_probability(lm, query, a).probability for a in ("Paris", "Rome")}
handle = edit.apply(lm)
during = {a: kneuron.answer_probability(lm, query, a).probability for a in ("Paris", "Rome")}
handle.undo()
after = {a: kneuron.answer_probability(lm, query, a).probability for a in ("Paris", "Rome")}
{"before": before, "edited": during, "undone": after}

# %%
assert fingerprint(lm, fresh=True) == original, "the undo did not restore the weights"
"weights restored bit for bit"

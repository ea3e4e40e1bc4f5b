# %% [markdown]
# # The neurons of one fact
#
# The knowledge neurons of "The capital of France is … Paris" in the embedded SmolLM2-135M: integrated gradients
# per prompt, the refined set, and what switching those neurons off does to the answer. Executed when the docs are
# built (one torch thread).

# %%
import torch

import kneuron

torch.set_num_threads(1)
lm = kneuron.load("smollm2-135m")
lm

# %%
prompts = ["The capital of France is", "France's capital city is", "The capital city of France is"]
kn = kneuron.find_knowledge_neurons(lm, prompts, "Paris", estimator=kneuron.IntegratedGradients(steps=8))
[str(n) for n in kn.neurons]

# %%
kn

# %% [markdown]
# Switching the neurons off at the answer position, inside a context manager that restores the model on exit:

# %%
query = kneuron.encode(lm, prompts[0], "Paris")
before = kneuron.answer_probability(lm, query).probability
with kneuron.patch(lm, [kneuron.NeuronPatch(n.layer, n.index, "set", 0.0) for n in kn.neurons],
                   positions=query.position):
    during = kneuron.answer_probability(lm, query).probability
after = kneuron.answer_probability(lm, query).probability
{"before": before, "suppressed": during, "after (restored)": after}

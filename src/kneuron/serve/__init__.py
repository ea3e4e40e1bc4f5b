"""kneuron serve: a local web app over an atlas (pages per relation, fact and neuron; live probes)."""

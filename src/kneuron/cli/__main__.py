"""``python -m kneuron.cli``: the same as the ``kneuron`` script."""

from kneuron.cli import main

main()

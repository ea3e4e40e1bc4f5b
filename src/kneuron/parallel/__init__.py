"""Executors that feed :func:`kneuron.store.run`: the local one (default) and Ray actors.

Layering: the executor interface (:class:`kneuron.store.chunks.Executor`) and the local executor live in the
store; this layer sits above it and adds :class:`RayExecutor`. ``store.run(..., executor=RayExecutor(...))``
takes the executor as an object, so the store never imports this package, and Ray stays an optional extra
(``pip install 'kneuron[ray]'``): nothing here imports ``ray`` until a Ray executor starts.

Example:
    >>> from kneuron.parallel import RayExecutor
    >>> run(lm, facts, "runs/big.sqlite", executor=RayExecutor("path/or/hub-id", workers=8, gpus_per_worker=1))
"""

from kneuron.parallel.ray_executor import RayExecutor, make_executor
from kneuron.store.chunks import Executor, LocalExecutor

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor"]

"""The limits of one attribution run: its layers, counts (steps, batch rows) and the memory budget, checked up front.

Everything here refuses bad input with one :class:`~kneuron.errors.InputError` before anything is
allocated: a float ``steps`` would silently put α above 1, and a billion steps would build billions of
row descriptors before the first batch ran (the kernel killed such a run at 24 GB).

When a batch does not fit after all (the estimate is an estimate; other processes share a GPU),
:func:`out_of_memory_as_error` turns the allocator's error into one :class:`~kneuron.errors.OutOfMemory` line
that names what was tried and the setting to lower.

Memory sizes are plain bytes or a number with a unit: ``B``, decimal ``KB MB GB TB`` (10³ steps), binary
``KiB MiB GiB TiB`` (2¹⁰ steps) and the one-letter ``K M G T``, which are binary too (as in Docker's
``--memory`` or ``ulimit``): ``2GB`` is 2·10⁹ bytes, ``2GiB`` and ``2G`` are 2·2³⁰.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
import os
import re
from collections.abc import Iterator, Sequence

import torch

from kneuron.errors import InputError, OutOfMemory
from kneuron.models.language_model import LanguageModel

#: the environment variable that overrides :data:`DEFAULT_MEMORY_BUDGET`
BUDGET_VARIABLE = "KNEURON_MEMORY_BUDGET"
#: default memory for one batch of steps: 2 GiB
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
#: bytes of bookkeeping per (prompt, layer, α) row, all rows of a run held at once (a 4-tuple, its float and
#: list slots: 104 bytes on CPython 3.12, rounded up)
ROW_BOOKKEEPING = 128
#: the most Gauss–Legendre points ``alphas="gauss"`` takes. Its nodes come from an m×m eigenproblem
#: (``numpy.polynomial.legendre.leggauss``): m² floats and O(m³) time, so 30,000 points would need a 7.2 GB matrix
#: before anything else ran, while 1,000 need 8 MB and under a second. The rule is for few points: m of them are
#: exact for polynomials of degree 2m − 1 in α, and 4 to 6 come near a 200-step Riemann sum; past some tens a
#: Riemann rule with as many steps costs nothing up front.
MAX_GAUSS_POINTS = 1000

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([a-z]*)\s*$", re.IGNORECASE)
#: what a CPU allocator's RuntimeError says when an allocation fails (torch raises no OutOfMemoryError there)
CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator", "can't allocate memory")
#: the settings that shrink integrated gradients' batches, as an out-of-memory message names them
LOWER_BATCHES = (f"memory_budget (the CLI reads {BUDGET_VARIABLE}, e.g. 1GiB) or batch_rows, or a run's chunk_facts "
                 "(--chunk-facts: the prompts of a chunk keep their clean passes on the device together)")
ACCEPTED_SIZES = "plain bytes (2147483648) or a number with a unit: 2GiB, 2G, 512MiB, 2GB, 512MB, 1.5G"


def count(name: str, value: object, *, at_least: int = 1) -> int:
    """``value`` as an int of at least ``at_least``; refuses bools, floats (also 3.0) and other non-integers.

    Integer types that are not ``int`` (a numpy integer, a 0-d integer tensor) are accepted.
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InputError(f"{name} must be a whole number of at least {at_least}; got {value!r} "
                         f"({type(value).__name__}).")
    try:
        number = operator.index(value)
    except TypeError:  # e.g. a float tensor, whose __index__ refuses
        raise InputError(f"{name} must be a whole number of at least {at_least}; got {value!r}.") from None
    if number < at_least:
        raise InputError(f"{name} must be at least {at_least}; got {number}.")
    return number


def parse_size(text: str, what: str = "a memory size") -> int:
    """Bytes of a human size such as ``2GiB``, ``512MB``, ``1.5G`` or ``2147483648`` (see the module docstring)."""
    match = _SIZE.match(text)
    unit = match.group(3).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InputError(f"{what} of {text!r} is not a size; use {ACCEPTED_SIZES}.")
    number = float(match.group(1)) * 10 ** int(match.group(2) or 0) * _UNITS[unit]
    if not math.isfinite(number) or number < 1:
        raise InputError(f"{what} of {text!r} is below one byte; use {ACCEPTED_SIZES}.")
    return int(number)


def memory_budget(value: int | str | None = None) -> int:
    """The memory budget in bytes: ``value`` (bytes, or a size string), else ``$KNEURON_MEMORY_BUDGET``, else 2 GiB."""
    if value is None:
        text = os.environ.get(BUDGET_VARIABLE)
        if text is None:
            return DEFAULT_MEMORY_BUDGET
        return parse_size(text, f"{BUDGET_VARIABLE}")
    if isinstance(value, str):
        return parse_size(value, "memory_budget")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isfinite(value) \
            and value == int(value):
        value = int(value)  # 2e9 is a fine number of bytes
    return count("memory_budget (bytes)", value)


def format_size(size: float) -> str:
    """``size`` bytes for people: 2.0 GiB, 512.0 MiB, 96 B."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size:.0f} B"


def check_run_fits(steps: int, layers: int, prompts: int, budget: int) -> None:
    """Refuse a run whose row bookkeeping alone (steps × layers × prompts rows) exceeds ``budget``."""
    rows = steps * layers * prompts
    need = rows * ROW_BOOKKEEPING + steps * 16  # the rows, and the α points (float64, and a Python float each)
    if need > budget:
        raise InputError(
            f"steps={steps:,} over {layers} layer(s) and {prompts} prompt(s) makes {rows:,} attribution rows, "
            f"whose bookkeeping alone needs about {format_size(need)}, more than the memory budget of "
            f"{format_size(budget)}; lower steps (the paper uses 20) or attribute fewer layers or prompts at once "
            f"(or raise memory_budget / {BUDGET_VARIABLE})."
        )


def attributed_layers(lm: LanguageModel, layers: Sequence[int] | None) -> list[int]:
    """The layers an estimator scores: ``layers`` (all by default) ascending and once each, every one checked to
    exist; an empty choice is refused (what each estimator refuses before any forward pass)."""
    chosen = sorted(set(range(lm.n_layers) if layers is None else layers))
    for layer in chosen:
        lm.check_layer(layer)
    if not chosen:
        raise InputError("No layers to attribute: give at least one layer index.")
    return chosen


def check_gauss_points(steps: int) -> None:
    """Refuse more Gauss–Legendre points than :data:`MAX_GAUSS_POINTS` (arithmetic only: nothing is computed)."""
    if steps > MAX_GAUSS_POINTS:
        raise InputError(
            f"alphas 'gauss' takes at most {MAX_GAUSS_POINTS:,} points; got steps={steps:,}. Its nodes come from an "
            f"m×m eigenproblem (about {format_size(8 * steps * steps)} for this many), and a few points already "
            "integrate a smooth curve exactly: use fewer steps, or a Riemann rule (alphas 'right') for many.")


def host_budget(value: int | str | None) -> int:
    """The budget a check without a model measures host bookkeeping against: ``value``, else
    ``$KNEURON_MEMORY_BUDGET``, else 2 GiB (the row descriptors live in host memory whatever the device)."""
    return memory_budget(value)


def check_steps_fit(steps: int, budget: int) -> None:
    """Refuse ``steps`` whose smallest possible run (one layer, one prompt) already exceeds ``budget``: what an
    estimator checks when it is made, before it has a model (arithmetic only)."""
    need = steps * (ROW_BOOKKEEPING + 16)
    if need > budget:
        raise InputError(
            f"steps={steps:,} is too many even for one layer of one prompt: its rows' bookkeeping alone needs about "
            f"{format_size(need)}, more than the memory budget of {format_size(budget)}; lower steps (the paper "
            f"uses 20) or raise memory_budget / {BUDGET_VARIABLE}."
        )


def check_row_fits(per_row: float, budget: int) -> None:
    """Refuse a prompt one of whose rows alone is estimated to need more than ``budget``."""
    if per_row > budget:
        raise InputError(
            f"One attribution row of this prompt needs about {format_size(per_row)}, more than the memory budget "
            f"of {format_size(budget)}; raise memory_budget / {BUDGET_VARIABLE} (e.g. 4GiB) or use a shorter prompt."
        )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: ``torch.OutOfMemoryError`` (CUDA and other accelerators) or a
    CPU allocator's RuntimeError (:data:`CPU_OUT_OF_MEMORY`)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in CPU_OUT_OF_MEMORY)


def _first_sentences(text: str, count: int = 2) -> str:
    """The first ``count`` sentences of an allocator's message, on one line (CUDA's goes on about fragmentation)."""
    sentences = " ".join(text.split()).split(". ")
    return ". ".join(sentences[:count]).rstrip(".")


@contextlib.contextmanager
def out_of_memory_as_error(device: torch.device | str, tried: str, *, needs: float | None = None,
                           budget: float | None = None, lower: str = LOWER_BATCHES) -> Iterator[None]:
    """Turn an allocation failure inside the block into one :class:`~kneuron.errors.OutOfMemory` line: where it
    happened (``device``), what was ``tried``, the estimate it ``needs`` against the ``budget`` (bytes), the
    allocator's own first words, and the settings to ``lower``. Any other exception passes unchanged.

    The failed allocation's traceback is dropped, so the frames of the block (and the tensors they hold) are
    freed when the error is raised, not when it is handled.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not (is_out_of_memory(error) or isinstance(error, MemoryError)):
            raise
        estimate = ""
        if needs is not None:
            estimate = f" (estimated {format_size(needs)}" + (
                f" of a memory budget of {format_size(budget)})" if budget is not None else ")")
        said = _first_sentences(str(error)) or type(error).__name__
        error.__traceback__ = None
        raise OutOfMemory(f"Out of memory on {device} while {tried}{estimate}: {said}. Lower {lower}.") from None

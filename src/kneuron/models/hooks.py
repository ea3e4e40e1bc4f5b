"""Read and patch FFN neuron activations, always restoring the model on exit.

Everything here is a context manager that registers forward pre-hooks on the FFN output
projections (whose input *is* the neuron activation) and removes them in ``finally``, so an
exception inside the ``with`` body never leaves a hook behind.

With shared layers (ALBERT: one block runs at every depth) a layer is a depth: every hook here acts on
that depth's forward of the block only (:func:`at_depth`), never on the other depths that run the same module.

Positions select tokens: ``None`` means every position, an int or a list of ints means those
positions in every row (negative indices count from the end), and a 1-D integer tensor with one
entry per batch row means one position per row (prompts of different lengths in one batch).

Example:
    >>> with capture(lm, positions=-1) as acts:
    ...     lm.model(**inputs)
    >>> acts[17].shape        # (batch, 1, n_neurons)
    >>> with patch(lm, [NeuronPatch(17, 1234, "set", 0.0)], positions=-1):
    ...     lm.model(**inputs)   # neuron L17.N1234 switched off at the last token
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from kneuron.errors import InputError
from kneuron.models.language_model import LanguageModel

Positions = None | int | Sequence[int] | torch.Tensor
ActivationFn = Callable[[torch.Tensor], torch.Tensor | None]
PatchOp = Literal["set", "scale", "add"]


def _always() -> bool:
    return True


@contextmanager
def at_depth(lm: LanguageModel, layer: int) -> Iterator[Callable[[], bool]]:
    """Yields ``current()``: whether the forward of ``lm.block(layer)`` running now is depth ``layer``'s.

    Without shared layers a block runs at one depth only, so ``current`` is always True and nothing is
    registered. With shared layers (ALBERT) the block's forwards are counted by a forward pre-hook: within one
    forward pass of the model, depth ``layer`` is the block's forward number ``lm.occurrence(layer)`` of
    ``len(lm.sharing(layer))``. The count restarts at every forward of ``lm.model`` (so a pass an exception cut
    short leaves nothing behind) and wraps around after a whole pass (so a pass of a submodule, e.g.
    ``lm.model.albert``, counts right too). Register hooks that ask ``current`` on the block itself after
    entering this context, so that the count is already up to date when they run. Hooks are removed on exit.
    Gradient checkpointing, which runs a block's forward again during backward, is not supported (eval mode
    never checkpoints).
    """
    lm.check_layer(layer)
    if not lm.shared_layers or len(lm.sharing(layer)) == 1:
        yield _always
        return
    per_pass, target = len(lm.sharing(layer)), lm.occurrence(layer)
    forwards = [0]

    def restart(*_args) -> None:
        forwards[0] = 0

    def count(*_args) -> None:
        forwards[0] += 1

    handles = []
    try:
        handles.append(lm.model.register_forward_pre_hook(restart))
        handles.append(lm.block(layer).register_forward_pre_hook(count))
        yield lambda: (forwards[0] - 1) % per_pass == target
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def on_ffn_input(lm: LanguageModel, layer: int, fn: ActivationFn) -> Iterator[None]:
    """Call ``fn(activations)`` on every forward of ``layer``'s FFN output projection (with shared layers: on
    its forwards at depth ``layer`` only, see :func:`at_depth`).

    ``activations`` has shape (batch, seq, n_neurons); ``fn`` may return a replacement of the same
    shape (to patch) or None (to only read). Removed on exit, also when the body raises.
    """
    with at_depth(lm, layer) as current, _on_ffn_input(lm, layer, fn, current):
        yield


@contextmanager
def forward_hook(module: torch.nn.Module, hook: Callable, *, pre: bool = False, with_kwargs: bool = False,
                 ) -> Iterator[None]:
    """``hook`` as a forward hook of ``module`` (``hook(module, args, output)``, whose return value, when not None,
    replaces the output), or with ``pre`` a forward pre-hook (``hook(module, args)``, replacing the input), for the
    duration of the block; removed on exit, also after an exception. ``with_kwargs`` as torch's registration."""
    register = module.register_forward_pre_hook if pre else module.register_forward_hook
    handle = register(hook, with_kwargs=with_kwargs)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def block_pre_hooks(lm: LanguageModel, layers: Iterable[int], hook: Callable) -> Iterator[None]:
    """``hook(module, args, kwargs)`` as a forward pre-hook (with kwargs) of each of ``layers``' blocks for the
    duration of the block; all removed on exit, also after an exception."""
    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(forward_hook(lm.block(layer), hook, pre=True, with_kwargs=True))
        yield


@contextmanager
def _block_shape(lm: LanguageModel, layer: int, needed: bool) -> Iterator[dict[str, tuple[int, int]]]:
    """When ``needed`` (a model whose projections see flattened tokens, OPT's), ``shape["bt"]``: the (batch, seq)
    of ``layer``'s block input, recorded by a pre-hook on the block at each forward, so that a hook on one of its
    projections can show (batch, seq, features); an empty dict otherwise."""
    shape: dict[str, tuple[int, int]] = {}
    if not needed:
        yield shape
        return

    def remember_shape(_module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        shape["bt"] = tuple(hidden.shape[:2])

    with forward_hook(lm.block(layer), remember_shape, pre=True, with_kwargs=True):
        yield shape


@contextmanager
def _on_ffn_input(lm: LanguageModel, layer: int, fn: ActivationFn, current: Callable[[], bool]) -> Iterator[None]:
    module = lm.ffn_out(layer)

    def pre_hook(_module, args):
        if not current():
            return None
        x = args[0]
        flat = x.dim() == 2
        if flat:
            x = x.view(*shape["bt"], x.shape[-1])
        out = fn(x)
        if out is None:
            return None
        if flat:
            out = out.reshape(-1, out.shape[-1])
        return (out, *args[1:])

    # should the second registration fail, the first is removed
    with _block_shape(lm, layer, lm.spec.flat_tokens) as shape, forward_hook(module, pre_hook, pre=True):
        yield


def normalize_positions(positions: Positions) -> None | int | list[int] | torch.Tensor:
    """``positions`` as None, an int, a list of ints, or a 1-D per-row tensor.

    Accepts anything integer-like where an int goes (a 0-d tensor, a numpy integer) and any sequence
    of those where a list goes.
    """
    if positions is None:
        return None
    if isinstance(positions, torch.Tensor):
        if positions.dim() == 0:
            return int(positions)
        if positions.dim() != 1 or positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise InputError(
                f"A position tensor must be 1-D and integer (one position per batch row), not "
                f"{positions.dtype} of shape {tuple(positions.shape)}."
            )
        return positions
    try:
        if hasattr(positions, "__index__"):
            return operator.index(positions)
        return [operator.index(p) for p in positions]
    except TypeError as exc:
        raise InputError(
            f"Positions must be None, an int, a list of ints or a per-row integer tensor, not {positions!r}."
        ) from exc


def select_positions(x: torch.Tensor, positions: Positions) -> torch.Tensor:
    """The (batch, n_positions, n_neurons) slice of ``x`` at ``positions``."""
    positions = normalize_positions(positions)
    if positions is None:
        return x
    if isinstance(positions, torch.Tensor) and positions.dim() == 1 and positions.numel() == x.shape[0]:
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, positions.to(x.device)].unsqueeze(1)
    index = [positions] if isinstance(positions, int) else list(positions)
    return x[:, index]


def _put_positions(x: torch.Tensor, positions: Positions, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` whose entries at ``positions`` are ``values`` (the inverse of select_positions)."""
    out = x.clone()
    if isinstance(positions, torch.Tensor) and positions.dim() == 1 and positions.numel() == x.shape[0]:
        rows = torch.arange(x.shape[0], device=x.device)
        out[rows, positions.to(x.device)] = values[:, 0]
    else:
        out[:, [positions] if isinstance(positions, int) else list(positions)] = values
    return out


def _check_positions(positions: Positions, x: torch.Tensor) -> None:
    if positions is None:
        return
    seq = x.shape[1]
    if isinstance(positions, torch.Tensor):
        if positions.numel() != x.shape[0]:
            raise InputError(
                f"A per-row position tensor has {positions.numel()} entries but the batch has {x.shape[0]} rows."
            )
        low, high = (int(positions.min()), int(positions.max())) if positions.numel() else (0, 0)
    else:
        chosen = [positions] if isinstance(positions, int) else positions
        low, high = (min(chosen), max(chosen)) if chosen else (0, 0)
    if low < -seq or high >= seq:
        raise InputError(
            f"Position {low if low < -seq else high} is out of range for a sequence of {seq} tokens "
            f"(use 0..{seq - 1}, or -{seq}..-1 from the end)."
        )


class Activations(dict):
    """``{layer: tensor}`` filled by :func:`capture`; each tensor is (batch, n_positions, n_neurons)."""

    def stack(self) -> torch.Tensor:
        """All captured layers stacked: (layers, batch, n_positions, n_neurons)."""
        return torch.stack([self[layer] for layer in sorted(self)])


@contextmanager
def capture(
    lm: LanguageModel,
    layers: Iterable[int] | None = None,
    positions: Positions = None,
    *,
    detach: bool = True,
) -> Iterator[Activations]:
    """Record the neuron activations of ``layers`` (all by default) at ``positions``.

    The last forward pass inside the block wins. With ``detach=False`` the tensors keep their
    autograd graph and the forward pass continues from them, so ``torch.autograd.grad(output, acts[l])``
    gives gradients with respect to the activations (also when ``positions`` selects a subset).
    """
    chosen = list(range(lm.n_layers)) if layers is None else list(layers)
    for layer in chosen:
        lm.check_layer(layer)
    positions = normalize_positions(positions)
    found = Activations()

    def recorder(layer: int) -> ActivationFn:
        def record(x: torch.Tensor) -> torch.Tensor | None:
            _check_positions(positions, x)
            picked = select_positions(x, positions)
            if detach:
                found[layer] = picked.detach()
                return None
            found[layer] = picked
            # selecting positions copies them, so the forward must go on from the copy for gradients
            # with respect to it to exist: put it back into (a copy of) x, same values
            return x if positions is None else _put_positions(x, positions, picked)
        return record

    with ExitStack() as stack:
        for layer in chosen:
            stack.enter_context(on_ffn_input(lm, layer, recorder(layer)))
        yield found


@dataclass(frozen=True, init=False)
class NeuronPatch:
    """One change to neuron ``(layer, index)``: ``set`` it to ``value``, ``scale`` it by ``value``, or ``add``
    ``value``. The neuron's index is ``index``, as in :class:`~kneuron.attribution.types.Neuron`; ``neuron`` is
    its deprecated name (a constructor keyword and a read-only property that warn with FutureWarning)."""

    layer: int
    index: int
    op: PatchOp = "set"
    value: float = 0.0

    def __init__(self, layer: int, index: int | None = None, op: PatchOp = "set", value: float = 0.0, *,
                 neuron: int | None = None) -> None:
        if neuron is not None:
            if index is not None:
                raise InputError("Give the neuron's index once: index= (neuron= is its deprecated name).")
            warnings.warn("NeuronPatch(neuron=...) is deprecated: use NeuronPatch(layer, index=...)", FutureWarning,
                          stacklevel=2)
            index = neuron
        if index is None:
            raise InputError("A NeuronPatch needs the neuron's index: NeuronPatch(layer, index, op, value).")
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "value", value)

    @property
    def neuron(self) -> int:
        """Deprecated: the neuron's index, now :attr:`index` (warns with FutureWarning)."""
        warnings.warn("NeuronPatch.neuron is deprecated: use NeuronPatch.index", FutureWarning, stacklevel=2)
        return self.index

    def __str__(self) -> str:
        return f"L{self.layer}.N{self.index} {self.op} {self.value:g}"


def suppress_patches(neurons: Iterable[tuple[int, int]]) -> list[NeuronPatch]:
    """Patches that zero each ``(layer, index)``."""
    return [NeuronPatch(layer, index, "set", 0.0) for layer, index in neurons]


def scale_patches(neurons: Iterable[tuple[int, int]], factor: float) -> list[NeuronPatch]:
    """Patches that multiply each ``(layer, index)`` by ``factor``."""
    return [NeuronPatch(layer, index, "scale", factor) for layer, index in neurons]


def _apply(x: torch.Tensor, patches: list[NeuronPatch], positions: Positions) -> torch.Tensor:
    _check_positions(positions, x)
    out = x.clone()
    if positions is None:
        rows, cols = slice(None), slice(None)
    elif isinstance(positions, torch.Tensor) and positions.dim() == 1:
        rows, cols = torch.arange(x.shape[0], device=x.device), positions.to(x.device)
    else:
        rows, cols = slice(None), ([positions] if isinstance(positions, int) else list(positions))
    for p in patches:
        current = out[rows, cols, p.index] if not isinstance(rows, slice) else out[:, cols, p.index]
        if p.op == "set":
            new = torch.full_like(current, p.value)
        elif p.op == "scale":
            new = current * p.value
        elif p.op == "add":
            new = current + p.value
        else:
            raise InputError(f"Unknown patch op {p.op!r}: use 'set', 'scale' or 'add'.")
        if isinstance(rows, slice):
            out[:, cols, p.index] = new
        else:
            out[rows, cols, p.index] = new
    return out


@contextmanager
def patch(lm: LanguageModel, patches: Iterable[NeuronPatch], positions: Positions = None) -> Iterator[None]:
    """Apply ``patches`` to every forward pass inside the block, at ``positions`` (all by default)."""
    positions = normalize_positions(positions)
    by_layer: dict[int, list[NeuronPatch]] = {}
    for p in patches:
        lm.check_neuron(p.layer, p.index)
        if p.op not in ("set", "scale", "add"):
            raise InputError(f"Unknown patch op {p.op!r}: use 'set', 'scale' or 'add'.")
        by_layer.setdefault(p.layer, []).append(p)
    with ExitStack() as stack:
        for layer, layer_patches in by_layer.items():
            stack.enter_context(
                on_ffn_input(lm, layer, lambda x, ps=layer_patches: _apply(x, ps, positions))
            )
        yield


@contextmanager
def patch_rows(lm: LanguageModel, patches_by_row: Sequence[Iterable[NeuronPatch]],
               positions: Positions = None) -> Iterator[None]:
    """Like :func:`patch`, but row ``r`` of every batch gets its own patches, ``patches_by_row[r]`` (several
    patched variants of the same inputs in one forward pass). Each row is patched by the same code as
    :func:`patch`, so a row's result is the one it would get alone under ``patch``; a batch whose size is not
    ``len(patches_by_row)`` is refused. ``positions``: as in :func:`patch` (a per-row tensor gives each row its
    own position)."""
    positions = normalize_positions(positions)
    by_layer: dict[int, dict[int, list[NeuronPatch]]] = {}
    for row, patches in enumerate(patches_by_row):
        for p in patches:
            lm.check_neuron(p.layer, p.index)
            if p.op not in ("set", "scale", "add"):
                raise InputError(f"Unknown patch op {p.op!r}: use 'set', 'scale' or 'add'.")
            by_layer.setdefault(p.layer, {}).setdefault(row, []).append(p)
    rows = len(patches_by_row)

    def row_positions(row: int) -> Positions:
        if isinstance(positions, torch.Tensor) and positions.dim() == 1:
            return positions[row:row + 1]
        return positions

    def patch_layer(x: torch.Tensor, chosen: dict[int, list[NeuronPatch]]) -> torch.Tensor:
        if x.shape[0] != rows:
            raise InputError(f"patch_rows was given patches for {rows} rows but the batch has {x.shape[0]}.")
        out = x.clone()
        for row, patches in chosen.items():
            out[row:row + 1] = _apply(x[row:row + 1], patches, row_positions(row))
        return out

    with ExitStack() as stack:
        for layer, chosen in by_layer.items():
            stack.enter_context(on_ffn_input(lm, layer, lambda x, c=chosen: patch_layer(x, c)))
        yield


#: the three outputs of a block that causal tracing reads and restores: the block's output (the residual stream
#: after it), its MLP's output (the FFN output projection's) and its attention's output (``ArchSpec.attention_out``)
Site = Literal["block", "mlp", "attention"]
SITES: tuple[Site, ...] = ("block", "mlp", "attention")


def site_module(lm: LanguageModel, layer: int, site: Site) -> torch.nn.Module:
    """The module whose output is ``site`` at ``layer``: the block, its FFN output projection, or its attention
    output projection."""
    if site == "block":
        return lm.block(layer)
    if site == "mlp":
        return lm.ffn_out(layer)
    if site == "attention":
        return lm.attention_out(layer)
    raise InputError(f"Unknown site {site!r}: use one of {', '.join(SITES)}.")


@contextmanager
def on_output(lm: LanguageModel, layer: int, site: Site, fn: ActivationFn) -> Iterator[None]:
    """Call ``fn(output)`` on every forward of ``site``'s module at ``layer`` (with shared layers: at depth
    ``layer`` only); ``output`` is (batch, seq, hidden), and ``fn`` may return a replacement (to restore) or None
    (to read). A block's tuple output is read and replaced at its first element, the hidden states; a projection
    that sees flattened tokens (OPT's FFN) is shown (batch, seq, hidden). Removed on exit, also when the body
    raises."""
    module = site_module(lm, layer, site)
    with at_depth(lm, layer) as current, _block_shape(lm, layer, lm.spec.flat_tokens and site != "block") as shape:

        def hook(_module, _args, output):
            if not current():
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            flat = hidden.dim() == 2
            seen = hidden.view(*shape["bt"], hidden.shape[-1]) if flat else hidden
            out = fn(seen)
            if out is None:
                return None
            if flat:
                out = out.reshape(-1, out.shape[-1])
            return (out, *output[1:]) if isinstance(output, tuple) else out

        with forward_hook(module, hook):
            yield

"""An edit of FFN value slots as plain data: print it, apply it, undo it exactly, save it, load it back.

A knowledge neuron's *value slot* is what it writes into the residual stream: column ``i`` of an
``nn.Linear`` output projection's weight, or row ``i`` of GPT-2's ``Conv1D`` weight. An :class:`Edit`
names the slots it touches (per layer: the module's dotted path, its layout and the neuron indices)
and holds one finite vector per slot: a delta to add (``op="add"``, what
:func:`~kneuron.interventions.update_fact` makes) or the new value (``op="set"``, what
:func:`~kneuron.interventions.erase_relation` makes).

Applying an edit first copies the original slot values; undoing writes those copies back, so undo is
bit-exact (nothing is subtracted). Undo compares bit patterns, not values (so NaN weights and -0.0 are
handled), and refuses when a later edit of the same slots is still applied. An edit remembers the model it
was made for (a fingerprint: name, family, shapes, layout and a digest of the weights, see
:mod:`kneuron.interventions.live`) and refuses any other; it always refuses a layout that is not the model's.
The file format lives beside ``Edit``, in :mod:`kneuron.interventions.edit_format`, which this module owns;
saving never replaces the folder a model was loaded from, and replaces other files only when asked (see
:mod:`kneuron.interventions.edit_files`).

Modules, bottom up (each imports only those before it): :mod:`.slots` (value slots, :class:`SlotGroup`),
:mod:`.edit_format` (the file format), :mod:`.edit_files` (where an edited model may go), :mod:`.live` (the
live-edit registry, the weight digest), this module (:class:`Edit` and its undo handle, :class:`AppliedEdit`).

Shared layers (ALBERT runs one layer's weights at every depth, ``lm.shared_layers``): neurons (d1, i) and (d2, i)
of depths that run the same block write through one value slot, so editing that slot changes neuron i at every
one of those depths (``lm.sharing(d)``). An edit names each slot once: :meth:`Edit.build` merges neurons that share
a slot into the lowest of them when their vectors are equal (so a change is never written twice into one column)
and refuses different vectors for one slot; the edit's meta then records ``shared_depths`` (per edited layer, the
depths its slots serve) and ``merged`` (``[layer, index, [depths given]]`` for each slot several neurons named),
and :meth:`Edit.describe` says so.

Example:
    >>> edit = update_fact(lm, kn, "Paris", "Rome")
    >>> print(edit)
    Edit(update France capital: Paris -> Rome; 4 slots in L21,L29)
    >>> with edit.applied(lm):                 # weights restored on exit, also after an exception
    ...     answer_probability(lm, "The capital of France is", "Rome")
    >>> handle = edit.apply(lm)                # permanently, until
    >>> handle.undo()
    >>> edit.save("edits/france-rome")         # edit.safetensors + edit.json
    >>> Edit.load("edits/france-rome").apply(lm)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kneuron.errors import EditError
from kneuron.interventions import edit_files, edit_format, live
from kneuron.interventions.live import weights_digest
from kneuron.interventions.slots import (
    LAYOUTS,
    VALUE_DTYPES,
    SlotGroup,
    finite_or_error,
    is_int,
    module_path,
    read_slots,
    same_bits,
    slot_index,
    slot_names,
    write_slots,
)
from kneuron.models.language_model import LanguageModel

__all__ = ["LAYOUTS", "VALUE_DTYPES", "AppliedEdit", "Edit", "EditError", "SlotGroup", "finite_or_error",
           "fingerprint", "module_path", "read_slots", "same_bits", "shared_notes", "slot_sharers", "weights_digest",
           "write_slots"]

EditOp = Literal["add", "set"]


def fingerprint(lm: LanguageModel, *, fresh: bool = False) -> dict[str, Any]:
    """What an edit checks before it touches a model: its name, family, the shapes and layout the edit relies on,
    and ``weights``, the :func:`weights_digest` (``fresh=True`` recomputes it even for unchanged tensors)."""
    if fresh:
        live.forget(lm.model)
    config = getattr(lm.model, "config", None)
    out = lm.model.get_output_embeddings()
    return {
        "name": lm.name,
        "family": lm.spec.family,
        "model_type": getattr(config, "model_type", ""),
        "layout": lm.spec.layout,
        "layers": lm.n_layers,
        "neurons": lm.n_neurons,
        "hidden": int(lm.value_slot(0, 0).shape[0]),
        "vocab": int(out.weight.shape[0]) if out is not None else 0,
        "weights": weights_digest(lm),
    }


def slot_sharers(lm: LanguageModel, keys) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """``keys`` ((layer, index) pairs) grouped by the value slot they write through: ``{lowest key: its keys}``,
    in order of first appearance. Without shared layers every key is a group of its own."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for layer, index in keys:
        groups.setdefault((lm.sharing(layer)[0], index), []).append((layer, index))
    return {min(members): sorted(members) for members in groups.values()}


def _one_vector_per_slot(lm: LanguageModel, slots: dict[tuple[int, int], torch.Tensor],
                         ) -> tuple[dict[tuple[int, int], torch.Tensor], list[list]]:
    """``slots`` with the neurons that share a value slot merged into the lowest one (their vectors must be equal,
    else EditError), and ``[layer, index, [depths]]`` for each slot that several neurons named."""
    kept: dict[tuple[int, int], torch.Tensor] = {}
    merged: list[list] = []
    for first, members in slot_sharers(lm, list(slots)).items():
        vector = slots[first]
        wide = vector.detach().to("cpu", torch.float64)
        for other in members[1:]:
            if not torch.equal(slots[other].detach().to("cpu", torch.float64), wide):
                raise EditError(
                    f"L{first[0]}.N{first[1]} and L{other[0]}.N{other[1]} are one value slot ({lm.name} runs one "
                    f"block at depths {', '.join(map(str, lm.sharing(first[0])))}), and the edit gives them different "
                    "vectors; give one vector per slot.")
        kept[first] = vector
        if len(members) > 1:
            merged.append([first[0], first[1], [layer for layer, _ in members]])
    return kept, merged


def shared_notes(edit: Edit) -> list[str]:
    """What an edit of a model with shared layers changes beyond the neurons it names (empty otherwise)."""
    depths = edit.meta.get("shared_depths") or {}
    notes = []
    for layer, serves in depths.items():
        if len(serves) > 1:
            notes.append(f"shared layers: the slots of L{layer} serve depths {', '.join(map(str, serves))} (one "
                         "block runs at each), so this edit changes those neurons at every one of them")
    for layer, index, given in edit.meta.get("merged") or []:
        notes.append(f"L{layer}.N{index} is also {', '.join(f'L{d}.N{index}' for d in given if d != layer)}: one "
                     "slot, written once")
    return notes

@dataclass
class Edit:
    """A change of FFN value slots, made for one model (see the module docstring).

    Attributes:
        op: "add" (``values`` are deltas) or "set" (``values`` are the new slot values).
        groups: the touched slots, one :class:`SlotGroup` per layer, layers ascending, all of one layout.
        model: the :func:`fingerprint` of the model the edit was made for.
        kind: what made it ("update", "erase", or anything of yours).
        label: a readable description (e.g. "France capital: Paris -> Rome").
        meta: JSON-able details (answers, token ids, lambdas, excluded neurons, ...).
    """

    op: EditOp
    groups: tuple[SlotGroup, ...]
    model: dict[str, Any]
    kind: str = "edit"
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in ("add", "set"):
            raise EditError(f"An edit's op is 'add' or 'set', not {self.op!r}.")
        if not isinstance(self.model, dict):
            raise EditError(f"An edit's model fingerprint is a mapping, not {type(self.model).__name__}.")
        for name, value in (("kind", self.kind), ("label", self.label)):
            if not isinstance(value, str):
                raise EditError(f"An edit's {name} is a string, not {value!r}.")
        if not isinstance(self.meta, dict):
            raise EditError(f"An edit's meta is a mapping, not {type(self.meta).__name__}.")
        if not isinstance(self.groups, (tuple, list)) or not all(isinstance(g, SlotGroup) for g in self.groups):
            raise EditError("An edit's groups are SlotGroups.")
        self.groups = tuple(sorted(self.groups, key=lambda g: g.layer))
        if not self.groups:
            raise EditError("The edit touches no value slot: there are no neurons to edit.")
        layers = [g.layer for g in self.groups]
        if len(set(layers)) != len(layers):
            raise EditError(f"The edit has several groups for one layer: {layers}.")
        named: dict[tuple[str, int], int] = {}
        for g in self.groups:  # with shared layers, the groups of several depths name one module
            for i in g.indices:
                if (g.module, i) in named:
                    raise EditError(f"L{named[g.module, i]}.N{i} and L{g.layer}.N{i} of the edit are one value slot "
                                    f"(column {i} of {g.module}, whose block runs at several depths): an edit names "
                                    "each slot once.")
                named[g.module, i] = g.layer
        if "layout" in self.model and self.model["layout"] not in LAYOUTS:
            raise EditError(f"The edit's model fingerprint has layout {self.model['layout']!r:.40}, not one of "
                            f"{LAYOUTS}.")
        if "hidden" in self.model and not is_int(self.model["hidden"]):
            raise EditError(f"The edit's model fingerprint has hidden size {self.model['hidden']!r:.40}, not an "
                            "integer.")
        layouts = {g.layout for g in self.groups} | ({self.model["layout"]} if "layout" in self.model else set())
        if len(layouts) != 1:
            raise EditError(f"The edit mixes value-slot layouts ({', '.join(sorted(map(str, layouts)))}); one "
                            "model has one layout.")
        widths = {int(g.values.shape[1]) for g in self.groups}
        if len(widths) != 1 or ("hidden" in self.model and self.model["hidden"] not in widths):
            raise EditError(f"The edit's vectors have {sorted(widths)} entries, its model's value slots "
                            f"{self.model.get('hidden')!r}.")

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, lm: LanguageModel, op: EditOp, slots: dict[tuple[int, int], torch.Tensor], *,
              kind: str = "edit", label: str = "", meta: dict[str, Any] | None = None) -> Edit:
        """An edit of ``lm`` from ``{(layer, neuron): vector}`` (deltas for op "add", new values for "set")."""
        if not slots:
            raise EditError("There are no neurons to edit (the neuron list is empty, or every neuron was left out).")
        by_layer: dict[int, list[tuple[int, torch.Tensor]]] = {}
        hidden = int(lm.value_slot(0, 0).shape[0])
        for (layer, index), vector in slots.items():
            lm.check_neuron(int(layer), int(index))
            if not isinstance(vector, torch.Tensor) or vector.shape != (hidden,):
                raise EditError(f"The vector for L{layer}.N{index} has shape {tuple(getattr(vector, 'shape', ()))}; "
                                f"{lm.name}'s value slots have {hidden} entries.")
            finite_or_error(vector, f"The vector for L{layer}.N{index}")
        meta = dict(meta or {})
        slots = {(int(layer), int(index)): vector for (layer, index), vector in slots.items()}
        if lm.shared_layers:
            slots, merged = _one_vector_per_slot(lm, slots)
            meta["shared_depths"] = {str(layer): list(lm.sharing(layer)) for layer in sorted({k[0] for k in slots})}
            if merged:
                meta["merged"] = merged
        for (layer, index), vector in slots.items():
            by_layer.setdefault(int(layer), []).append((int(index), vector))
        groups = []
        for layer, items in sorted(by_layer.items()):
            items.sort(key=lambda item: item[0])
            values = torch.stack([v.detach().to("cpu") for _, v in items])
            groups.append(SlotGroup(layer, module_path(lm, layer), lm.spec.layout, tuple(i for i, _ in items), values))
        return cls(op, tuple(groups), fingerprint(lm), kind=kind, label=label, meta=meta)

    # ------------------------------------------------------------------------------------------ reading

    @property
    def neurons(self) -> list[tuple[int, int]]:
        """``(layer, neuron)`` of every touched slot, layers ascending."""
        return [(g.layer, i) for g in self.groups for i in g.indices]

    @property
    def layers(self) -> list[int]:
        return [g.layer for g in self.groups]

    def values(self) -> dict[tuple[int, int], torch.Tensor]:
        """``{(layer, neuron): delta or new value}``."""
        return {(g.layer, i): g.values[row] for g in self.groups for row, i in enumerate(g.indices)}

    def __len__(self) -> int:
        return sum(len(g.indices) for g in self.groups)

    def __str__(self) -> str:
        what = f"{self.kind} {self.label}".strip()
        layers = ",".join(f"L{layer}" for layer in self.layers)
        return f"Edit({what}; {len(self)} slot{'s' if len(self) != 1 else ''} in {layers})"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        """Jupyter's display: what the edit changes (:mod:`kneuron.interventions.edit_display`)."""
        from kneuron.interventions.edit_display import edit_html

        return edit_html(kind=self.kind, label=self.label, op=self.op, model=self.model, groups=self.groups,
                         meta=self.meta, notes=shared_notes(self))

    def describe(self) -> str:
        """Several lines: what, for which model, and each touched slot with its vector's norm."""
        lines = [str(self), f"  model: {self.model.get('name')} ({self.model.get('family')}, "
                            f"{self.model.get('layers')} layers x {self.model.get('neurons')} neurons)",
                 f"  op: {self.op} ({'delta added to' if self.op == 'add' else 'new value of'} each slot)"]
        for g in self.groups:
            norms = ", ".join(f"N{i} |v|={float(g.values[r].float().norm()):.3g}" for r, i in enumerate(g.indices))
            lines.append(f"  L{g.layer} {g.module} ({g.layout}): {norms}")
        lines.extend(f"  {note}" for note in shared_notes(self))
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ applying

    def check(self, lm: LanguageModel) -> None:
        """Raise EditError unless ``lm`` is the model this edit was made for (same name, shapes and weights)."""
        mine, theirs = self.model, fingerprint(lm)
        wrong = [key for key in mine if mine.get(key) != theirs.get(key)]
        if wrong == ["weights"]:
            raise EditError(
                f"This edit was made for other weights of {mine.get('name')!r} (the weight digest differs: "
                "another checkpoint of the same shapes, or the model changed since). Make the edit again on this "
                "model (or pass check=False if you know the weights match)."
            )
        if wrong:
            details = "; ".join(f"{key} {mine.get(key)!r} != {theirs.get(key)!r}" for key in wrong if key != "weights")
            raise EditError(
                f"This edit was made for {mine.get('name')!r}, not for {lm.name!r} ({details}). "
                "Make the edit again on this model (or pass check=False if you know the models match)."
            )
        for g in self.groups:
            if module_path(lm, g.layer) != g.module:
                raise EditError(f"Layer {g.layer}'s FFN output projection is {module_path(lm, g.layer)!r} in "
                                f"{lm.name}, but the edit was made for {g.module!r}.")

    def fits(self, lm: LanguageModel) -> None:
        """Raise EditError unless the edit can be written into ``lm`` at all (also with ``check=False``): its
        layout is the model's, its neurons exist and its vectors have the value slots' length."""
        hidden = int(lm.value_slot(0, 0).shape[0])
        for g in self.groups:
            if g.layout != lm.spec.layout:
                raise EditError(f"L{g.layer} of the edit has layout {g.layout!r}, but {lm.name} ({lm.spec.family}) "
                                f"stores value slots as {lm.spec.layout!r} (a "
                                f"{'column' if lm.spec.layout == 'linear' else 'row'} per neuron); the edit was "
                                "made for another model or was altered.")
            for i in g.indices:
                lm.check_neuron(g.layer, i)
            if g.values.shape[1] != hidden:
                raise EditError(f"L{g.layer}: the edit's vectors have {g.values.shape[1]} entries, the model's value "
                                f"slots {hidden}.")

    def apply(self, lm: LanguageModel, *, check: bool = True) -> AppliedEdit:
        """Change ``lm``'s weights in place; returns the handle whose ``undo()`` restores them bit-exactly.

        Everything is checked before the first write: a refused edit leaves the model untouched.
        """
        if check:
            self.check(lm)
        self.fits(lm)
        weights, originals, news = [], [], []
        with torch.no_grad():
            for g in self.groups:
                weight = lm.ffn_out(g.layer).weight
                current = read_slots(weight, g.layout, slot_index(g, weight))
                values = g.values.to(weight.device)
                if self.op == "add":
                    work = torch.promote_types(weight.dtype, values.dtype)
                    new = (current.to(work) + values.to(work)).to(weight.dtype)
                else:
                    new = values.to(weight.dtype)
                overflow = ~torch.isfinite(new) & torch.isfinite(current)
                if bool(overflow.any()):
                    rows = {(g.layer, g.indices[int(r)]) for r in overflow.nonzero()[:, 0]}
                    raise EditError(f"Applying {self} would make value slots non-finite ({slot_names(rows)}: "
                                    f"{weight.dtype} overflows); use smaller lambdas or a wider dtype.")
                weights.append(weight)
                originals.append(current)
                news.append(new)
            done = 0
            try:
                for g, weight, new in zip(self.groups, weights, news, strict=True):
                    write_slots(weight, g.layout, slot_index(g, weight), new)
                    done += 1
            except BaseException:
                for g, weight, original in zip(self.groups[:done], weights, originals, strict=False):
                    write_slots(weight, g.layout, slot_index(g, weight), original)
                raise
        handle = AppliedEdit(self, lm, originals, news, weights, live.next_sequence())
        live.register(lm.model, handle)
        return handle

    @contextmanager
    def applied(self, lm: LanguageModel, *, check: bool = True) -> Iterator[LanguageModel]:
        """Apply the edit for the ``with`` body only; the weights are restored bit-exactly on exit, also when
        the body raises (later edits of the same slots applied in the body and still live are undone too)."""
        handle = self.apply(lm, check=check)
        try:
            yield lm
        finally:
            if not handle.undone:
                handle.undo(force=True)

    # ------------------------------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """The edit's metadata (everything but the vectors), JSON-able: the header of its file
        (:func:`kneuron.interventions.edit_format.metadata`)."""
        return edit_format.metadata(op=self.op, kind=self.kind, label=self.label, model=self.model,
                                    groups=self.groups, meta=self.meta, summary=str(self))

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the edit: a directory gets ``edit.safetensors`` (the vectors, with the metadata in its header)
        and ``edit.json`` (the same metadata, readable); a ``*.safetensors`` path gets that file and a ``.json``
        next to it. Returns the safetensors file.

        An existing edit there is replaced only with ``overwrite=True``; any other existing file never is.
        """
        return edit_format.write(self.to_dict(), self.groups, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """Read an edit written by :meth:`save` (its directory, its ``.safetensors`` file or its ``.json``).
        Anything malformed is an :class:`EditError`."""
        def build(parts: edit_format.EditParts) -> Edit:
            try:
                return cls(parts.op, parts.groups, parts.model, kind=parts.kind, label=parts.label, meta=parts.meta)
            except EditError as exc:
                raise EditError(f"{parts.where}: {exc}") from None

        return edit_format.read(path, build)

    def save_model(self, lm: LanguageModel, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the *edited* model (``save_pretrained``) and its tokenizer to ``directory``, with the edit itself
        in ``directory/kneuron_edit/``; ``lm`` is left unedited afterwards.

        ``directory`` must be new or empty, or an edited model kneuron wrote earlier with ``overwrite=True``
        (which replaces the model files kneuron writes and keeps the others); any other non-empty folder, the
        folder ``lm`` was loaded from (or holding its GGUF file), an embedded model's package and kneuron's model
        cache are refused even then (:func:`kneuron.interventions.edit_files.model_target`). Everything is
        checked before anything is written.
        """
        directory = edit_files.model_target(lm, directory, overwrite=overwrite)
        self.check(lm)
        self.fits(lm)
        edit_format.edit_target(directory / edit_format.EDIT_FOLDER, overwrite=overwrite)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with self.applied(lm):
                lm.model.save_pretrained(str(directory))
            if hasattr(lm.tokenizer, "save_pretrained"):
                lm.tokenizer.save_pretrained(str(directory))
        except OSError as exc:
            raise EditError(f"Could not write the edited model to {directory}: {exc}") from exc
        self.save(directory / edit_format.EDIT_FOLDER, overwrite=overwrite)
        return directory

    save_pretrained = save_model


@dataclass(eq=False)
class AppliedEdit:
    """The undo handle :meth:`Edit.apply` returns: it holds copies of the original slot values.

    ``undo()`` writes them back (bit-exact). It refuses while a later edit of some of the same slots is still
    applied (undo that one first), and when the slots' bits changed after the edit was applied (by something
    else than kneuron). ``undo(force=True)`` first undoes the later live edits of the same slots, latest first,
    then writes the originals back whatever the slots hold. Also a context manager: ``with edit.apply(lm): ...``
    undoes on exit (forced).
    """

    edit: Edit
    lm: LanguageModel
    originals: list[torch.Tensor] = field(repr=False)
    written: list[torch.Tensor] = field(repr=False)
    weights: list[torch.Tensor] = field(repr=False)
    sequence: int = 0
    undone: bool = False

    @property
    def slots(self) -> set[tuple[int, int]]:
        """``(id of the weight tensor, neuron)`` of every slot written."""
        return {(id(w), i) for g, w in zip(self.edit.groups, self.weights, strict=True) for i in g.indices}

    def _later(self) -> list[AppliedEdit]:
        """Live edits applied after this one that touch its slots, or the slots of one of those (in order)."""
        chain, slots = [], self.slots
        for other in live.live(self.lm.model):
            if other.sequence > self.sequence and other.slots & slots:
                chain.append(other)
                slots = slots | other.slots
        return chain

    def undo(self, *, force: bool = False) -> None:
        if self.undone:
            raise EditError(f"{self.edit} was already undone.")
        later = self._later()
        if later and not force:
            shared = set(later[0].edit.neurons) & set(self.edit.neurons)
            raise EditError(
                f"{later[0].edit} was applied after {self.edit} to the same neurons ({slot_names(shared)}) and is "
                "still applied: undo it first (or call undo(force=True) to undo both)."
            )
        if not force:
            with torch.no_grad():
                for g, weight, expected in zip(self.edit.groups, self.weights, self.written, strict=True):
                    if not same_bits(read_slots(weight, g.layout, slot_index(g, weight)), expected):
                        raise EditError(
                            f"The slots of {self.edit} changed after it was applied (by something else than a "
                            "kneuron edit). Call undo(force=True) to write the original values back anyway."
                        )
        for other in reversed(later):
            other._restore()
        self._restore()

    def _restore(self) -> None:
        with torch.no_grad():
            for g, weight, original in zip(self.edit.groups, self.weights, self.originals, strict=True):
                write_slots(weight, g.layout, slot_index(g, weight), original)
        self.undone = True
        live.unregister(self.lm.model, self)

    def __enter__(self) -> LanguageModel:
        return self.lm

    def __exit__(self, *exc) -> None:
        if not self.undone:
            self.undo(force=True)

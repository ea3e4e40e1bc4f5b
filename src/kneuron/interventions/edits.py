"""An edit of FFN value slots as plain data: print it, apply it, undo it exactly, save it, load it back.

A knowledge neuron's *value slot* is what it writes into the residual stream: column ``i`` of an
``nn.Linear`` output projection's weight, or row ``i`` of GPT-2's ``Conv1D`` weight. An :class:`Edit`
names the slots it touches (per layer: the module's dotted path, its layout and the neuron indices)
and holds one vector per slot: a delta to add (``op="add"``, what :func:`~kneuron.interventions.update_fact`
makes) or the new value (``op="set"``, what :func:`~kneuron.interventions.erase_relation` makes).

Applying an edit first copies the original slot values; undoing writes those copies back, so undo is
bit-exact (nothing is subtracted). An edit remembers the model it was made for (a fingerprint: name,
family and shapes) and refuses any other.

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

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kneuron.errors import KneuronError
from kneuron.models.language_model import LanguageModel

EditOp = Literal["add", "set"]
FORMAT = "kneuron-edit/1"
TENSORS_FILE, JSON_FILE = "edit.safetensors", "edit.json"


class EditError(KneuronError):
    """An edit that cannot be made, applied, undone, saved or loaded."""


def fingerprint(lm: LanguageModel) -> dict[str, Any]:
    """What an edit checks before it touches a model: its name, family and the shapes the edit relies on."""
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
    }


def module_path(lm: LanguageModel, layer: int) -> str:
    """Dotted path, from the model's root, of ``layer``'s FFN output projection."""
    target = lm.ffn_out(layer)
    for name, module in lm.model.named_modules():
        if module is target:
            return name
    raise EditError(f"The FFN output projection of layer {layer} is not a submodule of {lm.name}.")  # pragma: no cover


@dataclass(frozen=True)
class SlotGroup:
    """The value slots an edit touches in one layer.

    Attributes:
        layer: the layer.
        module: dotted path of its FFN output projection (e.g. ``model.layers.21.mlp.down_proj``).
        layout: "linear" (slot = weight column) or "conv1d" (slot = weight row).
        indices: the neurons whose slots change, in order.
        values: (len(indices), hidden) tensor: one delta (op "add") or new value (op "set") per slot.
    """

    layer: int
    module: str
    layout: str
    indices: tuple[int, ...]
    values: torch.Tensor

    def __post_init__(self) -> None:
        if not self.indices:
            raise EditError(f"Layer {self.layer} of the edit lists no neuron.")
        if len(set(self.indices)) != len(self.indices):
            raise EditError(f"Layer {self.layer} of the edit lists a neuron twice: {self.indices}.")
        if self.values.dim() != 2 or self.values.shape[0] != len(self.indices):
            raise EditError(f"Layer {self.layer}: values of shape {tuple(self.values.shape)} do not give one "
                            f"vector per neuron ({len(self.indices)}).")


def read_slots(weight: torch.Tensor, layout: str, indices: torch.Tensor) -> torch.Tensor:
    """A copy of the slots ``indices`` of ``weight``, as rows: (len(indices), hidden)."""
    return weight[:, indices].T.clone() if layout == "linear" else weight[indices, :].clone()


def write_slots(weight: torch.Tensor, layout: str, indices: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` (rows, one per index) into the slots ``indices`` of ``weight``, in place."""
    if layout == "linear":
        weight[:, indices] = values.T.to(weight.dtype)
    else:
        weight[indices, :] = values.to(weight.dtype)


@dataclass
class Edit:
    """A change of FFN value slots, made for one model (see the module docstring).

    Attributes:
        op: "add" (``values`` are deltas) or "set" (``values`` are the new slot values).
        groups: the touched slots, one :class:`SlotGroup` per layer, layers ascending.
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
        self.groups = tuple(sorted(self.groups, key=lambda g: g.layer))
        if not self.groups:
            raise EditError("The edit touches no value slot: there are no neurons to edit.")
        layers = [g.layer for g in self.groups]
        if len(set(layers)) != len(layers):
            raise EditError(f"The edit has several groups for one layer: {layers}.")

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, lm: LanguageModel, op: EditOp, slots: dict[tuple[int, int], torch.Tensor], *,
              kind: str = "edit", label: str = "", meta: dict[str, Any] | None = None) -> Edit:
        """An edit of ``lm`` from ``{(layer, neuron): vector}`` (deltas for op "add", new values for "set")."""
        if not slots:
            raise EditError("There are no neurons to edit (the neuron list is empty, or every neuron was left out).")
        by_layer: dict[int, list[tuple[int, torch.Tensor]]] = {}
        hidden = fingerprint(lm)["hidden"]
        for (layer, index), vector in slots.items():
            lm.check_neuron(int(layer), int(index))
            if vector.shape != (hidden,):
                raise EditError(f"The vector for L{layer}.N{index} has shape {tuple(vector.shape)}; "
                                f"{lm.name}'s value slots have {hidden} entries.")
            by_layer.setdefault(int(layer), []).append((int(index), vector))
        groups = []
        for layer, items in sorted(by_layer.items()):
            items.sort(key=lambda item: item[0])
            values = torch.stack([v.detach().to("cpu") for _, v in items])
            groups.append(SlotGroup(layer, module_path(lm, layer), lm.spec.layout, tuple(i for i, _ in items), values))
        return cls(op, tuple(groups), fingerprint(lm), kind=kind, label=label, meta=dict(meta or {}))

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

    def describe(self) -> str:
        """Several lines: what, for which model, and each touched slot with its vector's norm."""
        lines = [str(self), f"  model: {self.model.get('name')} ({self.model.get('family')}, "
                            f"{self.model.get('layers')} layers x {self.model.get('neurons')} neurons)",
                 f"  op: {self.op} ({'delta added to' if self.op == 'add' else 'new value of'} each slot)"]
        for g in self.groups:
            norms = ", ".join(f"N{i} |v|={float(g.values[r].float().norm()):.3g}" for r, i in enumerate(g.indices))
            lines.append(f"  L{g.layer} {g.module} ({g.layout}): {norms}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ applying

    def check(self, lm: LanguageModel) -> None:
        """Raise EditError unless ``lm`` is the model this edit was made for (same name and shapes)."""
        mine, theirs = self.model, fingerprint(lm)
        wrong = [f"{key} {mine.get(key)!r} != {theirs.get(key)!r}" for key in mine if mine.get(key) != theirs.get(key)]
        if wrong:
            raise EditError(
                f"This edit was made for {mine.get('name')!r}, not for {lm.name!r} ({'; '.join(wrong)}). "
                "Make the edit again on this model (or pass check=False if you know the models match)."
            )
        for g in self.groups:
            if module_path(lm, g.layer) != g.module:
                raise EditError(f"Layer {g.layer}'s FFN output projection is {module_path(lm, g.layer)!r} in "
                                f"{lm.name}, but the edit was made for {g.module!r}.")

    def apply(self, lm: LanguageModel, *, check: bool = True) -> AppliedEdit:
        """Change ``lm``'s weights in place; returns the handle whose ``undo()`` restores them bit-exactly."""
        if check:
            self.check(lm)
        originals: list[torch.Tensor] = []
        written: list[torch.Tensor] = []
        with torch.no_grad():
            try:
                for g in self.groups:
                    weight = lm.ffn_out(g.layer).weight
                    index = torch.tensor(g.indices, dtype=torch.long, device=weight.device)
                    for i in g.indices:
                        lm.check_neuron(g.layer, i)
                    current = read_slots(weight, g.layout, index)
                    if current.shape[1] != g.values.shape[1]:
                        raise EditError(f"L{g.layer}: the edit's vectors have {g.values.shape[1]} entries, the "
                                        f"model's value slots {current.shape[1]}.")
                    values = g.values.to(weight.device)
                    if self.op == "add":
                        work = torch.promote_types(weight.dtype, values.dtype)
                        new = (current.to(work) + values.to(work)).to(weight.dtype)
                    else:
                        new = values.to(weight.dtype)
                    originals.append(current)
                    write_slots(weight, g.layout, index, new)
                    written.append(new)
            except BaseException:
                _restore(lm, self.groups[: len(originals)], originals)
                raise
        return AppliedEdit(self, lm, originals, written)

    @contextmanager
    def applied(self, lm: LanguageModel, *, check: bool = True) -> Iterator[LanguageModel]:
        """Apply the edit for the ``with`` body only; the weights are restored bit-exactly on exit, also when
        the body raises."""
        handle = self.apply(lm, check=check)
        try:
            yield lm
        finally:
            handle.undo(force=True)

    # ------------------------------------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        """The edit's metadata (everything but the vectors), JSON-able."""
        return {
            "format": FORMAT, "op": self.op, "kind": self.kind, "label": self.label, "model": self.model,
            "groups": [{"layer": g.layer, "module": g.module, "layout": g.layout, "indices": list(g.indices),
                        "tensor": f"L{g.layer}", "dtype": str(g.values.dtype).removeprefix("torch.")}
                       for g in self.groups],
            "meta": self.meta, "summary": str(self),
        }

    def save(self, path: str | Path) -> Path:
        """Write the edit: a directory gets ``edit.safetensors`` (the vectors, with the metadata in its header)
        and ``edit.json`` (the same metadata, readable); a ``*.safetensors`` path gets that file and a ``.json``
        next to it. Returns the safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix == ".safetensors":
            file, json_file = path, path.with_suffix(".json")
            file.parent.mkdir(parents=True, exist_ok=True)
        else:
            path.mkdir(parents=True, exist_ok=True)
            file, json_file = path / TENSORS_FILE, path / JSON_FILE
        meta = self.to_dict()
        tensors = {f"L{g.layer}": g.values.detach().to("cpu").contiguous() for g in self.groups}
        save_file(tensors, str(file), metadata={"kneuron_edit": json.dumps(meta)})
        json_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return file

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """Read an edit written by :meth:`save` (its directory or its ``.safetensors`` file)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        file = path / TENSORS_FILE if path.is_dir() else path
        if not file.is_file():
            raise EditError(f"No saved edit at {path} (expected a directory with {TENSORS_FILE}, or that file).")
        try:
            with safe_open(str(file), framework="pt") as f:
                header = f.metadata() or {}
                if "kneuron_edit" not in header:
                    raise EditError(f"{file} is a safetensors file but not a kneuron edit (no 'kneuron_edit' "
                                    "metadata).")
                meta = json.loads(header["kneuron_edit"])
                if meta.get("format") != FORMAT:
                    raise EditError(f"{file} holds an edit of format {meta.get('format')!r}; this kneuron reads "
                                    f"{FORMAT!r}.")
                groups = tuple(SlotGroup(int(g["layer"]), g["module"], g["layout"], tuple(int(i) for i in g["indices"]),
                                         f.get_tensor(g["tensor"])) for g in meta["groups"])
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise EditError(f"Could not read the edit in {file}: {exc}") from exc
        return cls(meta["op"], groups, meta["model"], kind=meta.get("kind", "edit"), label=meta.get("label", ""),
                   meta=meta.get("meta", {}))

    def save_model(self, lm: LanguageModel, directory: str | Path) -> Path:
        """Write the *edited* model (``save_pretrained``) and its tokenizer to ``directory``, with the edit itself
        in ``directory/kneuron_edit/``; ``lm`` is left unedited afterwards."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self.applied(lm):
            lm.model.save_pretrained(str(directory))
        if hasattr(lm.tokenizer, "save_pretrained"):
            lm.tokenizer.save_pretrained(str(directory))
        self.save(directory / "kneuron_edit")
        return directory

    save_pretrained = save_model


def _restore(lm: LanguageModel, groups: tuple[SlotGroup, ...], originals: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for g, original in zip(groups, originals, strict=True):
            weight = lm.ffn_out(g.layer).weight
            write_slots(weight, g.layout, torch.tensor(g.indices, dtype=torch.long, device=weight.device), original)


@dataclass
class AppliedEdit:
    """The undo handle :meth:`Edit.apply` returns: it holds copies of the original slot values.

    ``undo()`` writes them back (bit-exact). It refuses when the slots changed after the edit was applied
    (another edit of the same slots applied later and not undone yet: undo that one first), unless
    ``force=True``. Also a context manager: ``with edit.apply(lm): ...`` undoes on exit.
    """

    edit: Edit
    lm: LanguageModel
    originals: list[torch.Tensor] = field(repr=False)
    written: list[torch.Tensor] = field(repr=False)
    undone: bool = False

    def undo(self, *, force: bool = False) -> None:
        if self.undone:
            raise EditError(f"{self.edit} was already undone.")
        if not force:
            with torch.no_grad():
                for g, expected in zip(self.edit.groups, self.written, strict=True):
                    weight = self.lm.ffn_out(g.layer).weight
                    now = read_slots(weight, g.layout, torch.tensor(g.indices, dtype=torch.long, device=weight.device))
                    if not torch.equal(now, expected):
                        raise EditError(
                            f"The slots of {self.edit} changed after it was applied (a later edit of the same "
                            "neurons?). Undo the later edits first, or call undo(force=True) to write the "
                            "original values back anyway."
                        )
        _restore(self.lm, self.edit.groups, self.originals)
        self.undone = True

    def __enter__(self) -> LanguageModel:
        return self.lm

    def __exit__(self, *exc) -> None:
        if not self.undone:
            self.undo(force=True)

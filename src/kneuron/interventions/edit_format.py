"""The edit file format, ``kneuron-edit/2``: how an :class:`~kneuron.interventions.edits.Edit` is written to disk
and read back. :mod:`.edits` owns this module (``Edit.save``, ``Edit.load``, ``Edit.to_dict``); it knows slot
groups (:class:`~.slots.SlotGroup`) and plain metadata, not ``Edit`` itself, so nothing here imports upward.

An edit is one safetensors file with one tensor per layer (``L{layer}``: the group's vectors, one row per slot)
and the metadata, JSON text under the header key ``kneuron_edit``::

    {"format": "kneuron-edit/2", "op": "add", "kind": "update", "label": "France capital: Paris -> Rome",
     "model": {"name": ..., "family": ..., "model_type": ..., "layout": "linear", "layers": ..., "neurons": ...,
               "hidden": ..., "vocab": ..., "weights": "<SHA-256, kneuron.models.identity.edit_weights_digest>"},
     "groups": [{"layer": 21, "module": "model.layers.21.mlp.down_proj", "layout": "linear",
                 "indices": [1234, 77], "tensor": "L21", "dtype": "float32"}],
     "meta": {...}, "summary": "Edit(update ...; 2 slots in L21)"}

The same metadata, indented, is written beside it as JSON for people to read (:func:`read` reads the header only).
Where (:func:`edit_target`): a folder gets ``edit.safetensors`` and ``edit.json``; a ``*.safetensors`` path gets
that file and a ``.json`` next to it. An existing edit there is replaced only with ``overwrite=True``; an existing
file that is not a kneuron edit (model weights, your notes) never is.

Reading (:func:`read`) validates every field, so a malformed or altered file is an :class:`EditError`: missing or
mistyped fields, a layout that is not the model family's, tensors that are missing, of another dtype or shape,
or not finite. ``kneuron-edit/1`` (before the weight digest) is refused with a hint to make the edit again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kneuron.errors import EditError, KneuronError
from kneuron.interventions.slots import LAYOUTS, SlotGroup

FORMAT = "kneuron-edit/2"
TENSORS_FILE, JSON_FILE = "edit.safetensors", "edit.json"
#: the safetensors header key that holds the metadata
HEADER_KEY = "kneuron_edit"
#: the folder, inside an edited model's folder, that holds the edit (``Edit.save_model``)
EDIT_FOLDER = "kneuron_edit"


@dataclass(frozen=True)
class EditParts:
    """What an edit file holds, validated field by field (``Edit.load`` makes the :class:`Edit` of it).

    Attributes:
        op, groups, model, kind, label, meta: the Edit's fields.
        where: the file, for error messages.
    """

    op: str
    groups: tuple[SlotGroup, ...]
    model: dict[str, Any]
    kind: str
    label: str
    meta: dict[str, Any]
    where: str


# ---------------------------------------------------------------------------------------------------- targets


def _is_saved_edit(file: Path) -> bool:
    """Whether ``file`` is a file an earlier :func:`write` wrote (so that ``overwrite`` may replace it)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                return HEADER_KEY in (f.metadata() or {})
        meta = json.loads(file.read_text(encoding="utf-8"))
        return isinstance(meta, dict) and str(meta.get("format", "")).startswith("kneuron-edit/")
    except Exception:  # noqa: BLE001 - any unreadable file is simply not one of ours
        return False


def edit_target(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """The (safetensors, json) files :func:`write` would write for ``path``; EditError when it may not."""
    from kneuron.models.loading import protected_folder_of

    path = Path(path).expanduser()
    if protected := protected_folder_of(path):
        root, what = protected
        raise EditError(f"{path} is inside {what} ({root}); kneuron never writes an edit there (--overwrite "
                        "does not apply). Give a path elsewhere.")
    if path.suffix == ".safetensors":
        files = (path, path.with_suffix(".json"))
    else:
        if path.exists() and not path.is_dir():
            raise EditError(f"{path} is a file, not a folder: give a new folder (or a .safetensors path) to save "
                            "the edit to.")
        files = (path / TENSORS_FILE, path / JSON_FILE)
    for file in files:
        if file.is_dir():
            raise EditError(f"{file} is a folder; give another path to save the edit to.")
        if file.exists():
            if not _is_saved_edit(file):
                raise EditError(f"{file} exists and is not a kneuron edit; kneuron never replaces it (even with "
                                "--overwrite). Give another path.")
            if not overwrite:
                raise EditError(f"{file} holds an edit already; give another path, or pass overwrite=True "
                                "(--overwrite) to replace it.")
    return files


def edit_file(path: str | Path) -> Path:
    """The safetensors file of the edit at ``path`` (its folder, the file, or the ``.json`` next to it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path / TENSORS_FILE
    if path.suffix == ".json":
        return path.with_name(TENSORS_FILE) if path.name == JSON_FILE else path.with_suffix(".safetensors")
    return path


# ---------------------------------------------------------------------------------------------------- writing


def tensor_name(group: SlotGroup) -> str:
    """The name of ``group``'s tensor in the file: ``L{layer}``."""
    return f"L{group.layer}"


def metadata(*, op: str, kind: str, label: str, model: Mapping[str, Any], groups: Sequence[SlotGroup],
             meta: Mapping[str, Any], summary: str) -> dict[str, Any]:
    """The metadata of an edit (everything but the vectors), JSON-able, in the file's key order."""
    return {
        "format": FORMAT, "op": op, "kind": kind, "label": label, "model": model,
        "groups": [{"layer": g.layer, "module": g.module, "layout": g.layout, "indices": list(g.indices),
                    "tensor": tensor_name(g), "dtype": str(g.values.dtype).removeprefix("torch.")}
                   for g in groups],
        "meta": meta, "summary": summary,
    }


def write(meta: Mapping[str, Any], groups: Sequence[SlotGroup], path: str | Path, *, overwrite: bool = False,
          ) -> Path:
    """Write an edit's ``meta`` (:func:`metadata`) and its groups' vectors to ``path`` (see the module docstring);
    returns the safetensors file."""
    from safetensors.torch import save_file

    file, json_file = edit_target(path, overwrite=overwrite)
    tensors = {tensor_name(g): g.values.detach().to("cpu").contiguous() for g in groups}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(file), metadata={HEADER_KEY: json.dumps(meta)})
        json_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EditError(f"Could not write the edit to {path}: {exc}") from exc
    return file


# ---------------------------------------------------------------------------------------------------- reading


def _field(mapping: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in mapping:
        if default is not ...:
            return default
        raise EditError(f"{where} has no {key!r}.")
    value = mapping[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise EditError(f"{where}: {key!r} is {type(value).__name__} {value!r:.40}, not {names}.")
    return value


def _check_family_layout(model: dict, where: str) -> None:
    """The fingerprint's layout must be the one its model type's registered ArchSpec uses."""
    from kneuron.models.architectures import spec_for

    model_type = model.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return
    try:
        spec = spec_for(model_type)
    except KneuronError:  # a family this kneuron does not know (a user's spec): nothing to compare with
        return
    if model.get("layout") != spec.layout:
        raise EditError(f"{where}: the edit says its {model_type} model stores value slots as "
                        f"{model.get('layout')!r}, but {model_type} models use {spec.layout!r}; the file was altered.")


def parse(meta: object, tensors: Mapping[str, Callable[[], torch.Tensor]], where: str) -> EditParts:
    """The edit described by header metadata ``meta``, with ``tensors`` (name -> tensor getter)."""
    if not isinstance(meta, dict):
        raise EditError(f"{where}: the edit's metadata is a JSON {type(meta).__name__}, not an object.")
    fmt = meta.get("format")
    if fmt != FORMAT:
        hint = (" (an edit of an older kneuron, without a weight digest: make it again)"
                if fmt == "kneuron-edit/1" else "")
        raise EditError(f"{where} holds an edit of format {fmt!r}; this kneuron reads {FORMAT!r}{hint}.")
    op = _field(meta, "op", str, where)
    model = _field(meta, "model", dict, where)
    _field(model, "weights", str, f"{where}: the model fingerprint")
    _field(model, "layout", str, f"{where}: the model fingerprint")
    if model["layout"] not in LAYOUTS:
        raise EditError(f"{where}: the model fingerprint's layout is {model['layout']!r}, not one of {LAYOUTS}.")
    _check_family_layout(model, where)
    raw_groups = _field(meta, "groups", list, where)
    groups, used = [], set()
    for n, g in enumerate(raw_groups):
        at = f"{where}: group {n}"
        if not isinstance(g, dict):
            raise EditError(f"{at} is a JSON {type(g).__name__}, not an object.")
        layer = _field(g, "layer", int, at)
        indices = _field(g, "indices", list, at)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise EditError(f"{at}: 'indices' are integers, not {indices!r:.60}.")
        name = _field(g, "tensor", str, at)
        if name not in tensors or name in used:
            why = "lacks" if name not in tensors else "gives to another group too"
            raise EditError(f"{at} names tensor {name!r}, which the file {why}.")
        used.add(name)
        values = tensors[name]()
        dtype = _field(g, "dtype", str, at)
        if str(values.dtype).removeprefix("torch.") != dtype:
            raise EditError(f"{at}: tensor {name!r} is {values.dtype}, the metadata says {dtype!r}.")
        groups.append(SlotGroup(layer, _field(g, "module", str, at), _field(g, "layout", str, at), tuple(indices),
                                values))
    if set(tensors) - used:
        raise EditError(f"{where} holds tensors no group names: {sorted(set(tensors) - used)}.")
    return EditParts(op, tuple(groups), model, kind=_field(meta, "kind", str, where, "edit"),
                     label=_field(meta, "label", str, where, ""), meta=_field(meta, "meta", dict, where, {}),
                     where=where)


def read(path: str | Path, build: Callable[[EditParts], Any]) -> Any:
    """``build(parts)`` for the edit :func:`write` wrote at ``path`` (``Edit.load`` passes the Edit constructor, so
    the edit is made while the file is open); EditError for anything else."""
    from safetensors import SafetensorError, safe_open

    file = edit_file(path)
    if not file.is_file():
        raise EditError(f"No saved edit at {path} (expected a directory with {TENSORS_FILE}, or that file).")
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            if not isinstance(header, dict) or HEADER_KEY not in header:
                raise EditError(f"{file} is a safetensors file but not a kneuron edit (no 'kneuron_edit' "
                                "metadata).")
            text = header[HEADER_KEY]
            if not isinstance(text, str):
                raise EditError(f"{file}: the 'kneuron_edit' metadata is not text.")
            try:
                meta = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise EditError(f"{file}: the edit's metadata is not JSON ({str(exc)[:80]}).") from None
            getters = {name: (lambda name=name: f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118
            return build(parse(meta, getters, str(file)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EditError(f"Could not read the edit in {file}: {str(exc)[:200]}") from exc

"""Saving and loading edits, and writing an edited model, without touching what is not kneuron's to touch.

Where an edit is written (:func:`save_edit`): a folder gets ``edit.safetensors`` (the vectors, the metadata in
its header) and ``edit.json`` (the same metadata, for reading; :func:`load_edit` reads the header); a
``*.safetensors`` path gets that file and a ``.json`` next to it. An existing edit there is replaced only with
``overwrite=True``; an existing file that is not a kneuron edit (model weights, your notes) never is.

Where an edited model is written (:func:`save_model`): a new or empty folder. A non-empty one (another model,
an earlier output, your files) only with ``overwrite=True``, which replaces the files ``save_pretrained`` writes
and leaves the others. Never, even with ``overwrite``: the folder the model was loaded from (or that holds its
GGUF file; for a hub id, anything inside the Hugging Face cache) and kneuron's own model cache, whose copies
later ``kneuron.load()`` calls would silently read as the original model.

Loading (:func:`load_edit`) validates every field, so a malformed or altered file is an :class:`EditError`:
missing or mistyped fields, a layout that is not the model family's, tensors that are missing, of another dtype
or shape, or not finite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kneuron.errors import EditError, KneuronError
from kneuron.interventions.edits import LAYOUTS, Edit, SlotGroup
from kneuron.models.language_model import LanguageModel

FORMAT = "kneuron-edit/2"
TENSORS_FILE, JSON_FILE = "edit.safetensors", "edit.json"
EDIT_FOLDER = "kneuron_edit"


# --------------------------------------------------------------------------------------------------- targets

def _is_saved_edit(file: Path) -> bool:
    """Whether ``file`` is a file an earlier :func:`save_edit` wrote (so that ``overwrite`` may replace it)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                return "kneuron_edit" in (f.metadata() or {})
        meta = json.loads(file.read_text(encoding="utf-8"))
        return isinstance(meta, dict) and str(meta.get("format", "")).startswith("kneuron-edit/")
    except Exception:  # noqa: BLE001 - any unreadable file is simply not one of ours
        return False


def edit_target(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """The (safetensors, json) files :func:`save_edit` would write for ``path``; EditError when it may not."""
    path = Path(path).expanduser()
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


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def model_sources(lm: LanguageModel) -> list[Path]:
    """The folders ``lm``'s files were loaded from: its name and ``name_or_path`` when they are existing paths
    (a GGUF file's folder for a file)."""
    found = []
    for name in (lm.name, getattr(lm.model, "name_or_path", None),
                 getattr(getattr(lm.model, "config", None), "_name_or_path", None)):
        if not name or not isinstance(name, (str, os.PathLike)):
            continue
        path = Path(name).expanduser()
        if path.exists():
            found.append((path if path.is_dir() else path.parent).resolve())
    return list(dict.fromkeys(found))


def _protected() -> list[tuple[Path, str]]:
    from kneuron.models.loading import cache_root

    roots = [(cache_root().expanduser().resolve(), "kneuron's model cache")]
    try:
        from huggingface_hub import constants

        roots.append((Path(constants.HF_HUB_CACHE).expanduser().resolve(), "the Hugging Face cache"))
    except (ImportError, AttributeError):  # pragma: no cover - huggingface_hub comes with transformers
        pass
    return roots


def model_target(lm: LanguageModel, directory: str | Path, *, overwrite: bool = False) -> Path:
    """``directory`` when :func:`save_model` may write ``lm``'s edited copy there; EditError otherwise."""
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise EditError(f"{directory} is a file, not a folder: give a new folder to write the edited model to.")
    resolved = directory.resolve()
    for source in model_sources(lm):
        if resolved == source:
            raise EditError(f"{directory} is the folder {lm.name!r} was loaded from; writing the edited model there "
                            "would replace the original. Give a new folder (--overwrite does not apply here).")
    for root, what in _protected():
        if _within(resolved, root):
            raise EditError(f"{directory} is inside {what} ({root}), where later loads would read the edited model "
                            "as the original. Give a folder elsewhere (--overwrite does not apply here).")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise EditError(f"{directory} exists and is not empty (another model, or your files). Give a new folder, or "
                        "pass overwrite=True (--overwrite) to replace the model files in it.")
    return directory


# ----------------------------------------------------------------------------------------------------- saving

def save_edit(edit: Edit, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``edit`` to ``path`` (see the module docstring); returns the safetensors file."""
    from safetensors.torch import save_file

    file, json_file = edit_target(path, overwrite=overwrite)
    meta = edit.to_dict()
    tensors = {f"L{g.layer}": g.values.detach().to("cpu").contiguous() for g in edit.groups}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(file), metadata={"kneuron_edit": json.dumps(meta)})
        json_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EditError(f"Could not write the edit to {path}: {exc}") from exc
    return file


def save_model(edit: Edit, lm: LanguageModel, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write the edited ``lm`` (``save_pretrained``), its tokenizer and ``edit`` (in ``kneuron_edit/``) to
    ``directory``; ``lm`` is left unedited. Everything is checked before anything is written."""
    directory = model_target(lm, directory, overwrite=overwrite)
    edit.check(lm)
    edit.fits(lm)
    edit_target(directory / EDIT_FOLDER, overwrite=overwrite)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with edit.applied(lm):
            lm.model.save_pretrained(str(directory))
        if hasattr(lm.tokenizer, "save_pretrained"):
            lm.tokenizer.save_pretrained(str(directory))
    except OSError as exc:
        raise EditError(f"Could not write the edited model to {directory}: {exc}") from exc
    save_edit(edit, directory / EDIT_FOLDER, overwrite=overwrite)
    return directory


# ---------------------------------------------------------------------------------------------------- loading

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


def parse(meta: object, tensors: dict, where: str) -> Edit:
    """The :class:`Edit` described by header metadata ``meta``, with ``tensors`` (name -> tensor getter)."""
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
    try:
        return Edit(op, tuple(groups), model, kind=_field(meta, "kind", str, where, "edit"),
                    label=_field(meta, "label", str, where, ""), meta=_field(meta, "meta", dict, where, {}))
    except EditError as exc:
        raise EditError(f"{where}: {exc}") from None


def edit_file(path: str | Path) -> Path:
    """The safetensors file of the edit at ``path`` (its folder, the file, or the ``.json`` next to it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path / TENSORS_FILE
    if path.suffix == ".json":
        return path.with_name(TENSORS_FILE) if path.name == JSON_FILE else path.with_suffix(".safetensors")
    return path


def load_edit(cls: type[Edit], path: str | Path) -> Edit:
    """Read the edit :func:`save_edit` wrote at ``path``; EditError for anything else."""
    from safetensors import SafetensorError, safe_open

    file = edit_file(path)
    if not file.is_file():
        raise EditError(f"No saved edit at {path} (expected a directory with {TENSORS_FILE}, or that file).")
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            if not isinstance(header, dict) or "kneuron_edit" not in header:
                raise EditError(f"{file} is a safetensors file but not a kneuron edit (no 'kneuron_edit' "
                                "metadata).")
            text = header["kneuron_edit"]
            if not isinstance(text, str):
                raise EditError(f"{file}: the 'kneuron_edit' metadata is not text.")
            try:
                meta = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise EditError(f"{file}: the edit's metadata is not JSON ({str(exc)[:80]}).") from None
            getters = {name: (lambda name=name: f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118
            edit = parse(meta, getters, str(file))
            if cls is not Edit:
                edit = cls(edit.op, edit.groups, edit.model, kind=edit.kind, label=edit.label, meta=edit.meta)
            return edit
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EditError(f"Could not read the edit in {file}: {str(exc)[:200]}") from exc

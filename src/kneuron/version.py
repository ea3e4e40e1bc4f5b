"""kneuron's version, from the installed package's metadata (pyproject.toml's ``version``, the one source).

It is its own module, beside :mod:`kneuron.errors`, so that every layer (the atlas records the version that wrote it)
can read it without importing the package's top-level API.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kneuron")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]

"""The atlas (one SQLite file per run), resumable runs over a set of facts, and exports to CSV / Parquet.

Example:
    >>> from kneuron.store import Atlas, export, run
    >>> run(kneuron.load(), load_facts("builtin"), "runs/demo.sqlite", limit_per_relation=3)
    >>> atlas = Atlas.open("runs/demo.sqlite", read_only=True)
    >>> atlas.relation_neurons("capital").most_common(5)
    >>> export(atlas, "demo.parquet")
"""

from kneuron.store.atlas import SCHEMA_VERSION, Atlas, model_identity
from kneuron.store.export import export
from kneuron.store.runs import RunSummary, run

__all__ = ["SCHEMA_VERSION", "Atlas", "RunSummary", "export", "model_identity", "run"]

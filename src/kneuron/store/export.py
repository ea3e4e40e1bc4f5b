"""Export an atlas's tables to CSV or Parquet (pandas / pyarrow: ``pip install 'kneuron[export]'``).

``export(atlas, "out.csv")`` writes the neurons table (joined with each fact's relation, subject and object)
to ``out.csv`` and the other tables beside it: ``out.facts.csv``, ``out.prompts.csv`` (without the score
BLOBs: read those with :meth:`Atlas.prompt_scores`), ``out.generic.csv`` and ``out.results.csv``, and
``out.vocabulary.csv`` when the atlas has that table (``kneuron study vocabulary``). A
``.parquet`` path gives the same files in Parquet. Each file is written to a temporary name and renamed, so an
interrupted export leaves no half-written file.

Example:
    >>> export(Atlas.open("runs/demo.sqlite", read_only=True), "demo.parquet")
    [PosixPath('demo.parquet'), PosixPath('demo.facts.parquet'), ...]
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kneuron.errors import InputError, KneuronError
from kneuron.store.atlas import Atlas

#: table name -> query; "neurons" goes to the path itself, the others to ``stem.NAME.suffix``
TABLES = {
    "neurons": (
        "SELECT n.fact_id, f.relation, f.subject, f.object, n.kind, n.prompt, n.rank, n.layer, n.neuron, "
        "'L' || n.layer || '.N' || n.neuron AS name, n.score FROM neurons n JOIN facts f ON f.id = n.fact_id "
        "ORDER BY f.seq, CASE n.kind WHEN 'refined' THEN 0 WHEN 'baseline' THEN 1 ELSE 2 END, n.prompt, n.rank"
    ),
    "facts": (
        "SELECT id, seq, relation, subject, object, templates, status, known, known_share, ranks, note, params, "
        "compute_seconds, write_seconds FROM facts ORDER BY seq"
    ),
    "prompts": (
        "SELECT p.fact_id, f.relation, p.idx, p.template, p.text, p.probability, p.rank, p.objective, p.position "
        "FROM prompts p JOIN facts f ON f.id = p.fact_id ORDER BY f.seq, p.idx"
    ),
    "generic": "SELECT layer, neuron, 'L' || layer || '.N' || neuron AS name, facts, share, flagged FROM generic "
               "ORDER BY facts DESC, layer, neuron",
    "results": "SELECT study, variant, relation, fact_id, metric, value FROM results ORDER BY rowid",
}
#: tables a study creates on its first write (:mod:`kneuron.store.vocabulary`, the aggregates): exported when the
#: atlas has them
OPTIONAL_TABLES = {
    "vocabulary": (
        "SELECT v.fact_id, f.relation, f.subject, f.object, v.idx, v.layer, v.neuron, "
        "'L' || v.layer || '.N' || v.neuron AS name, v.activation, v.sign, v.answer_id, v.answer_token, "
        "v.answer_rank, v.answer_suppressed_rank, v.answer_logit, v.promoted, v.suppressed "
        "FROM vocabulary v JOIN facts f ON f.id = v.fact_id ORDER BY f.seq, v.idx"
    ),
    "aggregates": (
        "SELECT study, variant, relation, metric, mean, lo, hi, n, method, control, control_mean, p "
        "FROM aggregates ORDER BY rowid"
    ),
}
FORMATS = (".csv", ".parquet")


def export_paths(path: str | Path, optional: tuple[str, ...] = ()) -> dict[str, Path]:
    """Where each table (and each of the ``optional`` ones) goes for ``path``."""
    path = Path(path).expanduser()
    if path.suffix not in FORMATS:
        raise InputError(f"Export to a .csv or .parquet path (got {str(path)!r}); e.g. --to runs/demo.parquet.")
    return {name: path if name == "neurons" else path.with_name(f"{path.stem}.{name}{path.suffix}")
            for name in (*TABLES, *optional)}


def export(atlas: Atlas | str | Path, path: str | Path) -> list[Path]:
    """Write the atlas's neurons, facts, prompts, generic and results tables as CSV or Parquet files.

    Returns:
        The files written, the neurons table (at ``path``) first.

    Raises:
        InputError: a path that is neither .csv nor .parquet, or a folder.
        KneuronError: pandas / pyarrow missing, or a file that cannot be written.
    """
    export_paths(path)  # a bad suffix is refused before anything is opened
    try:
        import pandas as pd
    except ImportError:
        raise KneuronError("Exporting needs pandas and pyarrow: pip install 'kneuron[export]'.") from None
    if Path(path).suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise KneuronError("Parquet export needs pyarrow: pip install 'kneuron[export]'.") from None
    owned = not isinstance(atlas, Atlas)
    source = Atlas.open(atlas, read_only=True) if owned else atlas
    try:
        with source.snapshot():  # every table of the same moment, also while a run writes
            present = {row["name"] for row in source.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
            paths = export_paths(path, tuple(name for name in OPTIONAL_TABLES if name in present))
            queries = {**TABLES, **OPTIONAL_TABLES}
            frames = {name: pd.DataFrame(source.query(queries[name]), columns=source.columns(queries[name]))
                      for name in paths}
    finally:
        if owned:
            source.close()
    return [_write(frames[name], target) for name, target in paths.items()]


def _write(frame, target: Path) -> Path:
    """Write one table to a temporary name beside ``target``, then rename it; a failure is one KneuronError."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if target.is_dir():
            raise InputError(f"{str(target)!r} is a folder: give a file path to export to, e.g. "
                             f"{target / 'atlas.csv'}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix == ".csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False, engine="pyarrow")
        os.replace(temporary, target)
    except OSError as exc:
        raise KneuronError(f"Cannot write {str(target)!r} ({exc.strerror or exc}); choose a writable --to path."
                           ) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return target

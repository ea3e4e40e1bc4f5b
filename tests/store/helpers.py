"""Tiny facts in the tiny vocabulary (see tests/tiny_models.py), a tiny model, and a row-for-row dump of an atlas.

Also imported by the script a SIGKILL test runs in a subprocess (``tests/`` on its path).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kneuron.facts import Fact

CAPITAL = ("The capital of [X] is [Y].", "[X]'s capital city is [Y].", "The capital city of [X] is [Y].")
LANGUAGE = ("The language spoken in [X] is [Y].", "In [X] they speak [Y].", "The official language of [X] is [Y].")
CONTINENT = ("[X] is located in [Y].", "[X] is part of [Y].", "The continent of [X] is [Y].")

#: columns that are timing, not results
TIMING = {"compute_seconds", "write_seconds"}


def tiny_facts() -> list[Fact]:
    """Ten facts of three relations; Denmark -> Copenhagen and Sweden -> Stockholm are two-token answers."""
    return (
        [Fact(s, "capital", o, CAPITAL) for s, o in
         [("France", "Paris"), ("Germany", "Berlin"), ("Denmark", "Copenhagen"), ("Italy", "Rome"),
          ("Sweden", "Stockholm")]]
        + [Fact(s, "language", o, LANGUAGE) for s, o in [("Italy", "Italian"), ("Spain", "Spanish"),
                                                          ("Japan", "Japanese")]]
        + [Fact(s, "continent", o, CONTINENT) for s, o in [("Egypt", "Africa"), ("China", "Asia")]]
    )


def tiny_model(family: str = "llama", **kwargs):
    from tiny_models import tiny_lm

    return tiny_lm(family, layers=kwargs.pop("layers", 3), neurons=kwargs.pop("neurons", 24), **kwargs)


#: the run arguments every resume test uses (chunks of 3 facts: 10 facts make chunks of 3, 3, 3 and 1; full score
#: matrices, which the tests compare with the library's)
RUN_ARGS = {"steps": 6, "known_only": False, "progress": False, "chunk_facts": 3, "keep_scores": "full"}


def dump(path: str | Path) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, without timing columns and the creation time: equal dumps mean equal results
    (BLOBs compared byte for byte)."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {}
        for table in tables:
            cursor = db.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            keep = [i for i, name in enumerate(names) if name not in TIMING]
            rows = [tuple(row[i] for i in keep) for row in cursor.fetchall()
                    if not (table == "meta" and row[0] == "created")]
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        db.close()


SUBJECTS = ("France", "Germany", "Italy", "Spain", "Japan", "China", "England", "Britain", "Russia", "Portugal",
            "Denmark", "Sweden", "Netherlands", "Australia", "Canada", "Egypt", "India", "Brazil", "Mexico")
OBJECTS = ("Paris", "Berlin", "Rome", "Madrid", "Tokyo", "Beijing", "London", "Moscow", "Ottawa", "Cairo", "Delhi")


def synthetic_facts(count: int) -> list[Fact]:
    """``count`` distinct facts in the tiny vocabulary (subjects and objects cycled over several relations), for
    runs larger than :func:`tiny_facts`; prompts of the same template and subject length share a shape."""
    bags = (CAPITAL, LANGUAGE, CONTINENT)
    facts = []
    for number in range(count):
        subject = SUBJECTS[number % len(SUBJECTS)]
        relation = f"r{number // len(SUBJECTS)}"
        facts.append(Fact(subject, relation, OBJECTS[number % len(OBJECTS)], bags[(number // 7) % 3]))
    return facts


def write_facts_file(path: str | Path, facts) -> Path:
    """``facts`` in our JSONL schema (relation declarations, then facts), for the CLI's ``--facts``."""
    import json

    lines, declared = [], set()
    for fact in facts:
        if fact.relation not in declared:
            declared.add(fact.relation)
            lines.append(json.dumps({"relation": fact.relation, "templates": list(fact.templates)}))
        lines.append(json.dumps({"subject": fact.subject, "relation": fact.relation, "object": fact.object}))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def copy_fact(source: str | Path, target: str | Path, fact_id: str, new_id: str | None = None) -> None:
    """Another writer: copy a done fact (its facts, prompts and neurons rows) from the atlas ``source`` into the
    atlas ``target`` in one transaction of a separate connection, as ``new_id`` (after the target's last seq)."""
    new_id = new_id or fact_id
    db = sqlite3.connect(Path(target).resolve().as_uri(), uri=True, timeout=10, isolation_level=None)
    try:
        db.execute("ATTACH DATABASE ? AS source", (f"{Path(source).resolve().as_uri()}?mode=ro",))
        db.execute("BEGIN IMMEDIATE")
        seq = db.execute("SELECT coalesce(max(seq), -1) + 1 FROM main.facts").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA main.table_info(facts)")]
        values = ", ".join("?" if c == "id" else ("? AS seq" if c == "seq" else c) for c in columns)
        db.execute(f"INSERT INTO main.facts SELECT {values} FROM source.facts WHERE id = ?", (new_id, seq, fact_id))
        for table in ("prompts", "neurons"):
            columns = [row[1] for row in db.execute(f"PRAGMA main.table_info({table})")]
            values = ", ".join("?" if c == "fact_id" else c for c in columns)
            db.execute(f"INSERT INTO main.{table} SELECT {values} FROM source.{table} WHERE fact_id = ?",
                       (new_id, fact_id))
        db.execute("COMMIT")
    finally:
        db.close()

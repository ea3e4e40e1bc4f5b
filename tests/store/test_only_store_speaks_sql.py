"""Only :mod:`kneuron.store` speaks SQL: every other module reads and writes an atlas through the store's API
(:class:`kneuron.store.Atlas` and :mod:`kneuron.store.queries`), so the schema can change in one layer.

The check reads the source (``ast``, nothing is imported): no string constant outside ``src/kneuron/store`` holds an
SQL statement, no module there imports ``sqlite3``, and none calls an atlas's raw-SQL methods (``query``,
``columns``, ``transaction``, the connection's ``execute``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import kneuron

PACKAGE = Path(kneuron.__file__).resolve().parent
STORE = PACKAGE / "store"
#: an SQL statement's start: a keyword followed by what makes it a statement (not an English word in capitals)
SQL = re.compile(r"\b(SELECT\s+(\*|DISTINCT\b|count\(|[\w.]+\s*(,|\bAS\b|\bFROM\b))|INSERT\s+(OR\s+\w+\s+)?INTO\b|"
                 r"UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|(UNIQUE\s+)?INDEX|VIEW|TRIGGER)\b|"
                 r"PRAGMA\s+\w+|DROP\s+(TABLE|INDEX)\b|ALTER\s+TABLE\b)", re.IGNORECASE)
#: what a module outside the store would call to run SQL of its own
RAW_SQL_CALLS = frozenset({"query", "columns", "transaction", "execute", "executemany", "executescript"})


def outside_store() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if STORE not in p.parents)


def sql_findings(path: Path) -> list[str]:
    """What in one module's source speaks SQL: ``line: reason`` each."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            match = SQL.search(node.value)
            if match:
                found.append(f"{node.lineno}: SQL in a string ({match.group(0)!r})")
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: imports sqlite3" for alias in node.names
                      if alias.name.split(".")[0] == "sqlite3"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
            found.append(f"{node.lineno}: imports from sqlite3")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RAW_SQL_CALLS:
            found.append(f"{node.lineno}: calls .{node.func.attr}()")
    return found


def test_the_scan_sees_sql():
    """The check itself: it finds what it should, and not English in capitals."""
    for text in ("SELECT * FROM facts", "select id, status from facts", "SELECT count(*) AS n FROM neurons",
                 "INSERT OR REPLACE INTO meta", "UPDATE facts SET status = 'done'", "DELETE FROM results",
                 "CREATE INDEX IF NOT EXISTS x ON y (z)", "PRAGMA application_id"):
        assert SQL.search(text), text
    for text in ("Select the facts to run", "DELETE the file first", "Create a new atlas", "update the table"):
        assert not SQL.search(text), text


@pytest.mark.parametrize("path", outside_store(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_sql_outside_the_store(path):
    findings = sql_findings(path)
    assert not findings, (f"{path.relative_to(PACKAGE)} speaks SQL; move it into kneuron.store (a method of Atlas "
                          "or a function of kneuron.store.queries):\n" + "\n".join(findings))


def test_the_store_is_where_the_sql_is():
    """A sanity check of the scan: the store's own modules do contain SQL (so an empty scan is no accident)."""
    assert sql_findings(STORE / "queries.py") and sql_findings(STORE / "connection.py")

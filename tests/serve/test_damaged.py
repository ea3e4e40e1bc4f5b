"""A damaged atlas that still opens (a value of the wrong kind in any column of any table, a BLOB of the wrong
length, an address no neuron has) never makes a page answer 500: it answers the one-line damaged-atlas message
with a 4xx status (issue 27 item 5). Fuzzed with hypothesis over the tables' columns and the addresses, with few
examples (each copies the tiny atlas and asks a dozen pages)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kneuron.serve.app import create_app

#: every table an atlas holds and its columns (the schema's, the vocabulary study's and the aggregates)
TABLES = {
    "facts": ("id", "seq", "relation", "subject", "object", "templates", "status", "known", "known_share", "ranks",
              "note", "params", "compute_seconds", "write_seconds"),
    "prompts": ("fact_id", "idx", "template", "text", "probability", "rank", "objective", "position", "dtype",
                "layers", "neurons", "scores", "activations", "baseline", "completeness_gap"),
    "neurons": ("fact_id", "kind", "prompt", "rank", "layer", "neuron", "score"),
    "generic": ("layer", "neuron", "facts", "share", "flagged"),
    "results": ("study", "variant", "relation", "fact_id", "metric", "value"),
    "aggregates": ("study", "variant", "relation", "metric", "mean", "lo", "hi", "n", "method", "control",
                   "control_mean", "p"),
    "vocabulary": ("fact_id", "idx", "layer", "neuron", "activation", "sign", "answer_id", "answer_token",
                   "answer_rank", "answer_suppressed_rank", "answer_logit", "promoted", "suppressed"),
    "meta": ("key", "value"),
}
#: values of the wrong kind for some column: text, a BLOB, a fraction, a negative and a huge integer, not JSON
BAD_VALUES = ("abc", "", b"\x00\x01\x02", 1.5, -7, 10**12, "{not json", "[1, 2")


@contextlib.contextmanager
def _damaged(path, table: str, column: str, row: int | None, value):
    """``table.column`` of one row (its ``row``-th, modulo the rows there; None: every row) set to ``value`` while
    the block runs, then restored: the server keeps its connections, as it would over an atlas edited in place."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute("PRAGMA synchronous = OFF")  # a test file: no fsync per example
        before = db.execute(f"SELECT rowid, {column} FROM {table} ORDER BY rowid").fetchall()
        if row is not None and before:
            before = [before[row % len(before)]]
        try:
            with db:  # one transaction
                db.execute("BEGIN")
                db.executemany(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", [(value, r) for r, _ in before])
        except sqlite3.IntegrityError:  # a unique key taken twice: the atlas stays as it was
            before = []
        try:
            yield
        finally:
            with db:
                db.execute("BEGIN")
                db.executemany(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", [(v, r) for r, v in before])
    finally:
        db.close()


def _addresses(client) -> list[str]:
    """Every page and API route of the first done fact, relation, neuron and prompt (read from the pristine app)."""
    overview = client.get("/api/overview").json()
    relation = overview["relations"][0]["relation"] if overview.get("relations") else "capital"
    fact = client.get("/api/relation/" + quote(relation, safe="")).json()["facts"][0]["id"]
    neuron = client.get("/api/fact/" + quote(fact, safe="")).json()["refined"][0]["name"]
    f = quote(fact, safe="")
    return ["/", "/api/overview", f"/relation/{quote(relation, safe='')}", f"/api/relation/{quote(relation, safe='')}",
            f"/fact/{f}", f"/api/fact/{f}", f"/api/fact/{f}/prompt/0/cells", f"/neuron/{neuron}",
            f"/api/neuron/{neuron}", "/study/suppress_amplify", "/api/study/suppress_amplify", "/study/layers",
            f"/search?q={quote(fact.split(':')[-1])}",
            "/api/search?q=a", "/find", "/api/health"]


@pytest.fixture(scope="module")
def pristine(serve_atlas, tmp_path_factory):
    """The serve atlas with an aggregates row too (the tiny atlas's studies wrote none), so that every table of
    an atlas has a row to damage."""
    from kneuron.store.schema import AGGREGATES

    path = tmp_path_factory.mktemp("pristine") / "atlas.sqlite"
    shutil.copyfile(serve_atlas, path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(AGGREGATES)
    db.execute("INSERT INTO aggregates VALUES ('suppress_amplify', 'kn', '', 'suppress', -0.5, -0.6, -0.4, 10, "
               "'bootstrap', 'random', -0.1, 0.01)")
    db.close()
    return path


@pytest.fixture(scope="module")
def addresses(pristine):
    from fastapi.testclient import TestClient

    with TestClient(create_app(pristine), base_url="http://localhost") as client:
        found = _addresses(client)
        # the pristine atlas serves every one
        assert all(client.get(a, follow_redirects=False).status_code in (200, 303) for a in found)
    return found


@pytest.fixture(scope="module")
def served(pristine):
    """One client over the pristine atlas for every example (each damages it and restores it)."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(pristine), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_page_answers_500_on_a_damaged_row(pristine, addresses, served, data):
    table = data.draw(st.sampled_from(sorted(TABLES)), label="table")
    column = data.draw(st.sampled_from(TABLES[table]), label="column")
    row = data.draw(st.one_of(st.none(), st.integers(0, 50)), label="row (None: every row)")
    value = data.draw(st.sampled_from(BAD_VALUES), label="value")
    with _damaged(pristine, table, column, row, value):
        for address in addresses:
            response = served.get(address, follow_redirects=False)
            assert response.status_code != 500, (address, response.text[:300])
            if "is damaged" in response.text:
                assert response.status_code == 400, (address, response.status_code)
    assert served.get("/api/overview").status_code == 200  # restored


def test_every_column_of_every_table_damaged(pristine, addresses, served):
    """Every column of every table, all its rows given a value of another kind (text where a number belongs, a
    number where text or a BLOB belongs): no JSON route answers 500 (the pages render what those routes read)."""
    from kneuron.store.columns import COLUMN_TYPES

    routes = [a for a in addresses if a.startswith("/api/")] + ["/"]
    for table, columns in TABLES.items():
        for column in columns:
            value = 5 if COLUMN_TYPES.get(column) in (frozenset({str}), frozenset({bytes})) else "abc"
            with _damaged(pristine, table, column, None, value):
                for address in routes:
                    response = served.get(address, follow_redirects=False)
                    assert response.status_code != 500, (table, column, address, response.text[:300])


@pytest.mark.parametrize("table, column, value, address", [
    ("neurons", "layer", "abc", "/"),
    ("neurons", "score", "abc", "/api/overview"),
    ("neurons", "layer", "abc", "fact"),
    ("neurons", "score", "abc", "neuron"),
    ("prompts", "scores", b"\x00\x01\x02", "cells"),
    ("prompts", "probability", "abc", "relation"),
])
def test_a_damaged_value_answers_the_damaged_line(pristine, addresses, served, table, column, value, address):
    """The issue's cases: text in a layer or score column, a scores BLOB of the wrong length: the page answers
    400 with the damaged-atlas line, not 500."""
    target = next(a for a in addresses if a == address or a.startswith(f"/api/{address}") or
                  (address == "cells" and a.endswith("/cells")) or a.startswith(f"/{address}/"))
    with _damaged(pristine, table, column, None, value):
        response = served.get(target)
    assert response.status_code == 400, response.text[:300]
    assert "is damaged" in response.text


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(max_size=30), st.from_regex(r"\AL-?[0-9]{1,40}\.N-?[0-9]{1,40}\Z"),
                      st.builds(lambda a, b: f"L{a}.N{b}", st.integers(-10**30, 10**30), st.integers(-10**30, 10**30))))
def test_no_address_answers_500(served, name):
    """Any neuron address (any text, digits of any length, negative numbers): 200, 301 or 404, never 500."""
    for address in (f"/neuron/{quote(name, safe='')}", f"/api/neuron/{quote(name, safe='')}",
                    f"/api/fact/{quote(name, safe='')}/prompt/{quote(name, safe='')}/cells",
                    f"/fact/{quote(name, safe='')}", f"/relation/{quote(name, safe='')}"):
        status = served.get(address, follow_redirects=False).status_code
        assert status in (200, 301, 400, 404, 422), (address, status)


@pytest.mark.parametrize("name", ["L\u0661.N1", "L1.N\uff11", "\u0968.1", "L1.N\U0001d7d9"])
def test_non_ascii_digits_name_no_neuron(served, name):
    """Digits of other scripts (Arabic-Indic, fullwidth, Devanagari, mathematical) are no neuron's address: 404,
    not a redirect to the ASCII neuron they spell."""
    from kneuron.serve.pages import parse_neuron_name

    assert parse_neuron_name(name) is None
    for address in (f"/neuron/{quote(name, safe='')}", f"/api/neuron/{quote(name, safe='')}"):
        assert served.get(address, follow_redirects=False).status_code == 404, address

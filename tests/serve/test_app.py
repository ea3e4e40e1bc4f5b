"""The web app without a model: every page answers with the atlas's numbers, JSON twins agree, errors are one
line (never a traceback), nothing outside the assets is served, big bodies are refused, the atlas is never
written, and start-up reads no table."""

from __future__ import annotations

import hashlib
import json
import re
import socket

import pytest

from kneuron.serve import pages
from kneuron.serve.app import create_app
from kneuron.store import Atlas, files


def value_of(html: str, element_id: str) -> str:
    found = re.search(rf'id="{re.escape(element_id)}"[^>]*data-value="([^"]*)"', html)
    assert found, f"no #{element_id} with a data-value"
    return found.group(1)


def error_of(html: str) -> str:
    found = re.search(r'id="error" class="error">([^<]*)<', html)
    assert found, html[:300]
    return found.group(1)


def test_every_page_type_answers(client):
    for url in ("/", "/relation/capital", "/fact/capital%3AFrance", "/neuron/L0.N15", "/search?q=Italy",
                "/study/suppress_amplify?variant=kn&metric=suppress", "/find", "/static/kneuron.js",
                "/static/vendor/echarts.min.js", "/api/overview", "/api/health"):
        response = client.get(url)
        assert response.status_code == 200, (url, response.text[:200])


def test_pages_show_the_numbers_of_their_json_twins(client, serve_atlas):
    overview = client.get("/api/overview").json()
    html = client.get("/").text
    for figure in overview["headline"]:
        assert float(value_of(html, f"headline-{figure['key']}")) == pytest.approx(figure["value"])
        assert f'href="/study/{figure["study"]}?variant={figure["variant"]}&amp;metric={figure["metric"]}"' in html
    fact = client.get("/api/fact/capital%3AFrance").json()
    with Atlas.open(serve_atlas, read_only=True) as atlas:
        assert fact == json.loads(json.dumps(pages.fact_page(atlas, "capital:France")))
        kn = atlas.knowledge_neurons("capital:France")
    html = client.get("/fact/capital%3AFrance").text
    for n in kn.neurons:  # every knowledge neuron links to its page
        assert f'href="/neuron/L{n.layer}.N{n.index}"' in html
    probabilities = re.findall(r'class="probability" data-value="([^"]+)"', html)
    assert [float(p) for p in probabilities] == pytest.approx([p["probability"] for p in fact["prompts"]])
    neuron = client.get("/api/neuron/L0.N15").json()
    html = client.get("/neuron/L0.N15").text
    assert int(value_of(html, "refined-count")) == neuron["n_refined"] >= 2
    for entry in neuron["refined"]:
        assert f'href="/fact/{entry["fact_id"].replace(":", "%3A")}"' in html


def test_stable_addresses(client):
    assert client.get("/neuron/l0.n15", follow_redirects=False).headers["location"] == "/neuron/L0.N15"
    assert client.get("/search?q=L1.N16", follow_redirects=False).headers["location"] == "/neuron/L1.N16"
    assert client.get("/search?q=capital:Italy", follow_redirects=False).headers["location"] == \
        "/fact/capital%3AItaly"
    assert client.get("/fact/capital:Italy").status_code == 200  # unescaped ':' works too


@pytest.mark.parametrize(("url", "status", "message"), [
    ("/fact/capital%3AAtlantis", 404, "The atlas has no fact 'capital:Atlantis'"),
    ("/relation/nope", 404, "The atlas has no relation 'nope'"),
    ("/neuron/L99.N0", 404, "L99.N0 is outside the model"),
    ("/neuron/banana", 404, "is not a neuron name"),
    ("/study/nope", 404, "no results of study 'nope'"),
    ("/nothing/here", 404, "No page at '/nothing/here'"),
    ("/search?q=" + "x" * 300, 400, "search for at most 200"),
])
def test_bad_addresses_get_one_line(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status
    text = error_of(response.text)
    assert message.replace("'", "&#39;") in text and "\n" not in text
    assert "Traceback" not in response.text
    api = client.get("/api" + url if not url.startswith("/search") else url.replace("/search", "/api/search"))
    assert api.status_code == status
    assert message.replace("'/nothing", "'/api/nothing") in api.json()["error"]  # the JSON twin says the same


def test_an_unexpected_error_is_logged_not_shown(serve_atlas, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    def broken(atlas):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(pages, "overview", broken)
    with TestClient(create_app(serve_atlas), raise_server_exceptions=False, base_url="http://localhost") as client:
        response = client.get("/")
        assert response.status_code == 500
        assert error_of(response.text) == "Internal error (ZeroDivisionError); the server&#39;s log has the details."
        assert "secret internals" not in response.text and "Traceback" not in response.text
        assert client.get("/api/overview").json() == {
            "error": "Internal error (ZeroDivisionError); the server's log has the details."}
    assert "secret internals" in caplog.text


def test_probes_without_a_model_say_how_to_load_one(client):
    response = client.post("/api/probe", json={"prompt": "The capital of France is", "answer": "Paris"})
    assert response.status_code == 409
    assert response.json()["error"].startswith("No model is loaded: restart with `kneuron serve")


def test_a_megabyte_body_is_refused_before_it_is_parsed(client):
    response = client.post("/api/probe", json={"prompt": "x" * 1_000_000, "answer": "Paris"})
    assert response.status_code == 413
    assert response.json()["error"].startswith("The request is 1,000,0")


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (no client normalises its dots)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/../app.py", "/static/..%2fapp.py",
    "/static/vendor/../../pages.py", "/static/%2e%2e%2fpages.py", "/static/..\\app.py", "/../../etc/passwd",
    "/static/kneuron.css%00.py",
])
def test_nothing_outside_the_assets_is_served(serve_atlas, path):
    from kneuron.serve.server import RunningServer

    with RunningServer(create_app(serve_atlas)) as server:
        status, body = _raw_get(server.url, path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"def create_app" not in body and b"def overview" not in body


def test_assets_are_exactly_the_static_folder():
    from kneuron.serve.safety import ASSETS, STATIC

    assert set(ASSETS) == {"kneuron.css", "kneuron.js", "vendor/echarts.min.js", "vendor/echarts-LICENSE.txt",
                           "vendor/echarts-NOTICE.txt", "vendor/echarts-LICENSE-d3.txt", "vendor/README.md"}
    assert all(path.resolve().is_relative_to(STATIC.resolve()) for path in ASSETS.values())


def test_no_page_loads_anything_from_another_host(client):
    for url in ("/", "/relation/capital", "/fact/capital%3AFrance", "/neuron/L0.N15", "/find"):
        html = client.get(url).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources and all(s.startswith(("/", "#")) for s in sources), [s for s in sources if s[0] not in "/#"]
    assert "http://" not in client.get("/static/kneuron.js").text.replace("http://www.w3.org", "")


def test_the_atlas_is_never_written(atlas_copy):
    from fastapi.testclient import TestClient

    digest = hashlib.sha256(atlas_copy.read_bytes()).hexdigest()
    stat = atlas_copy.stat()
    with TestClient(create_app(atlas_copy), base_url="http://localhost") as client:
        for url in ("/", "/relation/capital", "/fact/capital%3AFrance", "/neuron/L0.N15", "/search?q=a",
                    "/api/fact/capital%3AFrance/prompt/0/cells", "/study/layers"):
            assert client.get(url).status_code == 200
    assert hashlib.sha256(atlas_copy.read_bytes()).hexdigest() == digest
    assert atlas_copy.stat().st_mtime_ns == stat.st_mtime_ns


def test_start_up_reads_no_table_but_meta(serve_atlas, monkeypatch):
    """A large atlas starts as fast as a small one: opening the app runs no integrity check and reads no table of
    facts, prompts, neurons or results."""
    statements: list[str] = []
    real = files.connect_read_only

    def traced(path, timeout=10.0):
        db = real(path, timeout)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(files, "connect_read_only", traced)
    create_app(serve_atlas)
    assert statements
    for statement in statements:
        lowered = statement.lower()
        assert "quick_check" not in lowered and "integrity_check" not in lowered, statement
        for table in ("facts", "prompts", "neurons", "results", "generic", "vocabulary"):
            assert not re.search(rf"\bfrom {table}\b", lowered), statement


def test_a_missing_atlas_is_refused_in_one_line(tmp_path):
    from kneuron.errors import KneuronError

    with pytest.raises(KneuronError, match="No atlas at"):
        create_app(tmp_path / "none.sqlite")


def test_the_overview_is_computed_once_per_state_of_the_atlas(atlas_copy):
    """Cached while the atlas stays the same; a commit by a run (another connection) shows at the next request."""
    import sqlite3

    from fastapi.testclient import TestClient

    app = create_app(atlas_copy)
    with TestClient(app, base_url="http://localhost") as client:
        cache = app.app.app.state.cache  # under the BodyLimit and HostCheck middleware
        first = [client.get("/api/overview").json()["done"] for _ in range(5)]
        client.get("/")
        assert first == [10] * 5 and cache.computed == 1
        db = sqlite3.connect(atlas_copy)  # what a run does: a write transaction, committed
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("UPDATE facts SET status = 'pending' WHERE id = 'capital:Italy'")
        db.commit()
        assert client.get("/api/overview").json()["done"] == 9
        assert [r["done"] for r in client.get("/api/overview").json()["relations"]] == [4, 3, 2]
        assert cache.computed == 2
        db.close()


def test_text_from_the_atlas_is_escaped(atlas_copy):
    """A subject, answer or prompt is data: a fact named like markup shows as text, also in the JSON a page embeds."""
    import sqlite3

    from fastapi.testclient import TestClient

    markup = '<img src=x onerror="alert(1)">'
    db = sqlite3.connect(atlas_copy)
    db.execute("UPDATE facts SET subject = ?, object = ? WHERE id = 'capital:France'", (markup, markup))
    db.execute("UPDATE prompts SET text = ? WHERE fact_id = 'capital:France' AND idx = 0", (markup,))
    db.commit()
    db.close()
    with TestClient(create_app(atlas_copy), base_url="http://localhost") as client:
        for url in ("/relation/capital", "/fact/capital%3AFrance", "/neuron/L0.N15", "/search?q=img"):
            html = client.get(url).text
            assert markup not in html and "<img" not in html, url
            assert "&lt;img src=x" in html or "\\u003cimg" in html, url


@pytest.mark.parametrize("name", ["L" + "9" * 5000 + ".N1", "L1.N" + "9" * 5000, "L" + "1" * 10 + ".N1",
                                  "L999999999.N999999999", "L-1.N0", "L0.N-1", "L0.N1e3", "L%00.N1"])
def test_impossible_neuron_addresses_get_404(client, name):
    """``/neuron/L<5000 digits>.N1`` answered 500 (Python refuses to read an integer of over 4,300 digits)."""
    for prefix in ("/neuron/", "/api/neuron/"):
        response = client.get(prefix + name)
        assert response.status_code == 404, (prefix, name[:20], response.text[:200])


def test_pages_show_the_stored_intervals(client, serve_atlas):
    """The overview, a relation's page and a study's page show each mean's interval, n and p as stored."""
    import html as html_text

    from kneuron.studies.intervals import find, format_interval

    with Atlas.open(serve_atlas, read_only=True) as atlas:
        stored = {s: atlas.aggregates(s) for s in ("suppress_amplify", "layers", "discrimination")}
    page = html_text.unescape(client.get("/").text)
    suppress = find(stored["suppress_amplify"], "kn", "suppress")
    auc = find(stored["discrimination"], "kn", "auc_signed")
    top = find(stored["layers"], "kn", "top_third")
    for interval, percent, signed in ((suppress, True, True), (auc, False, True), (top, True, False)):
        assert interval.n and "[" in format_interval(interval, percent=percent, signed=signed)
        assert format_interval(interval, percent=percent, signed=signed) in page
    assert f"{suppress.lo * 100:+.1f}".replace("-", "−") in page and "vs random" in page
    page = html_text.unescape(client.get("/relation/capital").text)
    capital = find(stored["suppress_amplify"], "random", "amplify", "capital")
    assert capital.n == 5 and format_interval(capital, percent=True) in page
    page = html_text.unescape(client.get("/study/layers").text)
    for a in stored["layers"]:
        assert format_interval(find([a], a["variant"], a["metric"], a["relation"])) in page

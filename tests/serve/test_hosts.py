"""Another site's page cannot use the server (issue 27, item 1): every route refuses a request addressed to a host
name that is not the server's (DNS rebinding: ``evil.example`` resolving to 127.0.0.1) and one sent by another
site's page (its ``Origin``), before any work: no page read, no probe queued, no fact saved."""

from __future__ import annotations

import hashlib
import http.client
import re

import pytest
from fastapi.testclient import TestClient

from kneuron.serve.app import create_app
from kneuron.serve.jobs import ProbeQueue
from kneuron.serve.safety import HostCheck, host_names, split_host
from serve.conftest import atlas_model

#: a value of each path parameter of the app's routes
SAMPLES = {"relation": "capital", "fact_id": "capital%3AFrance", "idx": "0", "name": "L0.N15",
           "study": "suppress_amplify", "job_id": "1"}
#: the bodies of the POST routes (each a valid request: with the right Host it would run)
BODIES = {"/api/probe": {"prompt": "The capital of France is", "answer": "Paris", "neurons": "L0.N15"},
          "/api/find": {"prompts": ["The capital of France is"], "answer": "Paris", "save": True,
                        "subject": "France", "relation": "seat"}}
FOREIGN_HOSTS = ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.evil.example",
                 "localhost:80@evil.example", "evil.example:80:80", "", "10.1.2.3", "[2001:db8::1]:8000",
                 # the rest of the class (issue 27: every case, not only the example): an unbound address, a
                 # wildcard, userinfo, a path, a bad port, broken brackets, a space, shorthand IPv4 forms, a name
                 # ending in two dots (not a fully qualified localhost), a list, a wildcard, percent-encoding
                 "0.0.0.0", "0.0.0.0:8000", "user@localhost:8000", "evil.example@localhost", "localhost:8000/evil",
                 "localhost:abc", "localhost:99999", "[::1", "local host", "127.1", "0x7f000001", "localhost..",
                 "localhost..:8000", "evil.example, localhost", "*", "%6cocalhost", "127.0.0.1.evil.example:8000"]
FOREIGN_ORIGINS = ["http://evil.example", "http://evil.example:8000", "null", "http://localhost:1",
                   "http://localhost.evil.example", "file://", "https://127.0.0.1.evil.example"]


def routes(app) -> list[tuple[str, str]]:
    """(method, path with sample parameters) of every route of the app (its FastAPI app under the middleware)."""
    inner = app
    while not hasattr(inner, "routes"):
        inner = inner.app
    found = []
    for route in inner.routes:
        path = re.sub(r"{(\w+)(?::\w+)?}", lambda m: SAMPLES.get(m.group(1), "kneuron.js"), route.path)
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, path))
    return found


@pytest.fixture(scope="module")
def saving_app(tmp_path_factory, serve_atlas):
    import shutil

    path = tmp_path_factory.mktemp("hosts") / "copy.sqlite"
    shutil.copyfile(serve_atlas, path)
    lm = atlas_model()
    with ProbeQueue(lm) as queue:
        queue.submitted = []
        submit = queue.submit
        queue.submit = lambda kind, fn: (queue.submitted.append(kind), submit(kind, fn))[1]  # a spy
        app = create_app(path, model=lm, queue=queue, allow_save=True)
        yield app, queue, path


def test_the_app_has_the_routes_the_test_covers(saving_app):
    """And the right Host runs them: the spy sees a probe."""
    app, queue, _ = saving_app
    found = routes(app)
    assert ("POST", "/api/probe") in found and ("POST", "/api/find") in found and ("GET", "/") in found
    assert len(found) >= 17, found
    with TestClient(app, base_url="http://localhost") as client:
        response = client.post("/api/probe", json=BODIES["/api/probe"], headers={"origin": "http://localhost"})
        assert response.status_code == 200, response.text
    assert queue.submitted == ["probe"]
    queue.submitted.clear()


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_every_route_refuses_a_foreign_host(saving_app, host):
    app, queue, path = saving_app
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with TestClient(app, base_url="http://localhost") as client:
        for method, url in routes(app):
            response = client.request(method, url, headers={"host": host}, json=BODIES.get(url))
            assert response.status_code == 403, (method, url, host, response.text[:200])
            assert "Refused: " in response.json()["error"] and "\n" not in response.json()["error"]
    assert queue.submitted == []  # no probe ran, nothing was saved
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_every_route_refuses_another_sites_origin(saving_app, origin):
    app, queue, path = saving_app
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with TestClient(app, base_url="http://localhost") as client:
        for method, url in routes(app):
            response = client.request(method, url, headers={"origin": origin}, json=BODIES.get(url))
            assert response.status_code == 403, (method, url, origin, response.text[:200])
            assert "another site's page" in response.json()["error"]
    assert queue.submitted == []
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST.", "127.0.0.1:8000", "[::1]:8000",
                                  "127.0.0.2"])
def test_the_servers_own_names_are_answered(client, host):
    response = client.get("/api/overview", headers={"host": host})
    assert response.status_code == 200, response.text
    same = client.get("/api/overview", headers={"host": host, "origin": f"http://{host}"})
    assert same.status_code == 200, same.text


def test_a_real_server_refuses_a_rebound_name(live_server):
    """The issue's example, on a socket: ``curl -H 'Host: evil.example' http://127.0.0.1:PORT/api/overview``."""
    for host, status in (("evil.example", 403), (f"127.0.0.1:{live_server.port}", 200)):
        connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
        connection.request("GET", "/api/overview", headers={"Host": host})
        response = connection.getresponse()
        assert response.status == status, (host, response.read()[:200])
        connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
    connection.request("POST", "/api/probe", body=b'{"prompt": "The capital of France is", "answer": "Paris"}',
                       headers={"Host": "evil.example", "Content-Type": "application/json"})
    assert connection.getresponse().status == 403 and live_server.queue.pending() == 0
    connection.close()


def test_host_names_of_a_bound_address():
    assert host_names("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert "box.lan" in host_names("box.lan") and "evil.example" not in host_names("0.0.0.0")
    assert "my.name" in host_names("127.0.0.1", ["My.Name."])
    assert split_host("[::1]:8000") == ("::1", "8000") and split_host("a:b") is None
    wide = HostCheck(None, host_names("0.0.0.0"), any_ip=True)
    assert wide.allowed_host("192.168.1.7:8000") is None and wide.allowed_host("evil.example") is not None

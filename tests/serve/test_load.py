"""A local server under load: 240 concurrent page requests and 24 concurrent probes. Every answer is the one the
atlas and the model give one at a time, memory stays bounded, and the model's weights are bit-identical after."""

from __future__ import annotations

import json
import resource
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kneuron.serve import pages
from kneuron.store import Atlas

PAGES = 240
PROBES = 24


def fetch(url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def expected_pages(serve_atlas) -> dict[str, object]:
    """Each JSON page's answer, read directly from the atlas (round-tripped through JSON)."""
    with Atlas.open(serve_atlas, read_only=True) as atlas:
        facts = [f.id for f in atlas.facts()]
        found = {"/api/overview": pages.overview(atlas),
                 "/api/relation/language": pages.relation_page(atlas, "language")}
        for fact_id in facts:
            found[f"/api/fact/{fact_id}"] = pages.fact_page(atlas, fact_id)
            found[f"/api/fact/{fact_id}/prompt/1/cells"] = pages.prompt_cells(atlas, fact_id, 1)
        for layer, index in [(0, 15), (1, 16), (0, 12), (1, 18)]:
            found[f"/api/neuron/L{layer}.N{index}"] = pages.neuron_page(atlas, layer, index)
        found["/api/search?q=Italy"] = pages.search(atlas, "Italy")
    return {url: json.loads(json.dumps(value)) for url, value in found.items()}


def test_many_pages_and_probes_at_once(live_server, serve_atlas):
    from kneuron.serve.probes import probe

    lm = live_server.lm
    before = {name: tensor.detach().clone() for name, tensor in lm.model.state_dict().items()}
    expected = expected_pages(serve_atlas)
    urls = list(expected)
    prompts = ["The capital of France is", "In Italy they speak", "The capital city of Germany is",
               "China is part of"]
    answers = ["Paris", "Italian", "Berlin", "Asia"]
    probes = [(prompts[i % 4], answers[i % 4], [(i % 2, (3 * i) % 32), (1, i % 32)]) for i in range(PROBES)]
    direct = [probe(lm, p, a, n) for p, a, n in probes]  # one at a time, before the server uses the model

    def page(i: int) -> bool:
        url = urls[i % len(urls)]
        status, body = fetch(live_server.url + url)
        return status == 200 and json.loads(body) == expected[url]

    def html(i: int) -> bool:
        url = ["/", "/relation/capital", "/fact/capital%3AItaly", "/neuron/L0.N15"][i % 4]
        status, body = fetch(live_server.url + url)
        return status == 200 and b'id="error"' not in body and b"</html>" in body

    def live(i: int) -> dict:
        prompt, answer, neurons = probes[i]
        status, body = fetch(live_server.url + "/api/probe", {
            "prompt": prompt, "answer": answer, "neurons": ", ".join(f"L{a}.N{b}" for a, b in neurons)})
        assert status == 200, body
        return json.loads(body)

    def round_of_load() -> tuple[list[bool], list[dict]]:
        with ThreadPoolExecutor(max_workers=PAGES + PROBES) as pool:
            probe_results = [pool.submit(live, i) for i in range(PROBES)]
            page_results = [pool.submit(page if i % 3 else html, i) for i in range(PAGES)]
            return [f.result() for f in page_results], [f.result() for f in probe_results]

    oks, answered = round_of_load()  # warm-up: threads, connections and caches come into being
    assert all(oks), f"{oks.count(False)} of {len(oks)} pages were wrong"
    for got, want in zip(answered, direct, strict=True):
        assert json.loads(json.dumps(got)) == json.loads(json.dumps(want))
    warm = rss_mb()
    for _ in range(3):
        oks, answered = round_of_load()
        assert all(oks)
        assert [json.loads(json.dumps(a)) for a in answered] == [json.loads(json.dumps(d)) for d in direct]
    grown = rss_mb() - warm
    print(f"RSS {warm:.0f} MB after the warm-up round, {grown:+.1f} MB after three more")  # shown with -s
    assert grown < 64, f"memory grew {grown:.0f} MB over three more rounds of {PAGES + PROBES} requests"
    assert live_server.server.config.app  # the server was the one answering
    health = json.loads(fetch(live_server.url + "/api/health")[1])
    assert health["connections"] <= 41  # one per request thread, at most the pool's 40 (+ the first)
    assert health["queue"]["pending"] == 0
    after = lm.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before), "a probe changed the weights"


def test_a_full_queue_answers_503_in_one_line(serve_atlas):
    import threading

    from kneuron.serve.app import create_app
    from kneuron.serve.jobs import ProbeQueue
    from kneuron.serve.server import RunningServer
    from serve.conftest import atlas_model

    lm = atlas_model()
    release = threading.Event()
    with ProbeQueue(lm, max_pending=1) as queue, \
            RunningServer(create_app(serve_atlas, model=lm, queue=queue)) as server:
        queue.submit("block", lambda job: release.wait(30))  # the one slot is taken
        status, body = fetch(server.url + "/api/probe", {"prompt": "The capital of France is", "answer": "Paris",
                                                         "neurons": "L0.N1"})
        release.set()
        assert status == 503
        message = json.loads(body)["error"]
        assert "try again" in message and "\n" not in message


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"prompt": "x" * 1_000_000, "answer": "Paris"}, 413, "The request is 1,000,0"),
    ({"prompt": "The capital of France is", "answer": "Paris",
      "neurons": ", ".join(f"L0.N{i % 32}" for i in range(10_000))}, 413, "and at most 512 neurons"),
    ({"prompt": "The capital of France is", "answer": "Paris", "neurons": [f"L0.N{i}" for i in range(10_000)]},
     413, "and at most 512 neurons"),  # issue 27 item 7: the refusal named only the prompt's length
    ({"prompt": "x" * 5000, "answer": "Paris"}, 400, "2,000"),
    ({"prompt": "The capital of France is", "answer": "Paris", "neurons": "L0.N15, L9.N3"}, 400, "L9.N3"),
    ({"prompt": "The capital of France is", "answer": "Paris", "neurons": "banana"}, 400, "banana"),
    ({"prompt": "The capital of France is"}, 400, "answer"),
    ({"prompt": "The capital of France is", "answer": "Paris", "factor": "a lot"}, 400, "factor"),
])
def test_oversized_and_bad_probes_are_refused_in_one_line(live_server, body, status, message):
    got, answer = fetch(live_server.url + "/api/probe", body)
    assert got == status, answer
    error = json.loads(answer)["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


def test_ten_thousand_neurons_in_a_small_body_are_refused(live_server):
    """10,000 neurons written tersely still fit the body limit: the neuron limit refuses them, before any pass."""
    names = " ".join(f"L0.N{i % 32}" for i in range(10_000))[:60_000]
    got, answer = fetch(live_server.url + "/api/probe", {"prompt": "The capital of France is", "answer": "Paris",
                                                          "neurons": names})
    assert got == 400
    assert "at most" in json.loads(answer)["error"]

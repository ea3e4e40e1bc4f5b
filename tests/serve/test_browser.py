"""``kneuron serve`` in a real browser (headless Chromium through Selenium): open the overview, search for a fact,
follow it to a neuron page, run a live probe and a find on the tiny model; the numbers shown are the atlas's and
the probe's own.

With ``KNEURON_SCREENSHOTS=FOLDER`` set, the test also saves a screenshot of each page type there
(``make screenshots`` does this for the README, on the demo's SmolLM2 atlas: ``KNEURON_SCREENSHOT_ATLAS`` and
``KNEURON_SCREENSHOT_MODEL``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kneuron.serve import pages
from kneuron.store import Atlas
from serve.browser import charts_drawn, chromium, screenshot, wait_for


def shown(text: str) -> float:
    return float(text.replace("−", "-").rstrip("%"))


def test_overview_search_fact_neuron_probe(live_server, serve_atlas):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    folder = os.environ.get("KNEURON_SCREENSHOTS")
    with Atlas.open(serve_atlas, read_only=True) as atlas:
        expected = pages.overview(atlas)
        fact = pages.fact_page(atlas, "capital:Germany")
    with chromium() as driver:
        driver.get(live_server.url + "/")
        wait_for(driver, lambda d: charts_drawn(d) >= 1)
        suppress = driver.find_element(By.ID, "headline-suppress")
        assert shown(suppress.text) == pytest.approx(
            round(next(h["value"] for h in expected["headline"] if h["key"] == "suppress") * 100, 1))
        assert int(driver.find_element(By.ID, "done-facts").text) == expected["done"] == 10
        if folder:
            screenshot(driver, Path(folder) / "overview.png")

        box = driver.find_element(By.ID, "search")  # search by subject: one match goes straight to the fact
        box.send_keys("Germany")
        box.submit()
        wait_for(driver, ec.presence_of_element_located((By.ID, "fact-id")))
        assert driver.current_url == live_server.url + "/fact/capital%3AGermany"
        assert driver.find_element(By.ID, "fact-id").text == "capital:Germany"
        cells = driver.find_elements(By.CSS_SELECTOR, "#prompt-table td.probability")
        assert [float(c.get_attribute("data-value")) for c in cells] == pytest.approx(
            [p["probability"] for p in fact["prompts"]])
        wait_for(driver, ec.presence_of_element_located((By.ID, "cells-top-table")))  # the layers x neurons view
        wait_for(driver, lambda d: charts_drawn(d) >= 1)
        rows = driver.find_elements(By.CSS_SELECTOR, "#refined-table tbody tr")
        assert [r.get_attribute("data-neuron") for r in rows] == [n["name"] for n in fact["refined"]]
        if folder:
            screenshot(driver, Path(folder) / "fact.png")

        first = fact["refined"][0]
        driver.find_element(By.LINK_TEXT, first["name"]).click()
        wait_for(driver, ec.presence_of_element_located((By.ID, "neuron-name")))
        assert driver.find_element(By.ID, "neuron-name").text == first["name"]
        with Atlas.open(serve_atlas, read_only=True) as atlas:
            neuron = pages.neuron_page(atlas, first["layer"], first["index"])
        assert int(driver.find_element(By.ID, "refined-count").text) == neuron["n_refined"]
        activations = driver.find_elements(By.CSS_SELECTOR, "#neuron-prompts td.activation")
        assert [float(a.get_attribute("data-value")) for a in activations] == pytest.approx(
            [c["activation"] for c in neuron["coarse"]])

        # a live probe: the neuron's own prompt, its neurons suppressed and amplified
        driver.find_element(By.ID, "probe-run").click()
        wait_for(driver, ec.presence_of_element_located((By.ID, "probe-table")), timeout=60)
        prompt = driver.find_element(By.ID, "probe-prompt").get_attribute("value")
        answer = driver.find_element(By.ID, "probe-answer").get_attribute("value")
        from kneuron.serve.probes import probe

        direct = probe(live_server.lm, prompt, answer, [(first["layer"], first["index"])])
        for condition in ("as_is", "suppressed", "amplified"):
            row = driver.find_element(By.CSS_SELECTOR, f'#probe-table tr[data-condition="{condition}"] td.probability')
            assert float(row.get_attribute("data-value")) == pytest.approx(
                direct["conditions"][condition]["probability"], rel=1e-6)
        if folder:
            screenshot(driver, Path(folder) / "neuron.png")

        driver.get(live_server.url + "/relation/capital")
        wait_for(driver, lambda d: charts_drawn(d) >= 1)
        shown_neurons = [int(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#fact-table a.neurons")]
        with Atlas.open(serve_atlas, read_only=True) as atlas:
            facts = atlas.facts(relation="capital")
            assert shown_neurons == [len(atlas.knowledge_neurons(f.id).neurons) for f in facts]
        if folder:
            screenshot(driver, Path(folder) / "relation.png")


def test_a_bad_probe_shows_one_line_on_the_page(live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    with chromium() as driver:
        driver.get(live_server.url + "/neuron/L0.N15")
        field = driver.find_element(By.ID, "probe-neurons")
        field.clear()
        field.send_keys("L0.N15, L7.N99999")
        driver.find_element(By.ID, "probe-run").click()
        error = wait_for(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "#probe-result .error")))
        assert "L7.N99999" in error.text and "\n" not in error.text
        assert "Traceback" not in driver.page_source


def test_find_shows_progress_then_the_neurons(live_server, serve_atlas):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    with chromium() as driver:
        driver.get(live_server.url + "/find")
        driver.find_element(By.ID, "find-prompts").send_keys("The capital of France is\nThe capital city of France is")
        driver.find_element(By.ID, "find-answer").send_keys("Paris")
        driver.find_element(By.ID, "find-run").click()
        wait_for(driver, ec.visibility_of_element_located((By.ID, "find-progress")))
        wait_for(driver, ec.presence_of_element_located((By.ID, "find-table")), timeout=120)
        label = driver.find_element(By.CSS_SELECTOR, "#find-progress .label").text
        assert label == "done: 2 of 2 prompts attributed"
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#find-table td.l a")]
        if os.environ.get("KNEURON_SCREENSHOTS"):
            screenshot(driver, Path(os.environ["KNEURON_SCREENSHOTS"]) / "find.png")
    from kneuron.serve.probes import find

    with Atlas.open(serve_atlas, read_only=True) as atlas:
        params = atlas.params
    direct = find(live_server.lm, ["The capital of France is", "The capital city of France is"], "Paris", params)
    assert names == [n["name"] for n in direct["neurons"]] and names


def test_without_chromium_the_browser_tests_skip_saying_what_to_install(monkeypatch):
    """Not root or no apt-get: ``make test`` installs nothing, and the browser tests skip with one line instead of
    failing."""
    from serve import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: "/usr/bin/chromium" if name == "chromium" else None)
    with pytest.raises(pytest.skip.Exception) as skipped:
        browser.browser_paths()
    assert str(skipped.value).startswith("chromedriver not found: install chromium and chromium-driver")
    assert "apt-get install -y chromium chromium-driver" in str(skipped.value)

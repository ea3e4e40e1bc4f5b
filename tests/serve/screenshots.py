"""The README's screenshots of ``kneuron serve``: one per page type, taken in headless Chromium with the browser
tests' own tooling (:mod:`serve.browser`) on a real atlas and its model.

Run ``make screenshots`` (after ``make demo``), or
``.venv/bin/python tests/serve/screenshots.py --run runs/demo.sqlite --model smollm2-135m --out docs/screenshots``.
It serves the atlas on a free port of 127.0.0.1 (read-only), opens the overview, a relation, the fact the search
box finds for ``--search``, that fact's first knowledge neuron with a live probe run on it, and the find page with a
find run to its end, and saves ``overview.png``, ``relation.png``, ``fact.png``, ``neuron.png`` and ``find.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2] / "src")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--search", default="France")
    parser.add_argument("--find", default="The capital of Spain is\nSpain's capital city is")
    parser.add_argument("--answer", default="Madrid")
    args = parser.parse_args()

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from kneuron.models import load
    from kneuron.serve.app import create_app
    from kneuron.serve.jobs import ProbeQueue
    from kneuron.serve.server import RunningServer
    from serve.browser import charts_drawn, chromium, screenshot, wait_for

    torch.set_num_threads(1)
    lm = load(args.model) if args.model else None
    queue = ProbeQueue(lm) if lm is not None else None
    try:
        with RunningServer(create_app(args.run, model=lm, queue=queue)) as server, chromium(1280, 900) as driver:
            driver.get(server.url + "/")
            wait_for(driver, lambda d: charts_drawn(d) >= 1)
            print(screenshot(driver, args.out / "overview.png"))
            first_relation = driver.find_element(By.CSS_SELECTOR, "#relations tbody a").get_attribute("href")
            driver.get(first_relation)
            wait_for(driver, lambda d: charts_drawn(d) >= 1)
            print(screenshot(driver, args.out / "relation.png"))

            driver.get(server.url + "/")
            box = driver.find_element(By.ID, "search")
            box.send_keys(args.search)
            box.submit()
            wait_for(driver, lambda d: "/search" in d.current_url or "/fact/" in d.current_url)
            if "/search" in driver.current_url:
                driver.find_element(By.CSS_SELECTOR, "#search-results tbody a").click()
            wait_for(driver, ec.presence_of_element_located((By.ID, "cells-top-table")), timeout=60)
            wait_for(driver, lambda d: charts_drawn(d) >= 1)
            neuron = driver.find_element(By.CSS_SELECTOR, "#refined-table tbody a").get_attribute("href")
            if lm is not None:
                driver.find_element(By.ID, "probe-run").click()
                wait_for(driver, ec.presence_of_element_located((By.ID, "probe-table")), timeout=120)
            print(screenshot(driver, args.out / "fact.png"))

            driver.get(neuron)
            if lm is not None:
                driver.find_element(By.ID, "probe-run").click()
                wait_for(driver, ec.presence_of_element_located((By.ID, "probe-table")), timeout=120)
            print(screenshot(driver, args.out / "neuron.png"))

            if lm is not None:
                driver.get(server.url + "/find")
                driver.find_element(By.ID, "find-prompts").send_keys(args.find)
                driver.find_element(By.ID, "find-answer").send_keys(args.answer)
                driver.find_element(By.ID, "find-run").click()
                wait_for(driver, ec.presence_of_element_located((By.ID, "find-table")), timeout=600)
                print(screenshot(driver, args.out / "find.png"))
    finally:
        if queue is not None:
            queue.close()


if __name__ == "__main__":
    main()

"""``results/<exp>/report.html`` rendered by a real headless Chromium (issue 12, item 6).

Chromium and its WebDriver come from Debian's packages (``chromium``, ``chromium-driver``); ``./dev.sh
test`` installs them on a fresh machine. The report comes from a real experiment on ``backend=sim``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

import orchestrator.config  # noqa: F401
from orchestrator.experiment import run_experiment

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="no headless browser: Debian's chromium + chromium-driver are not installed and could not be "
    "(./dev.sh test installs them with apt-get when it runs as root)",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("report_results")
    base = ["experiment=sjf_vs_fcfs", "backend=sim", "grid.workload=[synthetic_poisson]", "grid.seed=[0,1]",
            "workload.num_requests=40", "progress=false", f"results_dir={results}"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        run_experiment(compose("config", overrides=base), base)
        # one more cell that fails (its step-time profile does not exist): listed with the error, not compared
        bad = [*base, "grid.policy=[fcfs]", "grid.seed=[2]", "backend.step_model=linear:no_such_profile"]
        res = run_experiment(compose("config", overrides=bad), bad)
    return res


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(BROWSER)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_report_renders_self_contained_in_chromium(report, browser, tmp_path):
    page = report.results_dir / "report.html"
    html = page.read_text()
    assert "src=\"http" not in html and "href=\"http" not in html.replace(f'href="http://127.0.0.1:5000/#', "")
    browser.get(page.as_uri())
    assert "sjf_vs_fcfs" in browser.title

    # Every plot is an inline image that the browser decoded.
    imgs = browser.execute_script(
        "return [...document.images].map(i => [i.src.slice(0, 22), i.complete, i.naturalWidth])")
    assert len(imgs) == 3
    assert all(src == "data:image/png;base64," and done and width > 300 for src, done, width in imgs), imgs

    # The comparison with intervals and marks, as the terminal shows it.
    cmp_rows = browser.execute_script(
        "return [...document.querySelectorAll('#comparison ~ table')[0].rows].map(r => [...r.cells].map(c => c.innerText))")
    header, body = cmp_rows[0], cmp_rows[1:]
    assert header[1:] == ["fcfs (2 seeds)", "sjf (2 seeds)"]  # the failed third fcfs seed is not counted
    ttft = next(r for r in body if r[0] == "ttft_ms_p50")
    assert "[" in ttft[1] and ("n.s." in ttft[2] or "*" in ttft[2])

    # The cell list: every cell found in MLflow, with its verdict and a link to its run.
    cells = pd.read_csv(report.results_dir / "cells.csv")
    listed = browser.execute_script(
        "const t = document.querySelectorAll('table'); const rows = [...t[t.length - 1].rows].slice(1);"
        "return rows.map(r => [r.cells[0].innerText, r.cells[1].innerText, r.cells[2].innerText, r.querySelector('a').href])")
    assert len(listed) == len(cells) == 5
    client = MlflowClient(tracking_uri=report.tracking_uri)
    for label, status, validity, href in listed:
        run = client.get_run(href.rsplit("/", 1)[-1])
        assert run.info.run_name == label and run.info.status == status
        assert (status, validity) == ("FINISHED", "valid") if "seed=2" not in label else "no_such_profile" in validity

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(height + 400, 8000))
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")


def test_report_is_an_mlflow_artifact_of_the_parent_run(report):
    client = MlflowClient(tracking_uri=report.tracking_uri)
    assert "report.html" in {a.path for a in client.list_artifacts(report.parent_run_id)}

"""The dashboard in a real headless browser (Debian's chromium and chromedriver, driven by selenium): the page
loads from the node, a job submitted through the API appears in it, a running job's output shows as it comes, and a screenshot is saved for a person
to look at (build/test-artifacts/dashboard.png)."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import wasm_build

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs a browser: apt-get install chromium chromium-driver (.ci/setup --test)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--window-size=1280,1400",
        # the page is served by a node on loopback; nothing else may be looked up or reached
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    # an explicit driver: selenium's manager would otherwise try to download one
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting in the browser")
        time.sleep(0.1)


def test_dashboard_shows_the_node_and_a_job(api_nodes: Callable[..., list[Any]], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    (api,) = api_nodes()
    browser.get(api.url + "/")
    wait_for(lambda: browser.find_element(By.ID, "status").text == "live")
    assert api.node.address in browser.find_element(By.ID, "identity").text
    assert "wasm3" in browser.find_element(By.ID, "engine").text
    assert "workers\n2" in browser.find_element(By.ID, "load").text

    body = {"module": base64.b64encode(HELLO.read_bytes()).decode(), "input_text": "Hello, World", "wait": True}
    jobs = [api.call("POST", "/v1/jobs", body)[1] for _ in range(3)]
    assert all(j["state"] == "done" for j in jobs)
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-id="{jobs[-1]["id"]}"]'))
    assert "done" in row[0].text and "ok" in row[0].text
    receipt = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#receipts tr[data-job="{jobs[-1]["job_id"]}"]'))
    assert "ok" in receipt[0].text
    # the plot drew this minute's bar (its colour, #b9cdf3, is somewhere on the canvas)
    drawn = browser.execute_script("""
        const c = document.getElementById('plot'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 185 && d[i + 1] === 205 && d[i + 2] === 243) return true;
        return false;""")
    assert drawn
    # a running job's output appears as the node streams it, marked unverified, then verified at its end
    drip = wasm_build.build_c("drip.c").read_bytes()
    body = {"module": base64.b64encode(drip).decode(), "args": ["6", "700"], "limits": {"timeout_ms": 30000}}
    job = api.call("POST", "/v1/jobs", body)[1]
    wait_for(lambda: "tick 1" in browser.find_element(By.ID, "output").text)
    assert api.call("GET", f"/v1/jobs/{job['id']}")[1]["state"] == "running"  # shown before the job ended
    assert "unverified" in browser.find_element(By.ID, "output-of").text
    wait_for(lambda: "verified ✓" in browser.find_element(By.ID, "output-of").text)
    assert browser.find_element(By.ID, "output").text.startswith("tick 0\ntick 1\ntock 1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

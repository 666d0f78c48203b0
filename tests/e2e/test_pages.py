"""The serving pages in a real headless Chromium against the real running system.

Status page -> a model -> Enable Serving -> Pending -> Ready (no reload) -> Load Example ->
Send Request -> predictions; a burst of requests shows in /metrics and the chart; a version's
logs and events; Stop -> not served. Every page is saved as a screenshot under
``tests-artifacts/pages/`` (the path is printed) to be looked at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.conftest import ARTIFACTS, System

pytestmark = pytest.mark.e2e

NAME = "iris pages"  # a space: the page must encode it in every URL it builds
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ARTIFACTS / "pages"
# Every wait of the browser's, for a page, an element or a click (Playwright's defaults: 5 s for an
# expect, 30 s for an action). A page here asks the API, which may ask MLflow: on a loaded machine
# that is far slower than a default allows. Only "it shows" is tested, never how fast.
BROWSER_WAIT_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    expect.set_options(timeout=BROWSER_WAIT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()
            expect.set_options(timeout=None)  # the process-wide default again


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_serving_pages_in_a_browser(system: System, register: Any, browser: Any) -> None:
    from playwright.sync_api import expect

    assert register(NAME) == "1"
    signed_in = {"username": system.admin[0], "password": system.admin[1]}  # the browser's Basic sign-in
    page = browser.new_page(viewport={"width": 1200, "height": 900}, http_credentials=signed_in)
    page.set_default_timeout(BROWSER_WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations of Enable and Stop

    # The status page lists the model, not served.
    page.goto(f"{system.url}/serving/")
    row = page.locator(f'tr[data-model="{NAME}"]')
    expect(row).to_contain_text("Not served")
    shot(page, "01-status")

    # Its Serving tab: Enable Serving, then Pending, then Ready, all without a reload.
    row.get_by_role("link", name=NAME).click()
    state = page.locator("#state")
    expect(state).to_have_text("Not served")
    shot(page, "02-model-not-served")
    page.evaluate("window.__sameDocument = true")
    page.get_by_role("button", name="Enable Serving").click()
    expect(state).to_have_text("Pending")
    shot(page, "03-model-pending")
    expect(page.locator('tr[data-version="1"]')).to_be_visible()
    shot(page, "03b-model-deploying")  # the version's state message and build progress
    expect(state).to_have_text("Ready", timeout=600_000)
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    expect(page.locator('tr[data-version="1"]')).to_contain_text("Ready")
    uri = page.locator('.uri[data-uri="/model/iris%20pages/1/invocations"]')
    expect(uri).to_contain_text(f"{system.url}/model/iris%20pages/1/invocations")
    uri.get_by_role("button", name="Copy").click()
    expect(uri.get_by_role("button", name="Copied")).to_be_visible()
    shot(page, "04-model-ready")

    # The test box: Load Example fills it with the logged example, Send Request shows predictions.
    page.get_by_role("button", name="Load Example").click()
    expect(page.locator("#note")).to_contain_text("input_example.json")
    body = json.loads(page.locator("#input").input_value())
    assert isinstance(body, list) and len(body) == 3 and set(body[0]) == {
        "sepal_length", "sepal_width", "petal_length", "petal_width"}
    assert page.locator("#ctype").input_value() == "application/json; format=pandas-records"
    page.get_by_role("button", name="Send Request").click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^200"))
    predictions = json.loads(page.locator("#body").inner_text())
    direct = requests.post(f"{system.url}/model/iris%20pages/1/invocations", json=body,
                           headers={"Content-Type": "application/json; format=pandas-records"}, timeout=30)
    assert predictions == direct.json() and len(predictions) == 3
    shot(page, "05-test-request")

    # A burst of requests: counted in /metrics by model, version and route, and drawn in the chart.
    for _ in range(40):
        assert requests.post(f"{system.url}/model/iris%20pages/1/invocations", json=body,
                             headers={"Content-Type": "application/json; format=pandas-records"},
                             timeout=30).status_code == 200
    assert requests.post(f"{system.url}/model/iris%20pages/1/invocations", data="{oops",
                         headers={"Content-Type": "application/json"}, timeout=30).status_code == 400
    labels = {"model": NAME, "version": "1", "route": "1"}

    def counted() -> str | None:
        text = requests.get(f"{system.url}/metrics", timeout=10).text
        ok = metric(text, "modelserve_requests_total", **labels, code="200") or 0
        return text if ok >= 42 and metric(text, "modelserve_requests_total", **labels, code="400") == 1 else None

    text = system.wait_for("the burst in /metrics", counted, timeout=120)
    # The browser's first request to /model/ goes without credentials (its sign-in was for
    # /serving/), is refused with 401 and repeated with them: a real request, counted as such.
    refused = metric(text, "modelserve_requests_total", **labels, code="401") or 0
    assert refused <= 1
    assert metric(text, "modelserve_requests_total", **labels, code="200") == 42  # 40 + the box + the check
    assert metric(text, "modelserve_request_errors_total", **labels) == 1 + refused
    assert metric(text, "modelserve_request_duration_seconds_count", **labels) == 43 + refused
    assert metric(text, "modelserve_request_duration_seconds_bucket", **labels, le="+Inf") == 43 + refused
    assert (metric(text, "modelserve_request_duration_seconds_bucket", **labels, le="10.0") or 0) >= 42
    assert metric(text, "modelserve_version_state", model=NAME, version="1", state="VERSION_STATE_READY") == 1
    assert (metric(text, "modelserve_version_build_seconds", model=NAME, version="1") or 0) > 0
    history = system.api("GET", "get-metric-history", registered_model_name=NAME).json()["metrics"]
    assert sum(m["value"] for m in history if m["key"] == "requests") == 43 + refused
    requests_chart = page.locator(".charts figure").first
    expect(requests_chart).to_contain_text("Requests")
    expect(requests_chart).not_to_have_attribute("data-peak", "0.000")  # the live panel redraws it
    assert float(requests_chart.get_attribute("data-peak") or 0) > 0
    shot(page, "06-model-metrics")

    # Model Events, then one version's Logs and Version Events.
    page.get_by_role("link", name="Model Events").click()
    expect(page.locator("#events")).to_contain_text("Serving enabled")
    expect(page.locator("#events")).to_contain_text("Version 1 is ready and serving")
    shot(page, "07-model-events")
    page.get_by_role("link", name="Model Versions").click()
    page.locator('tr[data-version="1"]').get_by_role("link", name="Logs").click()
    expect(page.locator("#build-log")).to_contain_text("health check passed")
    expect(page.locator("#served-log")).not_to_be_empty()
    shot(page, "08-version-logs")
    page.get_by_role("link", name="Version Events").click()
    expect(page.locator("#events")).to_contain_text("is launching its scoring server")
    shot(page, "09-version-events")

    # On a narrow screen nothing sticks out sideways.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, http_credentials=signed_in)
    phone.set_default_timeout(BROWSER_WAIT_MS)
    phone.goto(f"{system.url}/serving/model?name=iris%20pages")
    expect(phone.locator("#state")).to_have_text("Ready")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(phone, "10-model-narrow")
    phone.close()

    # Stop: the page shows it go, and the URIs stop answering.
    page.get_by_role("link", name=NAME).click()
    page.get_by_role("button", name="Stop").click()
    expect(state).to_have_text("Not served")
    expect(page.locator(".uri")).to_have_count(0)
    system.wait_for("routes gone", lambda: requests.post(f"{system.url}/model/iris%20pages/1/invocations",
                                                         json=body, timeout=10).status_code == 404, timeout=120)
    shot(page, "11-model-stopped")
    page.goto(f"{system.url}/serving/")
    expect(page.locator(f'tr[data-model="{NAME}"]')).to_contain_text("Not served")
    assert not errors, errors
    page.close()

    # Load Example for a version that was never downloaded reads just its example from the registry.
    assert register(NAME) == "2"
    r = requests.get(f"{system.url}/serving/example", params={"name": NAME, "version": "2"}, timeout=60)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["body"]) == body

"""The web page in a real headless Chromium (Debian's package, driven by Playwright): chat streams an answer,
extraction shows a table and highlighted spans. Screenshots go to the test's folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI installs chromium and sets KNOWLM_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("KNOWLM_REQUIRE_BROWSER"),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page_server():
    from knowlm_local.runtime import LoadOptions, load_model
    from knowlm_local.serve.app import ServeSettings
    from knowlm_local.serve.run import Server

    srv = Server(ServeSettings(port=0, queue_size=4),  # the built-in extraction model, so spans appear
                 lambda: load_model("smollm2-ie", LoadOptions(n_ctx=1024, n_threads=2, seed=0))).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(page_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.goto(page_server.url + "/")
            yield tab
        finally:
            browser.close()


def test_chat_streams_an_answer(page, tmp_path):
    page.wait_for_function("document.getElementById('model-info').textContent.includes('smollm2')", timeout=60_000)
    page.fill("#max_tokens", "24")
    page.fill("#temperature", "0")
    page.fill("#instruction", "Name three colors.")
    page.click("#send")
    page.wait_for_selector(".message.assistant.streaming", timeout=60_000)  # shown while tokens arrive
    page.wait_for_selector(".message.assistant.done", timeout=120_000)
    answer = page.inner_text(".message.assistant")
    assert answer.strip() and "[error" not in answer
    assert page.inner_text(".message.user") == "Name three colors."
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 1000


def test_extraction_shows_a_table_and_highlights_the_spans(page, tmp_path):
    page.click("#tab-extract")
    page.fill("#text", "Marta Oliveira founded Tidewater Analytics in Porto in 2016.")
    page.fill("#schema", "person,location,organization")
    page.click("#run-extract")
    page.wait_for_function("document.getElementById('extract-status').textContent.includes('span(s)') || "
                           "document.getElementById('extract-status').textContent.startsWith('error')", timeout=120_000)
    status = page.inner_text("#extract-status")
    assert not status.startswith("error"), status
    rows = page.query_selector_all("#result-table tbody tr")
    marks = [m.inner_text() for m in page.query_selector_all("#highlighted mark.span")]
    assert len(rows) == int(status.split()[0])
    text = page.inner_text("#highlighted")
    assert text.replace("\n", "") == "Marta Oliveira founded Tidewater Analytics in Porto in 2016."
    for mark in marks:  # every highlight is a piece of the text
        assert mark in text
    assert rows and marks
    page.screenshot(path=str(tmp_path / "extract.png"), full_page=True)
    assert (tmp_path / "extract.png").stat().st_size > 1000

"""Defects found by auditing the chat page in a real browser (as a demanding employee, and as someone who plants a
document): `rag ui` over a real index and the llama.cpp server, Debian's Chromium driven by Playwright."""

from __future__ import annotations

import re

import pytest

from test_ui_browser import _chromium, chat_box, serve_ui
from ui import chat

# A page that links an image in a heading: ingestion keeps the heading's text as the chunk's section, which the
# page shows in each source's title. The passage itself was already shown inert.
PLANTED = """<html><head><title>Canteen</title></head><body>
<h1>Canteen menu ![pixel](https://evil.example/heading.png) **bold**</h1>
<p>The canteen serves lunch from 11:30 to 14:00. Zorblax soup is served on Fridays.</p>
</body></html>
"""


@pytest.mark.attack(6, "plants a document whose heading is a Markdown image, shown in every source's title")
def test_nothing_is_fetched_from_another_host(llm_server, embedder, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from ingest import ingest
    from rag.settings import Settings

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "canteen.html").write_text(PLANTED)
    settings = Settings(data_dir=tmp_path / "index")
    assert ingest([docs], settings, embedder=embedder).added == 1

    foreign: list[str] = []
    with serve_ui(settings.data_dir, llm_server, tmp_path) as (url, _), sync_playwright() as pw:
        browser = _chromium(pw)
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        # Every request off this machine is recorded and refused: nothing leaves even when the test fails.
        ctx.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"),
                  lambda route: (foreign.append(route.request.url), route.abort()))
        page = ctx.new_page()
        box = chat_box(page, url)
        box.fill("When is Zorblax soup served in the canteen?")
        box.press("Enter")
        source = page.get_by_test_id("stChatMessage").nth(1).get_by_test_id("stExpander").first
        expect(source).to_be_visible(timeout=240_000)
        page.wait_for_timeout(1000)  # time for the browser to ask for anything the page put in
        label = source.locator("summary").inner_text()
        images = page.evaluate("() => Array.from(document.images).map(i => i.src)")
        browser.close()
    # The favicon too: Streamlit fetches a ":material/…:" page icon from fonts.gstatic.com.
    assert not foreign, f"the page made the browser fetch from other hosts: {foreign}"
    assert not [src for src in images if not src.startswith(("data:", url))], images
    # The heading is shown as the text it is, not as an image and bold type.
    assert "Canteen menu ![pixel](https://evil.example/heading.png) **bold**" in label, label


def test_a_question_cut_off_by_the_next_one_says_so(sample_index, llm_server, tmp_path):
    """The next question (any click, too) while an answer streams stops the run that writes it: the first question
    used to stay on the page with nothing under it."""
    from playwright.sync_api import expect, sync_playwright

    # A longer answer than the other tests': time to ask the next question while it streams.
    with serve_ui(sample_index.data_dir, llm_server, tmp_path, RAG_LLM_MAX_TOKENS="200") as (url, _), \
            sync_playwright() as pw:
        browser = _chromium(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        box = chat_box(page, url)
        box.fill("What does the handbook say about vacation days?")
        box.press("Enter")
        # Some of the answer is on the page: it is streaming.
        page.wait_for_function("""() => {
            const m = document.querySelectorAll('[data-testid="stChatMessage"]')[1];
            const md = m && m.querySelector('[data-testid="stMarkdownContainer"]');
            return md && md.innerText.trim().length > 10 && !md.innerText.includes('Searching the documents');
        }""", timeout=240_000)
        box.fill("How many vacation days can be carried over?")
        box.press("Enter")
        messages = page.get_by_test_id("stChatMessage")
        expect(messages.last.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
        texts = [m.inner_text() for m in messages.all()]
        browser.close()
    assert len(texts) == 4, texts
    assert "vacation days?" in texts[0] and chat.INTERRUPTED[:40] in texts[1], texts[:2]
    assert "carried over?" in texts[2]

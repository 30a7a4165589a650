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


# Titles a user can give a conversation (or that its first question gives it): each must be shown as written.
HOSTILE_TITLES = ["![x](https://evil.example/p.png)", "<img src=x onerror=alert(1)>", ":red[x] :blue-background[y]",
                  "```js", "---", "***", "1. one", "- bullet", "# heading", ":material/delete: icon", "a :streamlit: b",
                  "&lt;b&gt; &amp;", "[link](https://evil.example/l)", "www.evil.example", "x@evil.example",
                  "$x^2$", "|a|b|"]


def _offline_llm() -> str:
    """An LLM address nothing listens on: these tests ask nothing."""
    from conftest import _free_port

    return f"http://127.0.0.1:{_free_port()}/v1"


def _private_copy(sample_index, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_index.data_dir, data, ignore=shutil.ignore_patterns("conversations.sqlite3*"))
    return data


def _seeded(sample_index, tmp_path, titles: list[str]) -> tuple[object, dict[str, str]]:
    """A private data dir whose local user has sixty older conversations and then ``titles``; their ids."""
    from rag.conversations import ConversationStore
    from rag.settings import Settings

    data = _private_copy(sample_index, tmp_path)
    store = ConversationStore.open(Settings(data_dir=data))
    for i in range(60):
        store.create("local", f"Older conversation {i}")
    ids = {title: store.create("local", title).id for title in titles}
    store.close()
    return data, ids


def test_conversation_titles_show_as_written_and_sixty_leave_the_sidebar_usable(sample_index, tmp_path):
    """The sidebar's conversation buttons rendered their titles as Markdown: ":red[x]" became an empty red span and
    "[x]", "```js" an empty code box, "---" a rule, ":material/delete:" an icon; and sixty conversations pushed
    the assistant's state, the documents and the upload box 4,000 px down the sidebar."""
    from playwright.sync_api import expect, sync_playwright

    data, ids = _seeded(sample_index, tmp_path, HOSTILE_TITLES)
    foreign: list[str] = []
    with serve_ui(data, _offline_llm(), tmp_path, copy=False) as (url, _), sync_playwright() as pw:
        browser = _chromium(pw)
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        ctx.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"),
                  lambda route: (foreign.append(route.request.url), route.abort()))
        page = ctx.new_page()
        chat_box(page, url)
        side = page.get_by_test_id("stSidebar")
        expect(side.locator(f".st-key-conv-{ids[HOSTILE_TITLES[-1]]} button").first).to_be_visible(timeout=60_000)
        shown = {}
        for title, cid in ids.items():
            button = side.locator(f".st-key-conv-{cid} button").first
            markup = button.locator("[data-testid=stMarkdownContainer]").inner_html()
            # An invisible word joiner keeps ":streamlit:" from being drawn as the logo.
            shown[title] = (button.inner_text().replace("\u2060", "").strip(),
                            re.findall(r"<(?:img|a|code|pre|hr|h\d|li|em|strong)\b|role=\"img\"|ColoredText", markup))
        headings = page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll(
            '[data-testid="stSidebarContent"] h3')).map(h => [h.innerText, h.getBoundingClientRect().top]))""")
        images = page.evaluate("() => Array.from(document.images).map(i => i.src)")
        browser.close()

    wrong = {t: s for t, s in shown.items() if s != (t, [])}
    # The assistant's state and the upload box stay within reach: the list, the headings between and the rename
    # box take ~450 px (sixty buttons took 3,900).
    list_px = headings["Language model"] - headings["Conversations"]
    assert not wrong and list_px < 600, (f"titles not shown as written (title: (shown, markup)): {wrong}",
                                         f"the conversation list takes {list_px:.0f} px")
    assert not foreign, f"the page made the browser fetch from other hosts: {foreign}"
    assert not [src for src in images if not src.startswith(("data:", url))], images


def test_a_long_title_is_kept_shortened_and_deleting_asks_first(sample_index, tmp_path):
    """A title pasted in whole that was longer than the box's 80 characters was dropped by the browser without a
    word (the old title stayed); one click on "Delete", next to "Rename", lost a conversation for good."""
    from playwright.sync_api import expect, sync_playwright

    data, _ = _seeded(sample_index, tmp_path, [])
    with serve_ui(data, _offline_llm(), tmp_path, copy=False) as (url, _), sync_playwright() as pw:
        browser = _chromium(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        chat_box(page, url)
        side = page.get_by_test_id("stSidebar")
        # One click on "Delete" does not delete: it asks.
        side.get_by_role("button", name="Older conversation 59", exact=True).click()
        title_box = side.get_by_label("Title of this conversation")
        expect(title_box).to_have_value("Older conversation 59", timeout=30_000)
        side.get_by_role("button", name="Delete").last.click()
        page.wait_for_timeout(2000)  # time for a delete to be done, as it was at once
        problems = []
        if side.get_by_role("button", name="Older conversation 59", exact=True).count() != 1:
            problems.append("one click on Delete deleted the conversation")
        else:
            page.get_by_test_id("stPopoverBody").get_by_role("button", name="Delete it").click()
            expect(side.get_by_role("button", name="Older conversation 59", exact=True)).to_have_count(
                0, timeout=30_000)

        # A long title pasted in whole is kept, shortened to what the store keeps.
        side.get_by_role("button", name="Older conversation 58", exact=True).click()
        expect(title_box).to_have_value("Older conversation 58", timeout=30_000)
        title_box.fill("Travel " * 20)
        title_box.press("Enter")
        side.get_by_role("button", name="Rename", exact=True).click()
        renamed = side.get_by_role("button", name=re.compile(r"^Travel Travel .*…$"))
        try:
            expect(renamed).to_be_visible(timeout=30_000)
        except AssertionError:
            problems.append(f"a pasted long title was dropped: the title box shows {title_box.input_value()!r}")
        browser.close()
    assert not problems, problems


def test_an_upload_a_click_interrupts_is_finished_audited_and_reported(sample_index, tmp_path):
    """A click anywhere (here "New chat") while an upload was being indexed stopped it at the progress bar: the
    files indexed so far stayed searchable with no audit record, the others were rolled back, and the page said
    nothing (the files still chosen, the counts stale)."""
    import json
    import time

    from playwright.sync_api import expect, sync_playwright

    data = _private_copy(sample_index, tmp_path)
    text = "The canteen serves Zorblax soup on Fridays, from noon until two. " * 4 + "\n"
    files = []
    for i in range(6):
        f = tmp_path / f"menu-{i}.txt"
        f.write_text(text * (900_000 // len(text)))
        files.append(f)
    with serve_ui(data, _offline_llm(), tmp_path, copy=False) as (url, _), sync_playwright() as pw:
        browser = _chromium(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        chat_box(page, url)
        side = page.get_by_test_id("stSidebar")
        side.get_by_test_id("stFileUploaderDropzoneInput").set_input_files([str(f) for f in files])
        side.get_by_role("button", name=re.compile("Add to the index")).click()
        expect(side.get_by_test_id("stProgress").get_by_text(re.compile(r"^1/6 files"))).to_be_visible(
            timeout=120_000)
        side.get_by_role("button", name="New chat", exact=True).click()
        # The click is served at once, and the page says the upload goes on...
        still = side.get_by_text("Your upload is still being indexed", exact=False)
        try:
            expect(still).to_be_visible(timeout=30_000)
            said = True
        except AssertionError:
            said = False
        # ...which is finished and audited...
        audit, deadline, uploads = data / "audit.jsonl", time.time() + 120, []
        while not uploads and time.time() < deadline:
            time.sleep(1)
            lines = audit.read_text().splitlines() if audit.exists() else []  # written at the first event
            uploads = [e for line in lines if (e := json.loads(line))["event"] == "upload"]
        assert len(uploads) == 1 and uploads[0]["extra"]["indexed"] == 6, uploads
        assert said, "nothing said the upload was still being indexed"
        # ...and then shows what came of it by itself: the result, an empty uploader, the new count.
        expect(side.get_by_text(re.compile(r"^6 added, 0 updated"))).to_be_visible(timeout=60_000)
        expect(side.get_by_test_id("stFileChip")).to_have_count(0)
        expect(side.get_by_text("11 documents", exact=False)).to_be_visible()
        browser.close()
    assert sorted(p.name for p in (data / "uploads").glob("menu-*.txt")) == [f.name for f in files]

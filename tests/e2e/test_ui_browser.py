"""End to end in a real browser: `rag ui` serving the app, Debian's Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE_DOCS, _free_port, rag_cmd, readable_by, running

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google on this closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@contextmanager
def serve_ui(src: Path, llm: str, tmp_path: Path, *, copy: bool = True, **extra: str) -> Iterator[tuple[str, Path]]:
    """`rag ui` over a copy of the data dir ``src`` (the UI holds its store's lock), or over ``src`` itself;
    yields (url, data dir)."""
    data = tmp_path / "data" if copy else src
    if copy:
        shutil.copytree(src, data)
    port = _free_port()
    env = {**os.environ, "RAG_DATA_DIR": str(data), "RAG_LLM_BASE_URL": llm,
           "RAG_LLM_CONTEXT_WINDOW": "1024", "RAG_LLM_MAX_TOKENS": "60",
           # Greedy decoding: at the default 0.1 the tiny model sometimes answers in four tokens, too few to see
           # a stream grow.
           "RAG_LLM_TEMPERATURE": "0", **extra}
    url = f"http://127.0.0.1:{port}"
    with running([str(Path(sys.executable).parent / "rag"), "ui", "--port", str(port)], tmp_path / "ui.log",
                 f"{url}/_stcore/health", 90, "rag ui", env=env):
        yield url, data


@pytest.fixture
def ui_server(sample_index, llm_server, tmp_path):
    metrics_port = _free_port()
    with serve_ui(sample_index.data_dir, llm_server, tmp_path, RAG_UI_METRICS_PORT=str(metrics_port)) as (url, _):
        yield url, metrics_port


def _chromium(pw):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does it when run as root)")
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def chat_box(page, url: str):
    """The chat input of the app at ``url``, once the page shows it (the first load imports the models)."""
    from playwright.sync_api import expect

    page.goto(url)
    box = page.get_by_test_id("stChatInput").locator("textarea")
    expect(box).to_be_visible(timeout=120_000)
    return box


def test_ask_in_the_browser_streams_an_answer_with_sources(ui_server, tmp_path):
    ui_server, metrics_port = ui_server
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = _chromium(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        box = chat_box(page, ui_server)
        expect(page.get_by_text("5 documents are searchable")).to_be_visible(timeout=60_000)

        # Record every text the answer shows, as the browser renders it (a MutationObserver, not polling, so
        # short bursts between polls are not missed).
        page.evaluate("""() => {
            window.__partials = [];
            new MutationObserver(() => {
                const msg = document.querySelectorAll('[data-testid="stChatMessage"]')[1];
                const md = msg && msg.querySelector('[data-testid="stMarkdownContainer"]');
                const text = md ? md.innerText : '';
                const seen = window.__partials;
                if (text.trim() && (!seen.length || seen[seen.length - 1] !== text)) seen.push(text);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        box.fill("What does the handbook say about vacation days?")
        box.press("Enter")

        answer = page.get_by_test_id("stChatMessage").nth(1)
        sources = answer.get_by_test_id("stExpander")
        expect(sources.first).to_be_visible(timeout=240_000)
        seen: list[str] = page.evaluate("window.__partials")
        # A streamed answer shows several partial texts, each extending the last, before the final one.
        assert len(seen) >= 3, f"the answer did not arrive in pieces: {seen}"
        assert len(seen[-1]) > len(seen[0])

        first = sources.first
        label = first.locator("summary").inner_text()
        assert re.search(r"\[\d+\] .+\.(pdf|html|md|docx|txt)", label), label
        first.locator("summary").click()
        expect(first.get_by_text(str(SAMPLE_DOCS), exact=False)).to_be_visible()
        download = first.get_by_role("button", name=re.compile("Download"))
        expect(download).to_be_visible()
        page.wait_for_timeout(500)  # the expander's opening animation, for a readable screenshot
        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)

        with page.expect_download() as dl:
            download.click()
        name = dl.value.suggested_filename
        assert (SAMPLE_DOCS / name).read_bytes() == Path(dl.value.path()).read_bytes()
        _shown_on_its_page(page, sources, tmp_path)
        # Upload from the browser: through Streamlit's upload route into the ingestion pipeline.
        note = tmp_path / "parking.md"
        note.write_text("# Parking\n\nThe code of the parking garage gate is 4711.\n")
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(note))
        page.get_by_role("button", name=re.compile("Add to the index")).click()
        expect(page.get_by_text(re.compile(r"^1 added, 0 updated"))).to_be_visible(timeout=120_000)
        expect(page.get_by_text("6 documents", exact=False)).to_be_visible()
        print(f"\nscreenshot: {tmp_path / 'ui.png'}; {len(seen)} partial answers seen; source {label!r}")
        browser.close()
    # The UI's questions are counted in the same Prometheus metrics as the API's.
    m = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert re.search(r'rag_questions_total\{endpoint="[^"]+",outcome="answered"\} 1\.0', m), m[:2000]
    assert "rag_time_to_first_token_seconds_count" in m


def test_proxy_mode_identity_from_headers_and_group_filtered_download(group_index, llm_server, tmp_path):
    """RAG_AUTH=proxy for real: the headers of the browser's requests (as oauth2-proxy would add them) decide who
    asks; alice (hr) gets sources and downloads from her groups' documents only, and the audit log names her."""
    from playwright.sync_api import expect, sync_playwright

    # With the secret a proxy adds: `rag ui` refuses proxy mode without one (anyone could send the user header).
    secret = "s3cret-between-proxy-and-app"
    with serve_ui(group_index.data_dir, llm_server, tmp_path, RAG_AUTH="proxy", RAG_AUTH_PROXY_SECRET=secret,
                  RAG_LLM_MAX_TOKENS="30") as (url, data), \
            sync_playwright() as pw:
        browser = _chromium(pw)
        stranger = browser.new_page()  # reached the app without going through the proxy
        stranger.goto(url)
        expect(stranger.get_by_text("expects to be reached through the sign-in proxy")).to_be_visible(timeout=60_000)
        expect(stranger.get_by_test_id("stChatInput")).to_have_count(0)
        expect(stranger.get_by_test_id("stTextInput")).to_have_count(0)  # never a login form in proxy mode

        ctx = browser.new_context(extra_http_headers={"X-Forwarded-User": "alice", "X-Rag-Proxy-Secret": secret},
                                  accept_downloads=True)
        page = ctx.new_page()
        page.goto(url)
        box = page.get_by_test_id("stChatInput").locator("textarea")
        expect(box).to_be_visible(timeout=120_000)
        expect(page.get_by_text("3 documents are searchable")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stSidebar").get_by_text("alice", exact=False).first).to_be_visible()
        box.fill("How do I contact the IT Service Desk?")
        box.press("Enter")
        sources = page.get_by_test_id("stChatMessage").nth(1).get_by_test_id("stExpander")
        expect(sources.first).to_be_visible(timeout=240_000)
        labels = [s.locator("summary").inner_text() for s in sources.all()]
        names = {re.search(r"\] (.+?\.(?:pdf|html|md|docx|txt))", lb).group(1) for lb in labels}
        assert names and names <= readable_by("alice"), labels

        first = sources.first
        first.locator("summary").click()
        download = first.get_by_role("button", name=re.compile("Download"))
        expect(download).to_be_visible()
        page.wait_for_timeout(600)  # a click during the expander's opening animation is lost
        with page.expect_download() as dl:
            download.click()
        name = dl.value.suggested_filename
        assert name in readable_by("alice")
        assert (SAMPLE_DOCS / name).read_bytes() == Path(dl.value.path()).read_bytes()
        browser.close()

    log = [json.loads(line) for line in (data / "audit.jsonl").read_text().splitlines()]
    events = [(e["event"], e["user"]) for e in log]
    assert ("login_failed", None) in events and ("login_ok", "alice") in events, events
    assert ("ask", "alice") in events and ("download", "alice") in events, events
    assert {Path(e["cited"][0]).name for e in log if e["event"] == "download"} == {name}


def _shown_on_its_page(page, sources, tmp_path: Path) -> None:
    """A PDF source shown in place: its page as an image, the cited passage in the highlight's marker yellow."""
    import io

    from PIL import Image
    from playwright.sync_api import expect

    pdf = sources.filter(has_text=re.compile(r"\.pdf")).first
    expect(pdf).to_be_visible()
    if not pdf.get_by_text("Show in the document").is_visible():
        pdf.locator("summary").click()
    pdf.get_by_text("Show in the document").click()
    image = pdf.get_by_test_id("stImage").locator("img")
    expect(image).to_be_visible(timeout=60_000)
    expect(pdf.get_by_text(re.compile(r"^Page \d+ of 7 · the passage is highlighted"))).to_be_visible()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle())
    shot = Image.open(io.BytesIO(image.screenshot(path=str(tmp_path / "page.png")))).convert("RGB")
    yellow = sum(1 for r, g, b in shot.getdata() if r > 200 and g > 180 and b < 190 and r - b > 60)
    share = yellow / (shot.width * shot.height)
    # A passage of a few lines on a page: a few percent of its pixels; an unhighlighted page has none.
    assert 0.005 < share < 0.5, f"highlight covers {share:.2%} of the page image ({tmp_path / 'page.png'})"


def test_a_rated_conversation_is_resumed_after_a_restart_and_its_feedback_exported(sample_index, llm_server,
                                                                                   tmp_path):
    from playwright.sync_api import expect, sync_playwright

    data = tmp_path / "data"
    # Other tests' chats over the shared index stay out of this one's conversations database.
    shutil.copytree(sample_index.data_dir, data, ignore=shutil.ignore_patterns("conversations.sqlite3*"))
    question = "How many vacation days do employees get per year?"
    comment = "It does not say how many carry over."
    with sync_playwright() as pw:
        browser = _chromium(pw)
        with serve_ui(data, llm_server, tmp_path, copy=False) as (url, _):
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            box = chat_box(page, url)
            box.fill(question)
            box.press("Enter")
            answer = page.get_by_test_id("stChatMessage").nth(1)
            expect(answer.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
            said = answer.get_by_test_id("stMarkdownContainer").first.inner_text().strip()
            # Thumbs down (an icon button; Streamlit gives each keyed element the class st-key-<key>).
            page.locator('[class*="st-key-fb-"][class*="-down"] button').first.click()
            field = page.get_by_label("A comment (optional): what was wrong or missing?")
            expect(field).to_be_visible(timeout=60_000)
            field.fill(comment)
            field.press("Enter")
            page.get_by_role("button", name="Send comment").click()
            expect(page.get_by_text("goes to the administrators", exact=False)).to_be_visible()
            page.wait_for_timeout(1000)  # the click's run stores the comment
        # A restart of the UI, and a new browser session: the conversation is on the server, not in the browser.
        with serve_ui(data, llm_server, tmp_path, copy=False) as (url, _):
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            saved = page.get_by_test_id("stSidebar").get_by_role("button", name=question)
            expect(saved).to_be_visible(timeout=120_000)
            expect(page.get_by_test_id("stChatMessage")).to_have_count(0)
            saved.click()
            messages = page.get_by_test_id("stChatMessage")
            expect(messages.nth(0)).to_contain_text(question, timeout=60_000)
            expect(messages.nth(1)).to_contain_text(said[:40])
        browser.close()
    r = rag_cmd("feedback", "export", "--json", env={"RAG_DATA_DIR": str(data)})
    assert r.returncode == 0, r.stderr
    (record,) = json.loads(r.stdout)
    assert (record["rating"], record["comment"], record["question"]) == (-1, comment, question)
    assert record["sources"] and record["model"]

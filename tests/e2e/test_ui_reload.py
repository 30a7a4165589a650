"""Staying signed in (RAG_AUTH=password) in a real browser: a reload or a second tab no longer asks for the password
again, and a sign-out ends it for every tab, including a copy of the cookie taken before (ui/remember.py)."""

from __future__ import annotations

import json

from conftest import USERS
from test_ui_browser import _chromium, serve_ui

COOKIE = "rag_ui_session"


def _signed_in(page, name: str):
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stSidebar").get_by_text(f"Signed in as {name}")).to_be_visible(timeout=120_000)
    expect(page.get_by_role("button", name="Sign in")).to_have_count(0)


def _sign_in_form(page):
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Signed in as")).to_have_count(0)


def test_a_reload_keeps_the_sign_in_until_sign_out_ends_it_everywhere(group_index, llm_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = _chromium(pw)
        with serve_ui(group_index.data_dir, llm_server, tmp_path, RAG_AUTH="password") as (url, data):
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(url)
            _sign_in_form(page)
            page.get_by_label("Name", exact=True).fill("alice")
            page.get_by_label("Password", exact=True).fill(USERS["alice"][1])
            page.get_by_role("button", name="Sign in").click()
            _signed_in(page, "alice")
            (cookie,) = [c for c in ctx.cookies() if c["name"] == COOKIE]
            assert cookie["sameSite"] == "Strict" and cookie["expires"] == -1  # a session cookie
            assert USERS["alice"][1] not in json.dumps(ctx.cookies())

            page.reload()  # was: the sign-in form again
            _signed_in(page, "alice")
            other = ctx.new_page()  # a second tab of the same browser
            other.goto(url)
            _signed_in(other, "alice")
            # Another browser (no cookie) still has to sign in.
            _sign_in_form(_page_of(browser, url))

            page.get_by_role("button", name="Sign out").click()
            _sign_in_form(page)
            assert not [c for c in ctx.cookies() if c["name"] == COOKIE and c["value"]]
            other.reload()  # the other tab's next load: signed out too
            _sign_in_form(other)
            # The cookie as it was before the sign-out, replayed from elsewhere, opens nothing.
            thief = browser.new_context()
            thief.add_cookies([{k: cookie[k] for k in ("name", "value", "domain", "path", "sameSite")}])
            stolen = thief.new_page()
            stolen.goto(url)
            _sign_in_form(stolen)
        browser.close()
    audit = [json.loads(line) for line in (data / "audit.jsonl").read_text().splitlines()]
    resumed = [r for r in audit if r["event"] == "login_ok" and (r.get("extra") or {}).get("resumed")]
    assert [r["user"] for r in resumed] == ["alice", "alice"]  # the reload and the second tab, nothing else


def _page_of(browser, url: str):
    page = browser.new_context().new_page()
    page.goto(url)
    return page

"""The README's screenshots, taken from a running chat UI (bash scripts/demo.sh), never by hand.

    .venv/bin/python scripts/screenshots.py [--url http://127.0.0.1:8501] [--out docs/screenshots]

Asks one question in Debian's Chromium, then saves the answer with its sources (answer.png) and a PDF source shown
in its document with the passage highlighted (source-in-place.png). Exits 1, saying what was missing, if the page
did not show them: it doubles as the hand check of the demo.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
QUESTION = "How many vacation days do employees get per year?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8501")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "screenshots")
    ap.add_argument("--question", default=QUESTION)
    args = ap.parse_args()
    from playwright.sync_api import Error, expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(args.url)
            box = page.get_by_test_id("stChatInput").locator("textarea")
            expect(box).to_be_visible(timeout=120_000)
            box.fill(args.question)
            box.press("Enter")
            answer = page.get_by_test_id("stChatMessage").nth(1)
            sources = answer.get_by_test_id("stExpander")
            expect(sources.first).to_be_visible(timeout=300_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "answer.png"), full_page=True)
            pdf = sources.filter(has_text=re.compile(r"\.pdf")).first
            pdf.locator("summary").click()
            pdf.get_by_text("Show in the document").click()
            image = pdf.get_by_test_id("stImage").locator("img")
            expect(image).to_be_visible(timeout=60_000)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle())
            page.add_style_tag(content='[data-testid="stBottom"] { display: none; }')  # the chat box over it
            image.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            image.screenshot(path=str(args.out / "source-in-place.png"))
        except (Error, AssertionError) as exc:
            print(f"screenshots: the page did not show what was expected: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        finally:
            browser.close()
    print(f"saved {args.out / 'answer.png'} and {args.out / 'source-in-place.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`rag preview`: a PDF page as the UI and the API show it, with a passage highlighted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag.cli.common import err, fail, out


def preview(
    path: Annotated[Path, typer.Argument(help="A PDF file.", exists=True, dir_okay=False, readable=True)],
    page: Annotated[int, typer.Option("--page", "-p", min=1, help="Page number, 1-based.")] = 1,
    highlight: Annotated[str | None, typer.Option(
        "--highlight", help="Passage to highlight where the page holds it (a chunk's text, a sentence).")] = None,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("page.png"),
    scale: Annotated[float, typer.Option(min=0.1, max=8.0, help="Pixels per PDF point.")] = 1.5,
) -> None:
    """Render page N of a PDF to PNG, highlighting a passage: the renderer of the chat UI and the API."""
    from rag.evidence.pages import PreviewError, render_page

    try:
        rendered = render_page(path.read_bytes(), page, highlight, scale=scale)
    except PreviewError as exc:
        raise fail(exc) from None
    out_file.write_bytes(rendered.png)
    found = ""
    if highlight:
        found = (f", passage found: {rendered.found:.0%} ({len(rendered.boxes)} boxes)" if rendered.boxes
                 else ", passage not found on this page")
    out.print(f"{out_file}: page {rendered.page} of {rendered.pages}, {rendered.width}x{rendered.height} px{found}")
    if highlight and not rendered.boxes:
        err.print("note: the passage is compared on letters and digits; try a sentence copied from the page")

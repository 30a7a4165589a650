"""Turn one file into text blocks that know their page and section.

Routing is by extension, never by content sniffing: unstructured's auto-detection reads ``.md`` as plain text.
- PDF: pypdfium2, page by page (measured here on 2,239 real pages: ~1,000 pages/s, keeps table rows,
  recovers broken xref; pypdf 65/s, unstructured "fast" 10-18/s and it splits tables into columns). Pages
  without a text layer are OCR'd with tesseract when installed, otherwise reported. ``pdf_parser=
  "unstructured"`` is the opt-in alternative (its "fast" strategy; "hi_res" needs a hub model, so it is off).
- HTML, Markdown, DOCX: unstructured, made offline-safe by rag.offline.
- Plain text: read here, with encoding detection (BOM, UTF-8, then charset-normalizer).
An empty result is always an error, never a silently empty document.
"""

from __future__ import annotations

import importlib
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ingest import limits
from rag import offline
from rag.errors import ParseError
from rag.settings import Settings

PDF_EXT = {".pdf"}
TEXT_EXT = {".txt", ".text"}
MD_EXT = {".md", ".markdown"}
HTML_EXT = {".html", ".htm", ".xhtml"}
DOCX_EXT = {".docx"}
SUPPORTED_EXTENSIONS = PDF_EXT | TEXT_EXT | MD_EXT | HTML_EXT | DOCX_EXT

#: Bumped when parsing output changes, so re-ingest re-parses documents whose file did not change.
PARSER_VERSION = "1"

# A page with fewer visible characters than this has no usable text layer (a scan, or only a logo).
_SCANNED_MIN_CHARS = 16


@dataclass
class Block:
    text: str
    page: int | None = None  # 1-based
    section: str | None = None
    kind: str = "text"  # text | heading | table | list


@dataclass
class ParsedDocument:
    path: Path
    blocks: list[Block]
    pages: int | None = None
    title: str | None = None
    warnings: list[str] = field(default_factory=list)


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_EXTENSIONS


def parse(path: Path, settings: Settings) -> ParsedDocument:
    """Parse one file. Raises ParseError with a human-readable reason for anything unusable."""
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ParseError(f"unsupported file type {ext or '(no extension)'}; supported: "
                         + ", ".join(sorted(SUPPORTED_EXTENSIONS)))
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror or exc}; give the account running rag read access") from exc
    if size == 0:
        raise ParseError("empty file (0 bytes)")
    if size > settings.max_file_mb * 1024 * 1024:
        raise ParseError(f"file is {size / 2**20:.0f} MB, over the {settings.max_file_mb:.0f} MB limit "
                         "(RAG_MAX_FILE_MB)")
    if ext in PDF_EXT:
        doc = _parse_pdf_unstructured(path) if settings.pdf_parser == "unstructured" else _parse_pdf(path, settings)
    elif ext in TEXT_EXT:
        doc = _parse_text(path)
    else:
        doc = _parse_unstructured(path, ext, settings)
    doc.blocks = [b for b in doc.blocks if b.text.strip()]
    if not doc.blocks:
        raise ParseError("no text could be extracted" + (f" ({'; '.join(doc.warnings)})" if doc.warnings else ""))
    return doc


# --- PDF ----------------------------------------------------------------------------------------
_NUMBERED_HEADING = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[A-Z]\.|Chapter \d+|Appendix [A-Z])\s+\S.{0,80}$")


def _norm(s: str) -> str:
    return re.sub(r"\W+", " ", s).strip().lower()


def _parse_pdf(path: Path, settings: Settings) -> ParsedDocument:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        msg = str(exc)
        if "password" in msg.lower():
            raise ParseError("encrypted PDF (a password is required to open it)") from exc
        raise ParseError(f"not a readable PDF ({msg}): it is damaged or not really a PDF; print it to a new PDF or "
                         "get a good copy") from exc
    try:
        n_pages = len(pdf)
        if n_pages == 0:
            raise ParseError("PDF has no pages")
        limits.check_pages(n_pages, settings)
        toc = _pdf_toc(pdf)
        title = _pdf_title(pdf)
        blocks: list[Block] = []
        warnings: list[str] = []
        scanned: list[int] = []
        section: str | None = None
        texts: list[str] = []
        for i in range(n_pages):
            page = pdf[i]
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_range()
                textpage.close()
            except pdfium.PdfiumError as exc:
                warnings.append(f"page {i + 1}: text extraction failed ({exc})")
                text = ""
            text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
            if len(re.sub(r"\s", "", text)) < _SCANNED_MIN_CHARS:
                scanned.append(i + 1)
                ocr = _ocr_page(page, i + 1, settings, warnings) if settings.ocr else None
                text = ocr or ""
            page.close()
            texts.append(text)
        for i, text in enumerate(_strip_running_lines(texts)):
            for seg_section, seg_text, is_heading in _split_sections(text, toc.get(i, []), bool(toc)):
                if seg_section is not None:
                    section = seg_section
                if seg_text.strip():
                    blocks.append(Block(seg_text.strip(), page=i + 1, section=section,
                                        kind="heading" if is_heading else "text"))
        if scanned:
            how = "OCR'd with tesseract" if settings.ocr and _tesseract() else (
                "skipped: no text layer; install tesseract-ocr (apt-get install tesseract-ocr) to OCR them"
                if settings.ocr else "skipped: no text layer and OCR is off (RAG_OCR=false)")
            warnings.append(f"scanned page(s) {_ranges(scanned)} {how}")
        return ParsedDocument(path, blocks, pages=n_pages, title=title, warnings=warnings)
    finally:
        pdf.close()


def _pdf_toc(pdf) -> dict[int, list[str]]:
    """Outline (bookmark) titles by 0-based page index, the most reliable headings a PDF can have."""
    out: dict[int, list[str]] = {}
    try:
        for item in pdf.get_toc(max_depth=4):
            dest = item.get_dest()
            index = dest.get_index() if dest is not None else None
            title = (item.get_title() or "").strip()
            if index is not None and title:
                out.setdefault(index, []).append(title)
    except Exception:  # a broken outline must not cost us the text
        return {}
    return out


def _pdf_title(pdf) -> str | None:
    try:
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
    except Exception:
        return None
    return title or None


def _strip_running_lines(pages: list[str]) -> list[str]:
    """Drop running headers and footers: lines at the top or bottom of most pages, digits ignored
    ("Page 3 of 20"), which would otherwise repeat in every chunk and pull unrelated pages together."""
    if len(pages) < 3:
        return pages
    edge = 3
    counts: dict[str, int] = {}
    split = [p.split("\n") for p in pages]
    for lines in split:
        keys = {re.sub(r"\d+", "#", ln.strip()) for ln in lines[:edge] + lines[-edge:] if ln.strip()}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
    running = {k for k, n in counts.items() if n >= max(3, int(0.6 * len(pages)))}
    if not running:
        return pages
    out = []
    for lines in split:
        keep = [ln for j, ln in enumerate(lines)
                if not ((j < edge or j >= len(lines) - edge) and re.sub(r"\d+", "#", ln.strip()) in running)]
        out.append("\n".join(keep))
    return out


def _split_sections(text: str, toc_titles: list[str], has_toc: bool):
    """Split a page's text where a heading starts; yield (new_section or None, text, is_heading).

    Headings come from the PDF outline when it has one (matched against the page's lines), otherwise from
    numbered lines such as "3.2 Travel approval".
    """
    lines = text.split("\n")
    wanted = {_norm(t): t for t in toc_titles}
    buf: list[str] = []
    for line in lines:
        stripped = line.strip()
        heading = None
        if stripped and len(stripped) <= 120:
            if has_toc:
                key = _norm(stripped)
                if key in wanted:
                    heading = wanted.pop(key)
            elif _NUMBERED_HEADING.match(stripped) and not stripped.endswith((".", ",", ";", ":")):
                heading = stripped
        if heading is not None:
            if buf:
                yield None, "\n".join(buf), False
                buf = []
            yield heading, stripped, True
        else:
            buf.append(line)
    if buf:
        yield None, "\n".join(buf), False
    # Outline entries whose text we could not find on the page still name the section from here on.
    for title in wanted.values():
        yield title, "", False


def _ranges(pages: list[int]) -> str:
    out, start, prev = [], pages[0], pages[0]
    for p in pages[1:] + [None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ", ".join(out)


def _tesseract() -> str | None:
    return shutil.which("tesseract")


def _ocr_page(page, number: int, settings: Settings, warnings: list[str]) -> str | None:
    exe = _tesseract()
    if exe is None:
        return None
    width, height = page.get_size()
    scale, warning = limits.ocr_scale(width, height, settings)
    if warning:
        warnings.append(f"page {number}: {warning}")
    image = page.render(scale=scale).to_pil()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    try:
        res = subprocess.run([exe, "stdin", "stdout", "-l", settings.ocr_language], input=buf.getvalue(),
                             capture_output=True, timeout=120, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return res.stdout.decode("utf-8", "replace")


def _parse_pdf_unstructured(path: Path) -> ParsedDocument:
    offline.patch_unstructured()
    try:
        from unstructured.partition.pdf import partition_pdf
    except ImportError as exc:
        raise ParseError(f"RAG_PDF_PARSER=unstructured needs its PDF extras ({exc.name} is missing): run "
                         "scripts/install.sh, or set RAG_PDF_PARSER=pypdfium2") from exc
    try:
        # "fast" only: "hi_res" needs a layout model from a hub, which this machine must never fetch.
        elements = partition_pdf(filename=str(path), strategy="fast", languages=["eng"])
    except Exception as exc:
        raise ParseError(f"unstructured could not read this PDF ({exc.__class__.__name__}: {exc})") from exc
    return _from_elements(path, elements)


# --- plain text ---------------------------------------------------------------------------------
def decode_text(data: bytes) -> str:
    """Bytes to str: BOMs first, then strict UTF-8, then charset-normalizer; binary data is refused."""
    if data.startswith(b"\xef\xbb\xbf"):
        text = data[3:].decode("utf-8", "replace")
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", "replace")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            from charset_normalizer import from_bytes

            best = from_bytes(data).best()
            if best is None:
                raise ParseError("binary file: not text in any known encoding") from None
            text = str(best)
    controls = sum(1 for c in text[:100_000] if ord(c) < 32 and c not in "\t\n\r\f\v")
    if controls > max(8, len(text[:100_000]) // 100):
        raise ParseError("binary file: contains control bytes, not text")
    return text


def _parse_text(path: Path) -> ParsedDocument:
    text = decode_text(path.read_bytes()).replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return ParsedDocument(path, [Block(p.strip()) for p in paragraphs], title=None)


def warm_up(ext: str, settings: Settings) -> None:
    """Import what parsing a file of type ``ext`` needs: unstructured's partitioners take seconds to import the
    first time (3.5 s for Markdown measured), which a worker's first such file must not be charged for."""
    module = ("unstructured.partition.html" if ext in HTML_EXT else "unstructured.partition.md" if ext in MD_EXT
              else "unstructured.partition.docx" if ext == ".docx"
              else "unstructured.partition.pdf" if ext == ".pdf" and settings.pdf_parser == "unstructured" else None)
    if module is not None:
        offline.patch_unstructured()
        importlib.import_module(module)


# --- HTML, Markdown, DOCX (unstructured) ---------------------------------------------------------
_SKIP_CATEGORIES = {"Header", "Footer", "PageBreak", "PageNumber", "Image"}


def _parse_unstructured(path: Path, ext: str, settings: Settings) -> ParsedDocument:
    offline.patch_unstructured()
    try:
        if ext in HTML_EXT:
            from unstructured.partition.html import partition_html

            elements = partition_html(filename=str(path))
        elif ext in MD_EXT:
            from unstructured.partition.md import partition_md

            # Decode ourselves: BOMs and legacy encodings are common in hand-written Markdown.
            elements = partition_md(text=decode_text(path.read_bytes()))
        else:
            from unstructured.partition.docx import partition_docx

            limits.check_zip(path, settings)
            elements = partition_docx(filename=str(path))
    except ParseError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        kind = {".docx": "DOCX"}.get(ext, ext.lstrip(".").upper())
        raise ParseError(f"not a readable {kind} file ({exc.__class__.__name__}: {reason})") from exc
    return _from_elements(path, elements)


def _table_rows(el) -> str:
    """A table as one 'cell | cell' line per row, so rows stay together for retrieval."""
    html = getattr(el.metadata, "text_as_html", None)
    if html:
        from lxml import html as lhtml

        try:
            root = lhtml.fromstring(html)
            rows = [" | ".join(c.text_content().strip() for c in tr.xpath("./th|./td"))
                    for tr in root.iter("tr")]
            rows = [r for r in rows if r.strip(" |")]
            if rows:
                return "\n".join(rows)
        except Exception:
            pass
    return el.text


def _from_elements(path: Path, elements) -> ParsedDocument:
    blocks: list[Block] = []
    headings: dict[int, str] = {}
    title = None
    pages: set[int] = set()
    for el in elements:
        cat = getattr(el, "category", "")
        if cat in _SKIP_CATEGORIES or not (el.text or "").strip():
            continue
        page = getattr(el.metadata, "page_number", None)
        if page:
            pages.add(page)
        if cat == "Title":
            depth = getattr(el.metadata, "category_depth", None) or 0
            headings = {d: t for d, t in headings.items() if d < depth}
            headings[depth] = el.text.strip()
            title = title or el.text.strip()
            blocks.append(Block(el.text.strip(), page=page, section=el.text.strip(), kind="heading"))
            continue
        section = headings[max(headings)] if headings else None
        if cat == "Table":
            blocks.append(Block(_table_rows(el), page=page, section=section, kind="table"))
        elif cat == "ListItem":
            blocks.append(Block("- " + el.text.strip(), page=page, section=section, kind="list"))
        else:
            blocks.append(Block(el.text.strip(), page=page, section=section))
    # Consecutive list items read better (and embed better) as one block.
    merged: list[Block] = []
    for b in blocks:
        if merged and b.kind == "list" and merged[-1].kind == "list" and merged[-1].section == b.section \
                and merged[-1].page == b.page:
            merged[-1].text += "\n" + b.text
        else:
            merged.append(b)
    return ParsedDocument(path, merged, pages=max(pages) if pages else None, title=title)

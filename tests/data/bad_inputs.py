"""Builds the bad-input corpus for ingestion and uploads (hardening issue, hole 5), at test time: nothing large is
checked in, and the 2 GB file is sparse (it takes no disk).

    python tests/data/bad_inputs.py OUT_DIR

``build(out)`` writes the files and returns ``{file name: what must happen}``: "indexed" for the good files, or
a short description of the reason the report must give. Each bad file attacks one resource of the parser:
memory (zip bomb, a page rendered for OCR at 20,000 x 20,000 pt), time (thousands of blank pages, each OCR'd),
the C stack (100,000 nested HTML elements), and the bookkeeping around it (a name that is not UTF-8, 0 bytes, a
2 GB file that must be refused without being read).
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

GOOD_TEXT = "The travel policy allows economy class for flights under six hours."

#: Names of the good files; each must end up indexed.
GOOD = ("good.txt", "good.md", "good.html", "good.pdf", "good.docx")

#: The bad files and a word their failure reason must contain (lower case).
BAD = {
    "zip-bomb.docx": "uncompressed",
    "huge-page.pdf": "",  # indexed-or-failed: OCR at a bounded resolution finds nothing, reported as no text
    "thousands-of-pages.pdf": "pages",
    "deeply-nested.html": "",
    "empty.txt": "empty",
    "sparse-2gb.txt": "rag_max_file_mb",
}
#: A file name that is not valid UTF-8 (bytes, as the file system stores it).
BAD_NAME = b"invalid-\xff\xfe-name.txt"


def pdf(pages: int, width: float = 612, height: float = 792, text: str | None = None) -> bytes:
    """A PDF whose pages all share one content stream (so 10,000 pages cost ~1 MB), built by hand."""
    stream = (f"BT /F1 12 Tf 72 {height - 72:g} Td ({text}) Tj ET" if text else "").encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (5 + i) for i in range(pages)), pages),
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Contents 3 0 R "
            b"/Resources << /Font << /F1 4 0 R >> >> >>" % (width, height))
    objs += [page] * pages
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def docx(path: Path, paragraphs: int = 0) -> None:
    """A real DOCX (python-docx); with ``paragraphs`` its document.xml is rewritten to hold that many empty-ish
    paragraphs, streamed into the zip so building a 1 GB bomb costs seconds and ~no memory."""
    import docx as python_docx

    d = python_docx.Document()
    d.add_paragraph(GOOD_TEXT)
    d.save(str(path))
    if not paragraphs:
        return
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename != "word/document.xml":
                dst.writestr(item, src.read(item))
                continue
            xml = src.read(item).decode()
            head, tail = xml.split("<w:body>", 1)
            with dst.open("word/document.xml", "w", force_zip64=True) as f:
                f.write((head + "<w:body>").encode())
                para = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>"
                block = para * 25_000
                for _ in range(paragraphs // 25_000):
                    f.write(block)
                f.write(tail.split("</w:body>", 1)[0].split("<w:sectPr", 1)[0].encode() + b"</w:body></w:document>")
    os.replace(tmp, path)


def build(out: Path, *, sparse: bool = True) -> dict[str, str]:
    """Write the corpus into ``out`` (created); returns {file name: "indexed" or the expected reason word}."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "good.txt").write_text(GOOD_TEXT + "\n")
    (out / "good.md").write_text("# Travel\n\n" + GOOD_TEXT + "\n")
    (out / "good.html").write_text(f"<html><body><h1>Travel</h1><p>{GOOD_TEXT}</p></body></html>")
    (out / "good.pdf").write_bytes(pdf(1, text=GOOD_TEXT))
    docx(out / "good.docx")
    # ~40 bytes of XML per paragraph, ~1,000:1 compressed: 1.2 GB of XML in ~1 MB of zip.
    docx(out / "zip-bomb.docx", paragraphs=30_000_000)
    (out / "huge-page.pdf").write_bytes(pdf(1, 20_000, 20_000))
    (out / "thousands-of-pages.pdf").write_bytes(pdf(10_000))
    (out / "deeply-nested.html").write_text("<html><body>" + "<div>" * 100_000 + GOOD_TEXT
                                            + "</div>" * 100_000 + "</body></html>")
    (out / "empty.txt").write_bytes(b"")
    if sparse:
        with open(out / "sparse-2gb.txt", "wb") as f:
            f.truncate(2 * 1024**3)
    with open(os.path.join(os.fsencode(out), BAD_NAME), "wb") as f:
        f.write(GOOD_TEXT.encode())
    expected = {name: "indexed" for name in GOOD}
    expected.update({k: v for k, v in BAD.items() if sparse or k != "sparse-2gb.txt"})
    expected[os.fsdecode(BAD_NAME)] = "utf-8"
    return expected


if __name__ == "__main__":
    for name, what in build(Path(sys.argv[1])).items():
        print(f"{name!r}: {what}")

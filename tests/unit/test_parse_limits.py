"""The checks a parser makes before expensive work (ingest/limits.py), on real files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from ingest import limits
from ingest.discovery import walk
from ingest.parsers import parse
from rag.errors import ParseError
from rag.settings import Settings

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).parents[1] / "data" / "bad_inputs.py")
assert _spec and _spec.loader
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)


def test_zip_check_passes_a_real_docx_and_refuses_a_bomb(tmp_path):
    good, bomb = tmp_path / "good.docx", tmp_path / "bomb.docx"
    bad_inputs.docx(good)
    bad_inputs.docx(bomb, paragraphs=2_000_000)  # ~80 MB of XML in well under 1 MB
    settings = Settings()
    limits.check_zip(good, settings)
    limits.check_zip(bomb, Settings(max_compression_ratio=10**6))  # under 500 MB, and the ratio is not checked
    with pytest.raises(ParseError, match="RAG_MAX_COMPRESSION_RATIO=200"):
        limits.check_zip(bomb, settings)
    with pytest.raises(ParseError, match="RAG_MAX_UNCOMPRESSED_MB=50"):
        limits.check_zip(bomb, Settings(max_uncompressed_mb=50))
    with pytest.raises(ParseError, match="zip bomb"):
        parse(bomb, settings)


def test_ocr_scale_keeps_300_dpi_for_paper_and_caps_a_giant_page():
    settings = Settings()
    scale, warning = limits.ocr_scale(595, 842, settings)  # A4
    assert scale == 300 / 72 and warning is None
    scale, warning = limits.ocr_scale(20_000, 20_000, settings)
    assert (20_000 * scale) ** 2 <= 40e6 * 1.0001 and warning and "RAG_OCR_MAX_MEGAPIXELS=40" in warning


def test_pdf_over_the_page_limit_is_refused_before_reading_pages(tmp_path):
    f = tmp_path / "many.pdf"
    f.write_bytes(bad_inputs.pdf(2, text="page"))
    with pytest.raises(ParseError, match="2 pages, over the RAG_MAX_PAGES=1 limit"):
        parse(f, Settings(max_pages=1))
    assert parse(f, Settings(max_pages=2)).pages == 2


def test_a_name_that_is_not_utf8_is_reported_not_walked(tmp_path):
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    (tmp_path / "ok.txt").write_text("fine")
    found = walk([tmp_path])
    assert [f.name for f in found.files] == ["ok.txt"]
    assert [Path(i.path).name for i in found.failed] == ["caf\\xe9.txt"]
    assert "not valid UTF-8" in found.failed[0].reason


def _running(pid: int) -> bool:
    """Alive and not a zombie (its state letter in /proc/PID/stat)."""
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_parse_worker_leaves_with_a_parent_killed_with_minus_9(tmp_path):
    """kill -9 (or the OOM killer) gives the parent no time to stop its worker: the worker, and the fork server it
    keeps alive, must not wait for work forever."""
    import signal
    import subprocess
    import sys
    import time

    note = tmp_path / "note.txt"
    note.write_text("A short note to parse.\n")
    script = tmp_path / "parent.py"
    script.write_text(f"""
import multiprocessing, sys, time
from pathlib import Path
from ingest.sandbox import ParseWorker
from rag.settings import Settings
if __name__ == "__main__":
    w = ParseWorker(Settings(data_dir={str(tmp_path / 'data')!r}))
    w.parse(Path({str(note)!r}))
    print(" ".join(str(c.pid) for c in multiprocessing.active_children()), flush=True)
    time.sleep(600)
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    children = [int(p) for p in proc.stdout.readline().split()]
    assert children, "the parse worker did not start"
    # The fork server is the worker's parent, not ours: find it before the kill.
    server = {int(open(f"/proc/{c}/stat").read().split(")")[1].split()[1]) for c in children}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    left = set(children) | server
    while left and time.time() < deadline:
        left = {p for p in left if _running(p)}
        time.sleep(0.3)
    assert not left, f"still running 15 s after their parent was killed: {sorted(left)}"

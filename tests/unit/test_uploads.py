"""Uploaded bytes become files under the uploads folder, then documents, through the normal pipeline."""

from __future__ import annotations

import pytest

from ingest.uploads import ingest_uploads, safe_name


@pytest.mark.parametrize("name, expected", [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd.txt", "passwd.txt"),
    ("C:\\Users\\ana\\Q3 plan.docx", "Q3 plan.docx"),
    ("a\x00b:c?.md", "a_b_c_.md"),
    ("..", None),
    ("   ", None),
    ("dir/", None),
    (".rag-access.toml", "rag-access.toml"),  # no hidden or bookkeeping names
    ("bad-\udcff.md", "bad-_.md"),  # bytes that were not UTF-8
    ("\u202egpj.exe", "_gpj.exe"),  # a bidi override that would show it as "exe.jpg"
    ("é" * 190 + ".md", "é" * 98 + ".md"),  # cut to 200 bytes, the type kept
])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_uploads_are_saved_and_ingested_and_bad_ones_reported(settings, embedder):
    big = settings.model_copy(update={"max_file_mb": 0.001})
    report = ingest_uploads([("notes.md", b"# Notes\n\nThe gate code is 4711.\n"), ("x.exe", b"MZ"),
                             ("..", b"?"), ("huge.txt", b"x" * 2000)], big, embedder=embedder)
    assert report.added == 1 and report.chunks >= 1
    assert (settings.uploads_dir / "notes.md").exists()
    assert sorted(f.path for f in report.failed) == ["..", "huge.txt", "x.exe"]
    assert not any(p.name.startswith(".upload-") for p in settings.uploads_dir.iterdir())  # no temp files left

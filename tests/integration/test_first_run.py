"""What a newcomer's terminal shows on the first `rag ingest`: our own lines only. The one-time ONNX export
used to print third-party warnings (TracerWarning, "`torch_dtype` is deprecated", "Saving the exported ONNX
model is heavily recommended"); they are silenced where they are emitted (rag/index/embeddings.py), not by hiding
stderr, so real errors still show."""

from __future__ import annotations

import re

from conftest import SAMPLE_DOCS, rag_cmd


def test_first_ingest_prints_only_our_own_lines(tmp_path):
    # A fresh models dir: the export runs, as on a newcomer's first ingest.
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "RAG_MODELS_DIR": str(tmp_path / "data" / "models")}
    res = rag_cmd("ingest", str(SAMPLE_DOCS), env=env)
    assert res.returncode == 0, res.stderr
    assert re.match(r"5 added, 0 updated", res.stdout), res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert any("int8 ONNX export" in ln for ln in lines), res.stderr  # the export did run here
    foreign = [ln for ln in lines if not re.match(r"(WARNING|ERROR) rag\.", ln)]
    assert not foreign, "third-party output on the first run:\n" + "\n".join(foreign)
    assert (tmp_path / "data" / "models").is_dir()


def test_verbose_still_shows_what_the_export_says(tmp_path):
    """-v is for debugging: nothing is hidden there."""
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "RAG_MODELS_DIR": str(tmp_path / "models")}
    res = rag_cmd("-v", "ingest", str(SAMPLE_DOCS / "office-faq.txt"), env=env)
    assert res.returncode == 0, res.stderr
    assert "Exporting the model to ONNX" in res.stderr or "TracerWarning" in res.stderr, res.stderr[-3000:]

"""Documents that arrive as bytes (the UI's uploads): saved under the uploads folder, then ingested like any file.

A re-upload under the same name replaces the earlier document (same path, new content hash), which is what a
user who fixes a file and uploads it again expects.

Access: uploads get exactly the ``groups`` the caller passes (``settings.default_groups`` if none);
``.rag-access.toml`` files are not read for them, not even one placed in the uploads folder: the caller (the UI,
which knows who uploads) decides, and a stray file there cannot widen or narrow that.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ingest.parsers import SUPPORTED_EXTENSIONS, is_supported
from ingest.pipeline import FileIssue, IngestReport, ProgressCallback, ingest
from rag.index.embeddings import Embedder
from rag.settings import Settings
from rag.index.store import Store

_UNSAFE = re.compile(r"[\x00-\x1f/\\:*?\"<>|]+")


def safe_name(name: str) -> str | None:
    """The file name without any directory part or characters unsafe on disk; None if nothing usable is left."""
    base = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip(" .")
    return base[:200] or None


def save_upload(name: str, data: bytes, directory: Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a file for the next ingest."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def ingest_uploads(
    files: Iterable[tuple[str, bytes]],
    settings: Settings,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
    groups: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Save (name, bytes) pairs into ``settings.uploads_dir`` and ingest them, readable by ``groups`` (see the
    module docstring); refused names are reported as failures next to the ingest's own."""
    saved: list[Path] = []
    refused: list[FileIssue] = []
    for name, data in files:
        clean = safe_name(name)
        if clean is None:
            refused.append(FileIssue(name, "no usable file name"))
        elif not is_supported(Path(clean)):
            refused.append(FileIssue(name, f"unsupported file type {Path(clean).suffix or '(none)'}; supported: "
                                           + ", ".join(sorted(SUPPORTED_EXTENSIONS))))
        elif len(data) > settings.max_file_mb * 1024 * 1024:
            refused.append(FileIssue(name, f"larger than RAG_MAX_FILE_MB={settings.max_file_mb:g}"))
        else:
            saved.append(save_upload(clean, data, settings.uploads_dir))
    report = ingest(saved, settings, groups=groups, policy_files=False, store=store, embedder=embedder,
                    progress=progress) if saved else IngestReport()
    report.failed[:0] = refused
    return report

"""Documents that arrive as bytes (the UI's uploads): saved under the uploads folder, then ingested like any file.

A re-upload under the same name replaces the earlier document (same path, new content hash), which is what a
user who fixes a file and uploads it again expects; but only once the new version is in the index: a re-upload
that fails leaves the earlier version, file and index, as it was.

Access: uploads get exactly the ``groups`` the caller passes (``settings.default_groups`` if none);
``.rag-access.toml`` files are not read for them, not even one placed in the uploads folder: the caller (the UI,
which knows who uploads) decides, and a stray file there cannot widen or narrow that.

Limits: one upload holds at most ``upload_max_files`` files and ``upload_max_batch_mb`` in all (refused as a
whole, before anything is written), each file at most ``max_file_mb``, and a folder (each signed-in user has
their own) at most ``upload_quota_mb`` of files: what does not fit is refused and said so, the rest goes in.

Crash safety. The index keys a document by its path, so a new version must be ingested under the final name;
the previous version is kept aside until the index holds the new one. Each upload of a name first journals it in
``.rag-uploads/pending/NAME/`` (a dot folder, a name ``safe_name`` never returns): a hard link to the previous
file if the index holds that file (``old``), then ``entry.json`` with its groups, written last (an entry without
it was never started and is dropped). Only then does the new file replace the final name, and the batch is
ingested. ``_settle`` then decides each journalled name, the same way after a normal run, an exception, or (at
the next upload or delete in that folder) a crash: if the index holds exactly the file on disk (same sha256),
the upload is kept; otherwise the previous file goes back and is ingested again with its groups (re-embedded:
the pipeline dropped its chunks when the new version failed), or, for a new name, the file and any record of it
are removed. The entry is deleted last, so every step can be repeated after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from ingest.parsers import SUPPORTED_EXTENSIONS, is_supported
from ingest.pipeline import FileIssue, IngestReport, ProgressCallback, file_sha256, forget, ingest
from rag.errors import RagError
from rag.index.embeddings import Embedder, get_embedder
from rag.index.store import Store, open_store
from rag.security.files import private_dir
from rag.settings import Settings

log = logging.getLogger(__name__)

#: Temp files and the journal, inside each uploads folder.
STATE_DIR = ".rag-uploads"
#: File names are cut to this many UTF-8 bytes, suffix kept: most file systems allow 255.
MAX_NAME_BYTES = 200
MB = 1024 * 1024

#: Replaced in names: path separators and what Windows refuses...
_UNSAFE_CHARS = frozenset('/\\:*?"<>|')
#: ...controls (C0, DEL, C1), invisible format characters (bidi overrides that make "gpj.exe" read "exe.jpg"),
#: lone surrogates (bytes that were not UTF-8), private use, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})

Data = bytes | BinaryIO


class UploadRefused(RagError):
    """An upload refused as a whole (too many files, too large together); nothing was written."""


def size_text(n: float) -> str:
    return f"{n / MB:.1f} MB" if n >= MB / 10 else f"{n / 1024:.1f} KB"


def safe_name(name: str) -> str | None:
    """The file name without any directory part, unsafe or invisible characters, leading dots (no hidden or
    bookkeeping files) or excess length; None if nothing usable is left."""
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    marked = "".join("\0" if c in _UNSAFE_CHARS or unicodedata.category(c) in _UNSAFE_CATEGORIES else c
                     for c in base)
    return _fit(re.sub("\0+", "_", marked).strip(" .")) or None


def _fit(name: str) -> str:
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix) > 10:
        stem, dot, suffix = name, "", ""
    room = MAX_NAME_BYTES - len((dot + suffix).encode())
    stem = stem.encode()[:room].decode(errors="ignore").rstrip(" .")
    return stem + dot + suffix if stem else ""


def uploads_folder(settings: Settings) -> Path:
    # Absolute, as the pipeline records paths: the journal compares the index's record with the file.
    return settings.uploads_dir.expanduser().absolute()


def list_uploads(settings: Settings) -> list[tuple[str, int]]:
    """(name, bytes) of the uploaded files in the folder, by name; what the quota counts."""
    folder = uploads_folder(settings)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    return sorted((e.name, e.stat(follow_symlinks=False).st_size) for e in entries
                  if not e.name.startswith(".") and e.is_file(follow_symlinks=False))


def save_upload(name: str, data: Data, directory: Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a file for the next ingest."""
    target = directory / name
    os.replace(_write_temp(data, directory), target)
    return target


def ingest_uploads(
    files: Iterable[tuple[str, Data]],
    settings: Settings,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
    groups: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Save (name, bytes or binary file) pairs into ``settings.uploads_dir`` and ingest them, readable by
    ``groups`` (see the module docstring); refused names are reported as failures next to the ingest's own.
    Raises UploadRefused if the batch as a whole is over its limits."""
    files = list(files)
    sizes = [_size(data) for _, data in files]
    _check_batch(len(files), sum(sizes), settings)
    folder = private_dir(uploads_folder(settings))
    own_store = store is None
    store = store or open_store(settings)
    try:
        embedder = embedder or get_embedder(settings)
        _settle(folder, settings, store, embedder)  # what a crash left, before the quota is counted
        saved, refused = _save_all(files, sizes, folder, settings, store)
        try:
            report = ingest(saved, settings, groups=groups, policy_files=False, store=store, embedder=embedder,
                            progress=progress) if saved else IngestReport()
        except BaseException:
            _settle_or_log(folder, settings, store, embedder)
            raise
        kept = _settle(folder, settings, store, embedder)
    finally:
        if own_store:
            store.close()
    for issue in report.failed:
        if Path(issue.path).name in kept:
            issue.reason += "; your earlier upload of this name is kept"
    report.failed[:0] = refused
    return report


def delete_upload(name: str, settings: Settings, *, store: Store, embedder: Embedder | None = None) -> bool:
    """Take an uploaded file out of the index, then off the disk. False if there is no such upload."""
    folder = uploads_folder(settings)
    _settle(folder, settings, store, embedder)
    if safe_name(name) != name or not (folder / name).is_file():
        return False
    forget([folder / name], settings, store=store)  # the record first: a crash leaves a file, not a ghost
    (folder / name).unlink(missing_ok=True)
    return True


def _check_batch(count: int, total: int, settings: Settings) -> None:
    if count > settings.upload_max_files:
        raise UploadRefused(f"{count} files in one upload; at most {settings.upload_max_files} are taken at once "
                            "(RAG_UPLOAD_MAX_FILES). Upload them in smaller groups, or ask an administrator to "
                            "raise RAG_UPLOAD_MAX_FILES.")
    if total > settings.upload_max_batch_mb * MB:
        raise UploadRefused(f"These files add up to {size_text(total)}; one upload takes at most "
                            f"{settings.upload_max_batch_mb:g} MB (RAG_UPLOAD_MAX_BATCH_MB). Upload them in smaller "
                            "groups, or ask an administrator to raise RAG_UPLOAD_MAX_BATCH_MB.")


def _refusal(name: str, clean: str | None, size: int, settings: Settings) -> str | None:
    if clean is None:
        return "no usable file name"
    if not is_supported(Path(clean)):
        return (f"unsupported file type {Path(clean).suffix or '(none)'}; supported: "
                + ", ".join(sorted(SUPPORTED_EXTENSIONS)))
    if size > settings.max_file_mb * MB:
        return (f"{size_text(size)}, larger than RAG_MAX_FILE_MB={settings.max_file_mb:g}; ask an administrator "
                "to raise RAG_MAX_FILE_MB if such files belong in the index")
    return None


def _save_all(files: list[tuple[str, Data]], sizes: list[int], folder: Path, settings: Settings,
              store: Store) -> tuple[list[Path], list[FileIssue]]:
    """Journal and place every acceptable file; the others are refused, saying why."""
    quota = settings.upload_quota_mb * MB
    stored = dict(list_uploads(settings))
    saved: dict[str, Path] = {}
    refused: list[FileIssue] = []
    for (name, data), size in zip(files, sizes, strict=True):
        clean = safe_name(name)
        reason = _refusal(name, clean, size, settings)
        if reason is None and clean in saved:  # a second journal entry would drop the first one's backup
            reason = f"another file in this upload is also saved as {clean}; upload it on its own"
        elif reason is None and clean is not None:
            after = sum(stored.values()) - stored.get(clean, 0) + size
            if quota and after > quota:
                reason = (f"your uploads would take {size_text(after)}, over your {size_text(quota)} "
                          "(RAG_UPLOAD_QUOTA_MB); delete some of your uploaded documents, or ask an administrator "
                          "to raise RAG_UPLOAD_QUOTA_MB")
            else:
                try:
                    saved[clean] = _place(clean, data, folder, store)
                    stored[clean] = size
                except OSError as exc:
                    reason = f"could not be saved: {exc.strerror or exc}; nothing was kept"
        if reason is not None:
            refused.append(FileIssue(name, reason))
    return list(saved.values()), refused


def _place(name: str, data: Data, folder: Path, store: Store) -> Path:
    """Journal the upload of ``name`` (module docstring), then put the new file under its name."""
    tmp = _write_temp(data, folder)
    try:
        final = folder / name
        entry = folder / STATE_DIR / "pending" / name
        shutil.rmtree(entry, ignore_errors=True)  # settled already; whatever is left was never started
        entry.mkdir(parents=True)
        previous = store.get_document(str(final))
        meta: dict = {"groups": None}
        if previous is not None and _same_file(previous.sha256, final):
            _copy(final, entry / "old", folder)
            meta["groups"] = list(previous.groups)
        os.replace(_write_temp(json.dumps(meta).encode(), folder), entry / "entry.json")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _settle(folder: Path, settings: Settings, store: Store, embedder: Embedder | None) -> set[str]:
    """Decide every journalled upload in ``folder`` (module docstring); the names whose previous version was
    put back."""
    pending = folder / STATE_DIR / "pending"
    entries = sorted(pending.iterdir()) if pending.is_dir() else []
    restore: dict[tuple[str, ...], list[Path]] = {}
    for entry in entries:
        final = folder / entry.name
        meta = _read_meta(entry)
        record = store.get_document(str(final))
        if meta is None or (record is not None and _same_file(record.sha256, final)):
            continue
        if (entry / "old").is_file() and meta["groups"] is not None:
            if not _same_file(file_sha256(entry / "old"), final):
                _copy(entry / "old", final, folder)
            restore.setdefault(tuple(meta["groups"]), []).append(final)
        else:
            final.unlink(missing_ok=True)
            if record is not None:
                forget([final], settings, store=store)
    for groups, paths in restore.items():
        ingest(paths, settings, groups=list(groups), policy_files=False, store=store,
               embedder=embedder or get_embedder(settings))
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    return {p.name for paths in restore.values() for p in paths}


def _settle_or_log(folder: Path, settings: Settings, store: Store, embedder: Embedder | None) -> None:
    try:
        _settle(folder, settings, store, embedder)
    except Exception:  # the journal stays: the next upload or delete in this folder settles it
        log.exception("uploads in %s not settled after an interrupted ingest", folder)


def _read_meta(entry: Path) -> dict | None:
    try:
        return json.loads((entry / "entry.json").read_bytes())
    except (OSError, ValueError):
        return None


def _same_file(sha256: str, path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and file_sha256(path) == sha256
    except OSError:
        return False


def _size(data: Data) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    pos = data.seek(0, os.SEEK_END)
    data.seek(0)
    return pos


def _write_temp(data: Data, folder: Path) -> Path:
    """The bytes in a new file under the state folder (same file system as ``folder``: renames are atomic)."""
    state = folder / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                data.seek(0)
                shutil.copyfileobj(data, f, MB)  # a file object is streamed, not copied into memory again
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _copy(src: Path, dst: Path, folder: Path) -> None:
    """``dst`` becomes a copy of ``src`` at once: a hard link where the file system has them (no space used)."""
    tmp = folder / STATE_DIR / f"copy-{secrets.token_hex(8)}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)

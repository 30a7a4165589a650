"""Taking documents out of the index: at the start of a run (what is gone from an ingested folder, what an
interrupted run left half-written, what lost chunks since it was recorded), and on request (``rag forget``).

A run removes only what looks deleted on purpose: a root that is gone or empty, or that lost more of its documents
than RAG_INGEST_MAX_REMOVE allows, keeps them all and is reported, since an unmounted share or a failed sync looks
the same to a scheduled ingest."""

from __future__ import annotations

import os
import shlex
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from ingest.discovery import absolute_path
from ingest.report import FileIssue, IngestReport
from ingest.writers import sweep_orphans
from rag.index.store import DocumentRecord, Store, open_store
from rag.settings import RemovalLimit, Settings


def sweep(store: Store, registry: dict[str, DocumentRecord], files: list[Path], roots: list[Path],
           report: IngestReport, unreadable: Sequence[Path] = (), *, limit: RemovalLimit) -> set[str]:
    """Before anything is parsed: remove what is gone, and what an interrupted run left half-written; returns
    the documents of this run that lack chunks or have extra ones, to be redone. Nothing under an
    ``unreadable`` folder is removed: its files could not be listed, not found missing; nor anything of a root
    that lost more of its documents than ``limit`` lets one run remove."""
    current = {str(f) for f in files}
    vanished = _vanished_roots(registry, roots, current)
    report.failed += [FileIssue(str(r), _kept_reason(r, n)) for r, n in vanished.items()]
    report.failed += [FileIssue(str(r), "no such file or directory")
                      for r in roots if r not in vanished and not r.exists()]
    for root, paths in _gone(registry, roots, current, [*unreadable, *vanished]).items():
        held = _held(registry, root)
        if not limit.allows(len(paths), held):
            report.failed.append(FileIssue(str(root), _over_limit_reason(root, paths, held, limit, registry)))
            continue
        for path in paths:
            remove_document(store, path, report)
            report.removed += 1
            del registry[path]

    # Chunks without a registry record were left by an interrupted run (the file, if still here, is redone), or
    # are being written by a concurrent one (spared).
    counts = sweep_orphans(store, registry)
    damaged = {p for p in current if p in registry and counts.get(p, 0) != registry[p].chunks}
    report.warnings += [FileIssue(p, f"{counts.get(p, 0)} chunks in the index instead of {registry[p].chunks}: "
                                  "ingested again") for p in sorted(damaged)]
    return damaged


def _gone(registry: dict[str, DocumentRecord], roots: list[Path], current: set[str],
          spared: list[Path]) -> dict[Path, list[str]]:
    """The documents whose files disappeared from an ingested folder, by the root they were ingested under."""
    gone: dict[Path, list[str]] = {}
    for path in registry:
        if path in current or any(_under(path, s) for s in spared):
            continue
        root = next((r for r in roots if _under(path, r)), None)
        if root is None:
            continue
        if regular_file(path) and not _behind_link(root, path):
            continue
        gone.setdefault(root, []).append(path)
    return gone


def _over_limit_reason(root: Path, paths: list[str], held: int, limit: RemovalLimit,
                       registry: dict[str, DocumentRecord]) -> str:
    """Why a root's vanished documents stay, and the three ways to take them out when they went on purpose."""
    gone = "all" if len(paths) == held else f"{len(paths):,}"
    allowed = f"{limit} of its documents" if limit.percent is not None else f"{limit} documents"
    where = Path(os.path.commonpath(paths))
    # `rag forget` takes out everything under a path: name a folder only if nothing that stays is under it.
    if _held(registry, where) == len(paths):
        forget = f"`rag forget {shlex.quote(str(where))}` takes out just them"
    else:
        forget = f"`rag forget PATH` takes out a file or folder that went (one: {shlex.quote(min(paths))})"
    return (f"{gone} of its {held:,} documents ({100 * len(paths) // held}%) are gone, over the limit of {allowed} "
            "that one run may remove (RAG_INGEST_MAX_REMOVE, or --max-remove): they stay in the index, since a "
            "half-mounted share or an interrupted copy looks the same. If they were deleted on purpose, "
            f"`rag ingest {shlex.quote(str(root))} --max-remove 100%` removes them (give it the --groups of this run, "
            f"if any), a higher RAG_INGEST_MAX_REMOVE lets every run remove more, and {forget}")


def _held(registry: dict[str, DocumentRecord], folder: Path) -> int:
    """How many documents of the index come from under ``folder``."""
    return sum(1 for path in registry if _under(path, folder))


def _vanished_roots(registry: dict[str, DocumentRecord], roots: list[Path], current: set[str]) -> dict[Path, int]:
    """Roots that are gone, or empty folders, while the index holds documents from them, with how many. That is
    what an unmounted share or a failed sync looks like to a scheduled ingest, so their documents stay: removing
    every document of a root takes an explicit ``rag forget``. A folder that still holds anything (unsupported
    files, links) is not empty: its documents follow it as usual."""
    vanished = {}
    for root in roots:
        if any(_under(f, root) for f in current) or not _empty_or_gone(root):
            continue
        held = _held(registry, root)
        if held:
            vanished[root] = held
    return vanished


def _empty_or_gone(root: Path) -> bool:
    if not os.path.lexists(root):
        return True
    if root.is_symlink() or not root.is_dir():
        return False
    try:
        with os.scandir(root) as entries:
            return not any(not e.name.startswith(".") for e in entries)  # hidden entries are never walked
    except OSError:
        return False  # unreadable: the walk has reported it, and what is under it stays anyway


def _kept_reason(root: Path, held: int) -> str:
    what = "no such file or directory" if not os.path.lexists(root) else "the folder is empty"
    docs = "its document stays" if held == 1 else f"its {held} documents stay"
    return (f"{what}: {docs} in the index, since an unmounted share or a failed copy looks the same; if it was "
            f"removed on purpose, `rag forget {root}` takes {'it' if held == 1 else 'them'} out")


def _under(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(str(folder) + os.sep)


def _behind_link(root: Path, path: str) -> bool:
    """Whether a folder between ``root`` and the file became a symbolic link: the walk does not enter it, so
    what was ingested through it is gone from the folder, whatever the link points at."""
    folder = root
    for part in Path(path).relative_to(root).parent.parts:
        folder = folder / part
        if folder.is_symlink():
            return True
    return False


def regular_file(path: str) -> bool:
    # Not exists(): a document whose file was swapped for a symbolic link is gone, whatever the link points at.
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_document(store: Store, path: str, report: IngestReport) -> None:
    """Take a document out of the index: its record first (so a crash here leaves it "not ingested"), then
    its chunks."""
    store.delete_document(path)
    report.chunks_removed += store.count_chunks(path)
    store.delete_chunks(path)


def forget(paths: Sequence[str | Path], settings: Settings, *, store: Store | None = None) -> IngestReport:
    """Remove documents (files, or everything under folders) from the index; the files are not touched."""
    started = time.perf_counter()
    report = IngestReport()
    own = store is None
    store = store or open_store(settings)
    try:
        registry = store.documents()
        for raw in paths:
            p = str(absolute_path(raw))
            matches = [k for k in registry if k == p or k.startswith(p.rstrip(os.sep) + os.sep)]
            if not matches:
                report.failed.append(FileIssue(p, "not in the index"))
            for k in matches:
                remove_document(store, k, report)
                report.removed += 1
    finally:
        store.flush()
        if own:
            store.close()
    report.seconds = time.perf_counter() - started
    return report

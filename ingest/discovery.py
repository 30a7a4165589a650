"""What a run ingests: the given paths walked into files, each with its ingest root, and each file's groups.

Access is resolved here, before the pipeline writes anything, so that a broken ``.rag-access.toml`` stops the run
with nothing half-done (the rules are in ingest/pipeline.py's docstring and rag/security/access.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.parsers import is_supported
from ingest.report import FileIssue
from rag.security.access import POLICY_FILE, AccessPolicy


@dataclass
class Discovered:
    files: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # folders given (or paths that are gone)
    skipped: list[FileIssue] = field(default_factory=list)
    failed: list[FileIssue] = field(default_factory=list)
    #: Each file's ingest root: the folder given that contains it (the outermost if several do), or the file
    #: itself if it was given on its own.
    file_roots: dict[Path, Path] = field(default_factory=dict)
    #: Every .rag-access.toml seen in the walked folders (all are checked, even those no document needs).
    policy_files: list[Path] = field(default_factory=list)
    #: Folders the walk could not list: what was ingested from them stays (reported as failed), since their
    #: files are not known to be gone.
    unreadable: list[Path] = field(default_factory=list)

    def add(self, f: Path, root: Path) -> None:
        if not _utf8(f):
            # Its name goes into chunk ids, payloads and reports, which are UTF-8: one such file used to stop the
            # whole run (UnicodeEncodeError) after the files before it were half-stored.
            self.failed.append(FileIssue(printable(f), "file name is not valid UTF-8 (shown with \\x escapes): "
                                                       "rename it, e.g. with `convmv -f latin1 -t utf8`"))
            return
        old = self.file_roots.get(f)
        if old is None:
            self.files.append(f)
            self.file_roots[f] = root
        elif len(root_folder(root).parts) < len(root_folder(old).parts):
            self.file_roots[f] = root  # the outermost root reads the most policy files, whatever the order given


def _utf8(p: Path) -> bool:
    try:
        str(p).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(p: Path) -> str:
    """A path whose name holds bytes that are not UTF-8 (Python keeps them as surrogates), with those bytes
    escaped, so it can be printed and stored."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path], list[FileIssue], list[FileIssue]]:
    """Expand the given paths into (files, folder roots, skipped, failed); ``walk`` says more."""
    d = walk(paths)
    return d.files, d.roots, d.skipped, d.failed


def absolute_path(raw: str | Path) -> Path:
    """A path as the index records it: absolute and normalised (``a/../a`` is ``a``), so one file has one name
    however it is given; links are left as they are (a link is not its target, see :func:`walk`)."""
    return Path(os.path.abspath(Path(raw).expanduser()))


def root_folder(root: Path) -> Path:
    return root if root.is_dir() else root.parent


def walk(paths: Iterable[str | Path]) -> Discovered:
    """Expand the given paths into files, each with its ingest root.

    Hidden files and folders (.git, .rag, ...) are not walked. An unsupported file inside a folder is
    skipped (reported, not an error); one named explicitly is a failure. Access policy files are never
    documents: inside folders they are collected silently, named explicitly they are skipped with a reason.

    Symbolic links inside folders are never followed, only reported as skipped (``_link_issue`` says why); a
    file named explicitly that is a link stands for its target, whose own folder's policy then applies.
    """
    d = Discovered()
    for raw in paths:
        p = absolute_path(raw)
        if p.is_symlink() and p.is_file():
            # The link's folder must not lend its groups to what it points at: the target is what is ingested.
            p = Path(os.path.realpath(p))
        if p.is_dir():
            d.roots.append(p)
            _walk_folder(p, d)
        elif p.is_file():
            if p.name == POLICY_FILE:
                d.policy_files.append(p)
                d.skipped.append(FileIssue(str(p), "access policy file: it decides who may read the documents "
                                                   "beside it, it is not a document"))
            elif is_supported(p):
                d.add(p, p)
            else:
                d.failed.append(FileIssue(str(p), f"unsupported file type {p.suffix.lower() or '(none)'}"))
        else:
            d.roots.append(p)  # gone: whatever was ingested from it is removed by the pipeline
    return d


def _walk_folder(root: Path, d: Discovered) -> None:
    real_root = Path(os.path.realpath(root))  # the root itself may be a link (the user named it): compare targets

    def unreadable(exc: OSError) -> None:
        folder = Path(exc.filename)
        d.unreadable.append(folder)
        d.failed.append(FileIssue(str(folder), f"cannot read folder: {exc.strerror}; what was ingested from it "
                                               "stays in the index as it was: fix its permissions and run again"))

    # followlinks=False: linked folders are listed, not entered
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        kept = []
        for dn in sorted(dirnames):
            if dn.startswith("."):
                continue
            if (Path(dirpath) / dn).is_symlink():
                d.skipped.append(_link_issue(Path(dirpath) / dn, root, real_root))
            else:
                kept.append(dn)
        dirnames[:] = kept
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if name == POLICY_FILE:
                d.policy_files.append(f)
                continue
            if name.startswith("."):
                continue
            if f.is_symlink():
                d.skipped.append(_link_issue(f, root, real_root))
                continue
            if not f.is_file():
                continue
            if is_supported(f):
                d.add(f, root)
            else:
                d.skipped.append(FileIssue(str(f), f"unsupported file type {f.suffix.lower() or '(none)'}"))


def _link_issue(link: Path, root: Path, real_root: Path) -> FileIssue:
    """Why a link found in a walk is not followed. Groups come from where a document sits, so following a link
    would give its target the groups of the link's folder (``public/notes.txt -> ../finance/salaries.txt``
    published to everyone); and a target outside the root is not something the user asked to ingest at all
    (``-> ~/.ssh/id_rsa``, ``-> users.toml``). Not following also means no loops."""
    target = Path(os.path.realpath(link))
    try:
        inside = root / target.relative_to(real_root)
    except ValueError:
        return FileIssue(str(link), f"symbolic link to {target}, which is outside the ingested folder {root}: "
                                    "not followed; ingest the target's own folder if it should be searchable")
    return FileIssue(str(link), f"symbolic link to {inside}, inside the ingested folder {root}: not followed; the "
                                "target is ingested (or not) under its own path, with its own access rules")


def resolve_access(found: Discovered, policy: AccessPolicy) -> tuple[dict[str, dict], list[FileIssue]]:
    """Every file's access record (``AccessPolicy.record``) and warnings about policy files that are not applied
    because they sit above the ingest root. Reads policy files only: raises AccessPolicyError (file and line)
    before the caller writes anything."""
    if not policy.reads_policy_files:
        return {str(f): policy.record(f, found.file_roots[f]) for f in found.files}, []
    for pf in found.policy_files:
        policy.load(pf.parent)
    access = {str(f): policy.record(f, found.file_roots[f]) for f in found.files}
    warnings: list[FileIssue] = []
    seen: set[Path] = set()
    for folder in sorted({root_folder(r) for r in set(found.file_roots.values())}):
        for above in folder.parents:
            pf = above / POLICY_FILE
            if pf not in seen and pf.is_file():
                seen.add(pf)
                warnings.append(FileIssue(str(pf), f"not applied to the documents under {folder}: policy files "
                                                   f"above the folder (or file) given to ingest are not read; "
                                                   + _how_to_apply(above, folder)))
    return access, warnings


def _how_to_apply(above: Path, folder: Path) -> str:
    hidden = next((above.joinpath(*folder.relative_to(above).parts[:i + 1])
                   for i, part in enumerate(folder.relative_to(above).parts) if part.startswith(".")), None)
    if hidden is None:
        return f"ingest {above} to apply it"
    # Ingesting `above` would not reach these documents at all: hidden folders are never walked.
    return (f"ingesting {above} would not apply it, since its walk skips the hidden folder {hidden}: ingest "
            f"{hidden} itself with a policy file of its own there, or move the documents out of it")

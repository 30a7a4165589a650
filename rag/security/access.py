"""Which groups may read a document: policy files in the ingested tree, then ``--groups``, then the default.

A ``.rag-access.toml`` may sit in any folder of an ingested tree::

    # Groups for everything in this folder and below that no rule here (or deeper file) decides.
    default = ["staff"]

    [[rule]]
    match = "finance/**"              # a glob relative to this file's folder
    groups = ["finance", "admins"]

    [[rule]]
    match = ["**/*salar*", "hr/"]     # one pattern or a list
    groups = ["hr"]

Resolution of a document ``D`` ingested from root ``R`` (precisely; tests/test_access.py pins it):

1. Folders are visited from ``D``'s own folder up to ``R`` inclusive; folders above ``R`` are never read.
2. In each folder that has a policy file, the rules are tried in file order and the **last** matching rule
   decides (as in .gitignore: put general rules first, exceptions after). If no rule matches and the file has
   ``default``, the default decides. Otherwise the next folder up is asked. So the nearest file that has an
   answer wins, and a deeper file replaces (never merges with) what files above would say.
3. No file decides: the run's ``--groups`` if given, else ``Settings.default_groups`` (``["admins"]``).
   ``--groups`` is a fallback, not an override: a policy file is reviewed configuration and a command-line
   flag must not silently widen (or narrow) what it says.

Patterns are matched against ``D``'s path relative to the policy file's folder, ``/``-separated, case-sensitive,
and always anchored there (``*.pdf`` is only that folder's PDFs; write ``**/*.pdf`` for any depth):
``*`` and ``?`` never cross ``/``; ``[abc]``/``[!abc]`` are character classes (``[*]`` is a literal ``*``);
``**`` as a whole segment is zero or more folders (``**/x``, ``a/**/x``), and as the last segment one or more
segments, i.e. everything inside (``finance/**``). A trailing ``/`` means the same (``finance/``), a leading
``/`` is ignored. ``**`` inside a segment (``a**``) is just ``*``.

Groups are literal names. ``everyone`` is a group every signed-in user implicitly has, and ``user:NAME`` is
NAME's personal group (rag.security.auth adds both), so the store filter stays a plain "any of the user's groups". An
empty list (``groups = []``) means no one, not even admins. Nothing bypasses this: ``admins`` is an ordinary
group that documents without a rule get by default.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rag.errors import AccessPolicyError
from rag.security.globs import compile_pattern, glob_match
from rag.types import check_group

if TYPE_CHECKING:
    from rag.settings import Settings

POLICY_FILE = ".rag-access.toml"
#: Every authenticated identity has this group: documents meant for all signed-in users list it.
EVERYONE = "everyone"
#: ``user:alice`` is alice's personal group (her own uploads, say); only rag.security.auth grants it.
USER_GROUP_PREFIX = "user:"

_FORMAT_HINT = 'e.g. default = ["staff"] and [[rule]] match = "finance/**" groups = ["finance"]'


def normalize_groups(groups: Sequence[str], where: str = "") -> tuple[str, ...]:
    """Sorted and without duplicates, so two group lists compare equal whatever order they were written in."""
    if isinstance(groups, str):
        raise ValueError(f'{where}groups must be a list, e.g. ["finance"], not the string {groups!r}')
    return tuple(sorted({check_group(g, where) for g in groups}))


def split_groups(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (command-line flags and headers)."""
    return [g.strip() for g in (text or "").split(",") if g.strip()]


# --- policy files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    patterns: tuple[str, ...]  # as written, for explanations
    compiled: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]
    line: int | None  # of its [[rule]] header; None if written as an inline table

    def matches(self, rel: Sequence[str]) -> bool:
        return any(glob_match(c, rel) for c in self.compiled)


def _check_writers(path: Path, st: os.stat_result) -> None:
    """Whoever can write a policy file can give themselves every document under it: only the user running the
    ingest (or root) may."""
    if not hasattr(os, "geteuid"):  # no POSIX owners (Windows)
        return
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise AccessPolicyError(f"{path}: owned by uid {st.st_uid}, who can rewrite who may read the documents "
                                f"under it; if its rules are right, `chown {me} {path}` (or root), then ingest again")
    if st.st_mode & 0o022:
        raise AccessPolicyError(f"{path}: writable by {'others' if st.st_mode & 0o002 else 'its group'}, who can "
                                f"rewrite who may read the documents under it; check its rules, `chmod go-w {path}`,"
                                " then ingest again")


@dataclass(frozen=True)
class PolicyFile:
    path: Path
    default: tuple[str, ...] | None
    rules: tuple[Rule, ...]
    sha256: str

    @classmethod
    def load(cls, path: Path) -> PolicyFile:
        try:
            # Never through a link: whoever can write the folder could point one at any TOML file the ingest user
            # owns (another folder's policy granting everyone), and the owner check would pass on the target.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                _check_writers(path, os.fstat(f.fileno()))  # the stat of what is read, not of a swapped-in file
                raw = f.read()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AccessPolicyError(f"{path}: a symbolic link; an access policy must be the file itself (a link "
                                        "lets whoever can write its folder borrow another policy); replace the link "
                                        "with a copy of the file, then ingest again") from None
            raise AccessPolicyError(f"cannot read the access policy {path}: {exc.strerror or exc}; fix its "
                                    "permissions or remove it, then ingest again") from None
        try:
            text = raw.decode("utf-8")
            data = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            raise AccessPolicyError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                                    "UTF-8 and ingest again") from None
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            # "Unclosed array (at end of document)": point at the last line, where the reader gave up.
            end = "(at end of document)" in str(exc)
            line = m.group(1) if m else str(max(1, len(text.splitlines()))) if end else None
            where = f"{path}:{line}" if line else str(path)
            msg = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(exc))
            col = f", column {m.group(2)}" if m else ", at the end of the file" if end else ""
            raise AccessPolicyError(f"{where}: invalid TOML ({msg}{col}); fix the access policy ({_FORMAT_HINT}) "
                                    "and ingest again") from None
        lines = text.splitlines()
        # tomllib gives values, not positions: find the lines by their headers to point errors and explanations.
        headers = [i + 1 for i, ln in enumerate(lines) if re.match(r"\s*\[\[\s*rule\s*\]\]", ln)]
        default_line = next((i + 1 for i, ln in enumerate(lines) if re.match(r"\s*default\s*=", ln)), None)
        return cls._from_data(path, data, headers, default_line, hashlib.sha256(raw).hexdigest())

    @classmethod
    def _from_data(cls, path: Path, data: dict, headers: list[int], default_line: int | None,
                   sha: str) -> PolicyFile:
        def fail(line: int | None, msg: str) -> AccessPolicyError:
            return AccessPolicyError(f"{path}{f':{line}' if line else ''}: {msg}; fix the access policy "
                                     f"({_FORMAT_HINT}) and ingest again")

        unknown = sorted(set(data) - {"default", "rule"})
        if unknown:
            # A typo such as [[rules]] or defaults= would otherwise be ignored and documents get the wrong groups.
            raise fail(None, f"unknown key(s) {', '.join(map(repr, unknown))} (only 'default' and [[rule]] exist)")
        default = None
        if "default" in data:
            try:
                default = normalize_groups(_as_list(data["default"], what="default"), "default: ")
            except ValueError as exc:
                raise fail(default_line, str(exc)) from None
        raw_rules = data.get("rule", [])
        if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
            raise fail(None, "'rule' must be an array of tables: [[rule]] with match and groups")
        lines: list[int | None] = list(headers) if len(headers) == len(raw_rules) else [None] * len(raw_rules)
        rules = []
        for i, (r, line) in enumerate(zip(raw_rules, lines, strict=True), 1):
            extra = sorted(set(r) - {"match", "groups"})
            if extra:
                raise fail(line, f"rule {i}: unknown key(s) {', '.join(map(repr, extra))} (a rule has match and "
                                 "groups)")
            if "match" not in r or "groups" not in r:
                raise fail(line, f"rule {i}: needs both match = \"glob\" and groups = [...]")
            try:
                pats = _as_list(r["match"], what="match")
                if not pats or not all(isinstance(p, str) for p in pats):
                    raise ValueError("match must be a glob or a list of globs")
                compiled = tuple(compile_pattern(p) for p in pats)
                groups = normalize_groups(_as_list(r["groups"]))
            except ValueError as exc:
                raise fail(line, f"rule {i}: {exc}") from None
            rules.append(Rule(tuple(pats), compiled, groups, line))
        return cls(path, default, tuple(rules), sha)

    def decide(self, rel: Sequence[str]) -> tuple[tuple[str, ...], Rule | None] | None:
        """(groups, deciding rule or None for the default) for a path relative to this file's folder, or None
        when this file has no answer and the folder above is asked."""
        for rule in reversed(self.rules):  # the last match wins
            if rule.matches(rel):
                return rule.groups, rule
        if self.default is not None:
            return self.default, None
        return None


def _as_list(value: object, what: str = "groups") -> list:
    if isinstance(value, str) and what == "match":
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, e.g. [\"finance\"], not {value!r}")
    return value


# --- resolution -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """The groups a document gets, and why (for `rag ingest`/`rag status` to explain)."""

    groups: tuple[str, ...]
    decided_by: Literal["rule", "default", "groups-option", "settings-default", "given"]
    policy_file: Path | None = None
    rule: tuple[str, ...] | None = None  # the deciding rule's patterns
    line: int | None = None

    def explain(self) -> str:
        if self.decided_by == "rule":
            where = f"{self.policy_file}:{self.line}" if self.line else str(self.policy_file)
            return f"rule match={_show(self.rule)} in {where}"
        if self.decided_by == "default":
            return f"default of {self.policy_file}"
        if self.decided_by == "groups-option":
            return "no policy rule covers it: --groups of this ingest"
        if self.decided_by == "given":
            return "set by the caller (uploads); policy files do not apply"
        return "no policy rule covers it: RAG_DEFAULT_GROUPS"

    def to_dict(self) -> dict:
        return {"groups": list(self.groups), "decided_by": self.decided_by, "reason": self.explain(),
                "policy_file": str(self.policy_file) if self.policy_file else None,
                "rule": list(self.rule) if self.rule else None, "line": self.line}


def _show(patterns: tuple[str, ...] | None) -> str:
    pats = patterns or ()
    return json.dumps(pats[0]) if len(pats) == 1 else json.dumps(list(pats))


class AccessPolicy:
    """Resolves documents' groups for one ingest run.

    Policy files are read once and cached, so use a new object per run (a file edited meanwhile is then seen).
    """

    def __init__(self, fallback: Sequence[str], *, fallback_is_option: bool = False,
                 filename: str | None = POLICY_FILE) -> None:
        self.fallback = normalize_groups(fallback, "fallback groups: ")
        self._fallback_kind: Literal["groups-option", "settings-default", "given"] = (
            "groups-option" if fallback_is_option else "settings-default")
        self.filename = filename
        self._files: dict[Path, PolicyFile | None] = {}
        # (folder, root) -> the folder's policy files up to root, nearest first, each with its depth below root:
        # every document of a folder shares them.
        self._chains: dict[tuple[Path, Path], tuple[tuple[PolicyFile, int], ...]] = {}

    @classmethod
    def for_run(cls, settings: Settings, groups: Sequence[str] | None = None) -> AccessPolicy:
        """The policy of one ``rag ingest``: ``groups`` (from --groups) is the fallback if given, else
        ``settings.default_groups``."""
        if groups:
            return cls(groups, fallback_is_option=True)
        return cls(settings.default_groups)

    @classmethod
    def fixed(cls, settings: Settings, groups: Sequence[str] | None = None) -> AccessPolicy:
        """No policy files: every document gets ``groups``, or ``settings.default_groups`` if none are given
        (uploads: the caller decides who may read what it uploads)."""
        policy = cls(groups if groups else settings.default_groups, filename=None)
        policy._fallback_kind = "given"
        return policy

    @classmethod
    def from_record(cls, record: dict) -> AccessPolicy:
        """The policy as the ingest that wrote ``record`` (see ``record``) would apply it today: to tell whether
        a stored decision is still current (`rag access`)."""
        policy = cls(record.get("fallback") or [], filename=POLICY_FILE if record.get("policy_files", True) else None)
        policy._fallback_kind = record.get("fallback_kind") or "settings-default"
        return policy

    def record(self, path: str | Path, root: str | Path) -> dict:
        """What a document's registry record keeps about its access: ``Access.to_dict()`` (groups, what decided
        them, why) plus the ingest root, the fallback of the run and the policy signature, so that `rag access`
        can say later whether the policy changed since."""
        chain = self._chain(Path(path), Path(root))
        d = self._decide(chain).to_dict()
        d.update(root=str(Path(root).absolute()), signature=self._signature(chain), fallback=list(self.fallback),
                 fallback_kind=self._fallback_kind, policy_files=self.reads_policy_files)
        return d

    @property
    def reads_policy_files(self) -> bool:
        return self.filename is not None

    def load(self, folder: str | Path) -> PolicyFile | None:
        """The policy file of ``folder`` (parsed once per run), or None; AccessPolicyError if it is broken."""
        return self._file_in(Path(folder).absolute())

    def _file_in(self, folder: Path) -> PolicyFile | None:
        if self.filename is None:
            return None
        if folder not in self._files:
            p = folder / self.filename
            self._files[folder] = PolicyFile.load(p) if p.is_file() or p.is_symlink() else None
        return self._files[folder]

    def _chain(self, path: Path, root: Path) -> list[tuple[PolicyFile, tuple[str, ...]]]:
        """Policy files from the document's folder up to ``root``, nearest first, each with the document's
        path relative to that file's folder."""
        path, root = Path(path).absolute(), Path(root).absolute()
        if root == path or root.is_file():
            root = root.parent
        try:
            rel = path.relative_to(root).parts
        except ValueError:
            raise ValueError(f"{path} is not inside the ingest root {root}") from None
        if not rel:
            raise ValueError(f"{path} is the ingest root itself, not a document inside it")
        return [(pf, rel[depth:]) for pf, depth in self._folder_chain(path.parent, root, rel[:-1])]

    def _folder_chain(self, folder: Path, root: Path,
                      folder_rel: tuple[str, ...]) -> tuple[tuple[PolicyFile, int], ...]:
        key = (folder, root)
        chain = self._chains.get(key)
        if chain is None:
            found = []
            for depth in range(len(folder_rel), -1, -1):
                pf = self._file_in(root.joinpath(*folder_rel[:depth]))
                if pf is not None:
                    found.append((pf, depth))
            chain = self._chains[key] = tuple(found)
        return chain

    def resolve(self, path: str | Path, root: str | Path) -> Access:
        """The groups of the document ``path`` ingested from ``root`` (a folder, or the file itself when a file
        is ingested on its own: then only its own folder's policy file applies)."""
        return self._decide(self._chain(Path(path), Path(root)))

    def _decide(self, chain: list[tuple[PolicyFile, tuple[str, ...]]]) -> Access:
        for pf, rel in chain:
            decided = pf.decide(rel)
            if decided is not None:
                groups, rule = decided
                if rule is None:
                    return Access(groups, "default", pf.path)
                return Access(groups, "rule", pf.path, rule.patterns, rule.line)
        return Access(self.fallback, self._fallback_kind)

    def policy_files(self, path: str | Path, root: str | Path) -> list[Path]:
        """Every policy file that can affect ``path``, nearest first."""
        return [pf.path for pf, _ in self._chain(Path(path), Path(root))]

    def signature(self, path: str | Path, root: str | Path) -> str:
        """Changes whenever anything that decides ``path``'s groups may have changed: a policy file on its chain
        (edited, added or removed) or the fallback. Cheap after the first call per folder; compare it with the
        one stored at the last ingest to know when to re-resolve (then ``Store.set_groups``, no re-embedding)."""
        return self._signature(self._chain(Path(path), Path(root)))

    def _signature(self, chain: list[tuple[PolicyFile, tuple[str, ...]]]) -> str:
        parts = [[str(pf.path), pf.sha256] for pf, _ in chain]
        parts.append(["fallback", *self.fallback])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

"""Append-only audit log: one JSON object per line, for who asked what and which documents answered.

Each line::

    {"time": "2025-01-31T09:00:00.123Z", "event": "ask", "user": "alice", "question": "...",
     "cited": ["/docs/travel.pdf"], "endpoint": "http://llm:8080/v1", "model": "qwen", "latency_ms": 812.4,
     "extra": {}}

``event`` is one of ask, search, download, login_ok, login_failed, logout, upload, mcp_tool (others may be added;
readers should accept unknown kinds). Calls through the MCP server (rag.api.mcp) carry ``"via": "mcp"`` and the
tool in ``extra``; mcp_tool is for its calls that read no document text (list_collections, resources/list). Every key is always present (null when not applicable) so the log is easy to query with jq.

Several processes (the UI, the API, `rag ask`) may write at once. Why not ``logging.handlers.
RotatingFileHandler``: it is per process, so two processes rotate independently, renaming each other's file
away and overwriting backups, and a process keeps writing into a file another has already rotated. Instead
every line is one ``write()`` to a descriptor opened with O_APPEND (on a local filesystem the kernel appends each
write whole, never interleaved), the file is reopened for each line (so a rotation, ours or logrotate's, takes
effect at once), and only rotation takes a lock (filelock), re-checking the size once it holds it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock, Timeout

from rag.errors import AuditLogError

if TYPE_CHECKING:
    from rag.settings import Settings

EVENTS = ("ask", "search", "download", "login_ok", "login_failed", "logout", "upload", "mcp_tool")
MAX_QUESTION_CHARS = 20_000  # a pasted book must not make one line megabytes long
_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|authorization|cookie|credential)", re.I)


def safe_endpoint(url: str | None) -> str | None:
    """The endpoint as it may be logged: scheme, host, port and path only. User info (``user:key@``), the query
    and the fragment are dropped — that is where credentials hide in URLs (``?api_key=…``)."""
    if url is None:
        return None
    try:
        u = urlsplit(url.strip())
        if u.scheme and u.netloc:
            host = u.hostname or ""
            if ":" in host:  # IPv6 literal
                host = f"[{host}]"
            netloc = host + (f":{u.port}" if u.port is not None else "")
            return urlunsplit((u.scheme, netloc, u.path, "", ""))
    except ValueError:  # e.g. a port that is not a number
        pass
    # Not a URL we understand: keep only what cannot be a credential-bearing part.
    s = re.sub(r"^[^/]*@", "", url.strip().split("?", 1)[0].split("#", 1)[0])
    return re.sub(r"//[^/]*@", "//", s)


def _scrub(value: Any) -> Any:
    """``extra`` comes from callers: drop anything filed under a name that suggests a secret."""
    if isinstance(value, Mapping):
        return {str(k): ("[redacted]" if _SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def _utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class AuditLog:
    def __init__(self, path: str | Path, max_bytes: int = 50 * 1024 * 1024, backups: int = 10,
                 lock_timeout: float = 10.0, *, required: bool = False) -> None:
        if backups < 1:
            raise ValueError("backups must be at least 1")
        #: Callers must not deliver what could not be recorded (RAG_AUDIT_REQUIRED); else they log and go on.
        self.required = required
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes  # 0 = never rotate
        self.backups = backups
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog | None:
        """None when auditing is off (RAG_AUDIT_LOG set to an empty value)."""
        path = settings.audit_log
        if path is None:
            if settings.audit_required:
                raise AuditLogError("RAG_AUDIT_REQUIRED=true but RAG_AUDIT_LOG is empty (auditing off): name a log "
                                    "file, or unset RAG_AUDIT_REQUIRED")
            return None
        return cls(path, int(settings.audit_max_mb * 1024 * 1024), settings.audit_backups,
                   required=settings.audit_required)

    def record(self, event: str, *, user: str | None, question: str | None = None, cited: Sequence[str] = (),
               endpoint: str | None = None, model: str | None = None, latency_ms: float | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Append one event and return what was written. ``endpoint`` is sanitized here (safe_endpoint), so
        callers may pass ``settings.llm_base_url`` as it is; never pass API keys, in ``extra`` or anywhere."""
        q = question
        extra_d = dict(_scrub(extra or {}))
        if q is not None and len(q) > MAX_QUESTION_CHARS:
            extra_d["question_chars"] = len(q)
            q = q[:MAX_QUESTION_CHARS]
        entry = {
            "time": _utc_now(),
            "event": event,
            "user": user[:256] if user is not None else None,  # a failed login's name is whatever was typed
            "question": q,
            "cited": [str(c) for c in cited],
            "endpoint": safe_endpoint(endpoint),
            "model": model,
            "latency_ms": round(float(latency_ms), 1) if latency_ms is not None else None,
            "extra": extra_d,
        }
        self.write(entry)
        return entry

    def write(self, entry: Mapping[str, Any]) -> None:
        # ensure_ascii: a line is pure ASCII, so no reader ever meets a split multi-byte character.
        data = (json.dumps(entry, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode()
        try:
            self._append(data)
        except OSError as exc:
            off = ("unset RAG_AUDIT_REQUIRED to answer unaudited" if self.required
                   else "set RAG_AUDIT_LOG= (empty) to turn auditing off")
            raise AuditLogError(f"cannot write the audit log {self.path}: {exc.strerror or exc}; fix the folder's "
                                f"permissions or free space, or {off}") from None
        except Timeout:
            raise AuditLogError(f"the audit log lock {self._lock.lock_file} is held for too long; is another "
                                "process stuck? Remove the lock file only if no rag process runs") from None

    def _open(self) -> int:
        # 0600: questions are often as confidential as the documents they are about.
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
            if not self.max_bytes or size == 0 or size + len(data) <= self.max_bytes:
                _write_all(fd, data)
                return
        finally:
            os.close(fd)
        with self._lock:
            fd = self._open()  # another process may have rotated meanwhile: look again
            try:
                size = os.fstat(fd).st_size
                if size > 0 and size + len(data) > self.max_bytes:
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = self._open()
                _write_all(fd, data)
            finally:
                if fd >= 0:
                    os.close(fd)

    def _rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ... -> .N; the oldest (.N) is overwritten. Caller holds the lock."""
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def files(self) -> list[Path]:
        """The log and its backups that exist, newest first."""
        cands = [self.path] + [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.backups + 1)]
        return [p for p in cands if p.exists()]


def _write_all(fd: int, data: bytes) -> None:
    # One write() is the atomic unit; a short write only happens on a full disk or a signal, and then finishing
    # the line beats leaving half a JSON object.
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

"""What an ingest run tells its caller: the report at the end, and the progress on the way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class FileIssue:
    path: str
    reason: str


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    access_updated: int = 0  # unchanged documents whose groups changed: payload updated, nothing re-embedded
    chunks: int = 0  # chunks written in this run
    chunks_removed: int = 0
    pages: int = 0
    files_seen: int = 0
    bytes_parsed: int = 0
    failed: list[FileIssue] = field(default_factory=list)
    skipped: list[FileIssue] = field(default_factory=list)
    warnings: list[FileIssue] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    #: The dense index after the run (``IndexState.to_dict()``): its kind, why, and how much of it is built.
    index: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass
class Progress:
    files_total: int
    bytes_total: int
    files_done: int = 0
    bytes_done: int = 0
    chunks_done: int = 0
    current: str | None = None


ProgressCallback = Callable[[Progress], None]

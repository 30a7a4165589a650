"""The domain objects that cross the stages, in one place: what retrieval hands to packing, what a chat turn is,
what an answer and its citations are, and what a group name may be. Only the standard library here, so every stage can import it without importing
another stage.

The chunk payload is the one schema both sides of the index share: ingestion writes it (ingest/pipeline.py),
retrieval and the MCP server read it (rag/retrieval/retriever.py, rag/api/mcp/schemas.py); Qdrant stores it as a dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: packing is a stage, and this module imports none
    from rag.generation.packing import Packing


@dataclass(frozen=True)
class ChunkPayload:
    """What the index keeps with each chunk's vectors: its text, where it comes from, and who may read it.

    Stored as a plain dict (:meth:`to_dict`); :meth:`from_dict` reads one back, tolerating keys it does not know
    and filling keys an older index lacks with their defaults."""

    text: str
    path: str
    source: str = ""  # the file name, shown in citations
    title: str | None = None
    doc_sha256: str = ""
    chunk_index: int = 0
    chunk_count: int = 0
    page_start: int | None = None
    page_end: int | None = None
    section: str | None = None
    char_start: int = 0  # the chunk's span in the document's extracted text
    char_end: int = 0
    token_count: int = 0
    groups: list[str] = field(default_factory=list)  # who may read it: any of these (the store filter)
    writer: str = ""  # the ingest run that stored it (ingest/writers.py): a running one's chunks are never swept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ChunkPayload:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in payload.items() if k in known}
        data.setdefault("text", "")
        data.setdefault("path", "")
        if not data.get("source"):
            data["source"] = str(data["path"]).rsplit("/", 1)[-1]
        return cls(**data)


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk, as the retriever hands it to the packer."""

    id: str
    text: str
    score: float
    path: str
    source: str
    page_start: int | None = None
    page_end: int | None = None
    section: str | None = None
    chunk_index: int = 0
    char_start: int = 0
    char_end: int = 0
    trimmed: bool = False  # cut to fill the last room in the window; its text ends with TRIM_MARK
    rerank_score: float | None = None  # set when a reranker ordered the passages; ``score`` stays the cosine


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


HistoryLike = Iterable[Message | tuple[str, str] | dict]


def as_messages(history: HistoryLike | None) -> list[Message]:
    """Accept our Messages, (role, content) pairs, {"role", "content"} dicts or LangChain messages (by their
    ``type`` and ``content``; this module imports no LangChain)."""
    out: list[Message] = []
    for m in history or ():
        if isinstance(m, Message):
            role, content = m.role, m.content
        elif isinstance(m, dict):
            role, content = m["role"], m["content"]
        elif isinstance(m, tuple):
            role, content = m
        else:
            role, content = getattr(m, "type", "user"), m.content
        role = {"human": "user", "ai": "assistant"}.get(role, role)
        if role not in ("user", "assistant") or not str(content).strip():
            continue
        out.append(Message(role, str(content).strip()))
    return out


@dataclass(frozen=True)
class Sampling:
    """One request's say in how its answer is generated; None leaves the operator's ``RAG_LLM_*`` setting.

    ``max_tokens`` can only lower ``RAG_LLM_MAX_TOKENS`` (the operator's budget per answer): a larger value is
    capped there, and a smaller one leaves more of the window to sources. A developer's own chat model
    (``RAG.chain(model=...)``) is configured by the developer, so it ignores these."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [(self.max_tokens, "max_tokens", "at least 1", lambda v: v >= 1),
                  (self.temperature, "temperature", "0 to 2", lambda v: 0 <= v <= 2),
                  (self.top_p, "top_p", "above 0, at most 1", lambda v: 0 < v <= 1)]
        bad = [f"{name}={value!r} ({allowed})" for value, name, allowed, ok in checks
               if value is not None and not ok(value)]
        if bad:
            raise ValueError("sampling: " + "; ".join(bad))

    @classmethod
    def of(cls, value: Sampling | dict | None) -> Sampling:
        """Accept a Sampling, a dict of its fields, or None (the settings decide everything)."""
        if value is None:
            return cls()
        if isinstance(value, Sampling):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"got a {type(value).__name__}")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"sampling: unknown {', '.join(unknown)} (known: max_tokens, temperature, top_p, seed)")
        return cls(**value)

    def answer_tokens(self, budget: int) -> int:
        """The answer's token limit under the operator's ``budget`` (``RAG_LLM_MAX_TOKENS``)."""
        return min(self.max_tokens or budget, budget)


def check_group(name: object, where: str = "") -> str:
    """A valid group name, or an error. Commas are refused because groups travel comma-separated (--groups,
    X-Forwarded-Groups); control characters because they end up in logs and headers."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}group names must be non-empty strings, not {name!r}")
    if name != name.strip() or "," in name or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name) > 256:
        raise ValueError(f"{where}invalid group name {name!r}: no commas, control characters or surrounding "
                         "spaces, at most 256 characters")
    return name




@dataclass
class Citation:
    """A numbered source of an answer: what [n] points to."""

    n: int
    path: str
    source: str
    page: int | None
    page_end: int | None
    section: str | None
    snippet: str
    score: float
    cited: bool  # the answer actually cites [n]
    trimmed: bool = False
    text: str = ""  # everything of this source the model was given
    # Its span in the document's extracted text: where RAG.source_text finds it again.
    char_start: int = 0
    char_end: int = 0
    # How well the sentences citing it are backed by its text (rag/generation/support.py); None: not cited, or
    # the check is off.
    support: float | None = None
    verdict: str | None = None  # "supported" | "unsupported" | None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "path": self.path, "source": self.source, "page": self.page, "page_end": self.page_end,
                "section": self.section, "snippet": self.snippet, "score": round(self.score, 4),
                "cited": self.cited, "trimmed": self.trimmed, "text": self.text, "char_start": self.char_start,
                "char_end": self.char_end, "support": None if self.support is None else round(self.support, 4),
                "verdict": self.verdict}


@dataclass
class Answer:
    """One answered question: the text the user saw, its numbered sources, and how it was produced."""

    question: str
    standalone_question: str
    text: str
    sources: list[Citation]
    refused: bool
    usage: dict[str, Any]
    timings: dict[str, float | None]
    packing: Packing | None
    model: str | None
    removed_citations: list[int] = field(default_factory=list)
    retries: int = 0
    endpoint: str | None = None  # base URL of the endpoint that answered
    failovers: list[str] = field(default_factory=list)  # why endpoints tried before it failed
    #: Why the model stopped, as the server said: "stop", or "length" when RAG_LLM_MAX_TOKENS cut the answer off.
    finish_reason: str = "stop"

    @property
    def cited(self) -> list[Citation]:
        return [c for c in self.sources if c.cited]

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "question": self.question,
            "standalone_question": self.standalone_question,
            "refused": self.refused,
            "sources": [c.to_dict() for c in self.sources],
            "removed_citations": self.removed_citations,
            "usage": self.usage,
            "timings": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.timings.items()},
            "packing": self.packing.summary() if self.packing else None,
            "model": self.model,
            "retries": self.retries,
            "endpoint": self.endpoint,
            "failovers": self.failovers,
            "finish_reason": self.finish_reason,
        }

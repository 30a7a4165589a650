"""Cited answers: condense a follow-up -> retrieve -> pack into the window -> prompt -> LLM (streamed) -> citations.

``RAG`` is the API (``RAG.from_settings().ask(question, history=...)``); the CLI and UI call it. Its pieces are
public so a developer can build a different chain: ``rag.retriever`` (a LangChain ``BaseRetriever``),
``rag.pack(...)``, ``rag.messages(...)``, ``rag.llm()``, and the whole thing as a LangChain ``Runnable``
(``rag.as_runnable()``) that streams text.

The prompt that is sent is counted as a whole before sending (the server renders its chat template where it can,
otherwise the measured template overhead is added to exact content counts) and repacked if it is over. If the
server still answers "maximum context length is N", the window is learned from the error, the prompt repacked
and sent once more; the retry is logged and reported in ``Answer.retries``.

With several endpoints (``RAG_LLM_ENDPOINTS``, rag/llm/pool.py) each request takes one from the pool and packs for
*its* window. If it is unreachable, times out or fails (HTTP 5xx) before the first token, the whole request
goes to the next endpoint (``Answer.failovers`` says which failed); after the first token a failure is an
error, since a second endpoint would repeat part of an answer already shown.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.ops import metrics
from rag.security.audit import AuditLog
from rag.security.auth import Identity
from rag.generation.citations import CitationFilter, snippet
from rag.index.embeddings import Embedder
from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.llm.failures import EndpointError, api_message, is_failover_error, is_timeout, parse_overflow
from rag.errors import AccessDenied, RagError
from rag.generation.packing import Packing, format_source, join_sources, pack
from rag.types import Message, Passage
from rag.llm.pool import EndpointPool, Lease
from rag.generation.prompts import CONDENSE_PROMPT, CONDENSE_SYSTEM, NO_ANSWER, SYSTEM_PROMPT, user_message
from rag.retrieval.retriever import Retrieved, Retriever, StoreRetriever
from rag.settings import Settings
from rag.index.store import Store

log = logging.getLogger(__name__)

#: Room kept for a standalone question.
_CONDENSE_MAX_TOKENS = 96


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


    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "path": self.path, "source": self.source, "page": self.page, "page_end": self.page_end,
                "section": self.section, "snippet": self.snippet, "score": round(self.score, 4),
                "cited": self.cited, "trimmed": self.trimmed, "text": self.text}


@dataclass
class Answer:
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
        }


class AnswerStream:
    """Iterate for the answer's text as it arrives; ``.answer`` holds the full :class:`Answer` afterwards."""

    def __init__(self, gen: Iterator[str]) -> None:
        self._gen = gen
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        self.answer = yield from self._gen
        return self.answer

    def text(self) -> Answer:
        """Consume the stream; return the answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer


HistoryLike = Iterable[Message | tuple[str, str] | dict]


def as_messages(history: HistoryLike | None) -> list[Message]:
    """Accept our Messages, (role, content) pairs, {"role", "content"} dicts or LangChain messages."""
    out: list[Message] = []
    for m in history or ():
        if isinstance(m, Message):
            role, content = m.role, m.content
        elif isinstance(m, dict):
            role, content = m["role"], m["content"]
        elif isinstance(m, tuple):
            role, content = m
        else:  # LangChain BaseMessage
            role, content = getattr(m, "type", "user"), m.content
        role = {"human": "user", "ai": "assistant"}.get(role, role)
        if role not in ("user", "assistant") or not str(content).strip():
            continue
        out.append(Message(role, str(content).strip()))
    return out


class _FailOver(Exception):
    """An endpoint failed before the first token; the request goes to the next one."""


@dataclass
class _Started:
    """A generation under way on one endpoint: the first chunk is in."""

    lease: Lease
    packing: Packing
    cite: CitationFilter
    chunks: Iterator[Any]
    first: Any
    t_send: float
    retries: int


class RAG:
    """The retrieval-augmented answerer over one store, one embedder and one LLM endpoint (or a pool of them)."""

    def __init__(self, settings: Settings, *, store: Store, embedder: Embedder,
                 endpoint: OpenAICompatibleEndpoint | EndpointPool, system_prompt: str = SYSTEM_PROMPT,
                 audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self.store = store
        self.embedder = embedder
        self.pool = (endpoint if isinstance(endpoint, EndpointPool)
                     else EndpointPool.from_settings(settings, endpoints=[endpoint]))
        self.system_prompt = system_prompt.strip()
        self.retriever_core = Retriever.from_settings(settings, store, embedder)
        self._owns_store = False
        self._owns_pool = True

    @property
    def endpoint(self) -> OpenAICompatibleEndpoint:
        """The (first) endpoint of the best priority; requests take theirs from :attr:`pool`."""
        return self.pool.primary

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> RAG:
        from rag.index.embeddings import get_embedder
        from rag.index.store import open_store

        settings = settings or Settings()
        store = open_store(settings)
        try:
            kwargs.setdefault("audit", AuditLog.from_settings(settings))
            rag = cls(settings, store=store, embedder=get_embedder(settings),
                      endpoint=EndpointPool.from_settings(settings), **kwargs)
        except BaseException:
            store.close()
            raise
        rag._owns_store = True
        return rag

    def with_settings(self, **changes: Any) -> RAG:
        """A RAG over the same open store and embedder with some settings changed (threshold, top_k, LLM...).
        The embedded store allows one opener per process, so variants share it; closing one leaves it open."""
        settings = self.settings.model_copy(update=changes)
        llm_keys = {"llm_base_url", "llm_api_key", "llm_model", "llm_context_window", "llm_timeout", "llm_endpoints",
                    "llm_routing", "llm_failure_threshold", "llm_cooldown_s", "llm_health_interval_s"}
        new_pool = bool(llm_keys & changes.keys())
        rag = RAG(settings, store=self.store, embedder=self.embedder,
                  endpoint=EndpointPool.from_settings(settings) if new_pool else self.pool,
                  system_prompt=self.system_prompt, audit=self.audit)
        rag._owns_pool = new_pool  # a shared pool (its counters, breakers, discovery) stays open
        return rag

    def close(self) -> None:
        if self._owns_store:
            self.store.close()
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> RAG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pieces ---------------------------------------------------------------------------------
    @property
    def retriever(self) -> StoreRetriever:
        """LangChain ``BaseRetriever`` over the store (no threshold: LangChain users filter themselves)."""
        return StoreRetriever(retriever=self.retriever_core)

    def llm(self, *, max_tokens: int | None = None, streaming: bool = True, context_window: int | None = None,
            endpoint: OpenAICompatibleEndpoint | None = None):
        """A LangChain chat model on ``endpoint`` (default: :attr:`endpoint`)."""
        return (endpoint or self.endpoint).chat_model(max_tokens=max_tokens or self.settings.llm_max_tokens,
                                                      temperature=self.settings.llm_temperature,
                                                      streaming=streaming, context_window=context_window)

    def retrieve(self, query: str, *, groups: Sequence[str] | None = None, user: Identity | None = None) -> Retrieved:
        """``user`` (or ``groups``) restricts retrieval, inside the store query, to what they may read."""
        return self.retriever_core.retrieve(query, groups=_groups(user, groups))

    def readable(self, path: str, *, user: Identity | None = None, groups: Sequence[str] | None = None) -> bool:
        """Whether ``path`` is an indexed document that ``user`` may read (source viewers, downloads)."""
        record = self.store.get_document(path)
        allowed = _groups(user, groups)
        return record is not None and (allowed is None or bool(set(record.groups) & set(allowed)))

    def read_source(self, path: str, *, user: Identity | None = None, groups: Sequence[str] | None = None) -> bytes:
        """The original file of an indexed document, for downloads. Refuses anything that is not an indexed
        document the user may read, in the same words whether it exists or not (no probing for names)."""
        if not self.readable(path, user=user, groups=groups):
            raise AccessDenied(f"{Path(path).name}: no such document, or you may not read it")
        self._audit("download", user, cited=[path])
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise RagError(f"{path} is in the index but cannot be read any more ({exc.strerror}); "
                           "ingest its folder again to update the index") from None

    def condense(self, question: str, history: HistoryLike | None) -> str:
        """A follow-up rewritten as a standalone question, for retrieval. Without history: the question."""
        hist = as_messages(history)
        if not hist or not self.settings.condense_questions:
            return question
        for lease in self.pool.attempts():
            with lease:
                ep = lease.endpoint
                window = ep.info.context_window or 2048
                limit = window - _CONDENSE_MAX_TOKENS
                turns = [f"{'User' if m.role == 'user' else 'Assistant'}: {snippet(m.content, 600)}"
                         for m in hist[-6:]]
                while True:  # oldest turns go first until the condense prompt fits
                    prompt = CONDENSE_PROMPT.format(history="\n".join(turns), question=question)
                    msgs = [("system", CONDENSE_SYSTEM), ("user", prompt)]
                    if not turns or ep.prompt_tokens(msgs) <= limit:
                        break
                    turns.pop(0)
                try:
                    out = self.llm(max_tokens=_CONDENSE_MAX_TOKENS, streaming=False, endpoint=ep).invoke(
                        _lc_messages(msgs))
                except Exception as exc:  # noqa: BLE001 - every client failure becomes one actionable line
                    failure = self._failure(lease, exc)
                    if isinstance(failure, _FailOver):
                        continue
                    raise failure from exc
                lease.ok()
                break
        standalone = _clean_standalone(str(out.content), question)
        if question.rstrip().endswith("?") and not standalone.endswith("?"):
            # Small models answer instead of rewriting; the last user turn plus the follow-up retrieves better
            # than an answer (or a bare "And for Berlin?") does.
            last = next((m.content for m in reversed(hist) if m.role == "user"), "")
            log.info("condensing produced %r, not a question; retrieving with the last question added", standalone)
            return f"{snippet(last, 300)} {question}".strip()
        return standalone

    def pack(self, passages: Sequence[Passage], question: str, history: HistoryLike | None = None, *,
             context_window: int | None = None, extra_margin: int = 0,
             endpoint: OpenAICompatibleEndpoint | None = None) -> Packing:
        """Pack passages and history for ``question`` and verify the whole prompt's token count, in the
        tokenizer and window of ``endpoint`` (default: :attr:`endpoint`).

        The result's ``prompt_tokens`` is the count of the exact prompt :meth:`messages` builds from it."""
        hist = as_messages(history)
        ep = endpoint or self.endpoint
        window = context_window or ep.info.context_window or 2048
        max_out = self.settings.llm_max_tokens
        if max_out >= window - 64:
            raise RagError(f"RAG_LLM_MAX_TOKENS={max_out} leaves no room in the model's {window}-token context; "
                           f"lower it (a quarter of the window is typical)")
        overhead = ep.chat_overhead()
        margin = ep.margin + extra_margin
        limit = window - max_out
        for _ in range(4):
            packing = pack(
                passages, question=user_message("", question, with_sources=True), system_prompt=self.system_prompt,
                history=hist, context_window=window, max_output_tokens=max_out, counter=ep,
                template_overhead=overhead.base, turn_overhead=overhead.per_turn, margin=margin,
                history_share=self.settings.history_share,
            )
            if packing.budget <= 0:
                raise RagError(f"the question is too long for the model's {window}-token context window "
                               f"({max_out} of it reserved for the answer); shorten it or lower RAG_LLM_MAX_TOKENS")
            total = ep.prompt_tokens(self.messages(packing, question))
            if total <= limit:
                packing.prompt_tokens = total
                return packing
            # Pieces counted apart can tokenize differently once joined: repack into a budget that is smaller
            # than what this packing used by the excess (a larger margin alone may leave the same packing).
            log.info("packed prompt counts %d tokens, %d over the limit; repacking", total, total - limit)
            margin += (total - limit) + max(packing.budget - packing.used, 0)
        raise RagError(f"could not pack a prompt under {limit} tokens; set RAG_LLM_CONTEXT_WINDOW lower")

    def messages(self, packing: Packing, question: str) -> list[tuple[str, str]]:
        """The chat messages for a packing, as (role, content): system, kept history, then sources and question."""
        block = join_sources([format_source(s.n, s) for s in packing.sources])
        return [("system", self.system_prompt), *((m.role, m.content) for m in packing.history),
                ("user", user_message(block, question))]

    # --- the whole path -------------------------------------------------------------------------
    def stream(self, question: str, history: HistoryLike | None = None, *, user: Identity | None = None,
               groups: Sequence[str] | None = None, audit_extra: dict[str, Any] | None = None) -> AnswerStream:
        """Answer ``question`` as it is generated. ``user``: who asks (their groups filter retrieval, and the
        audit log names them); ``groups`` instead of a user restricts retrieval the same way. Neither = no
        filter, for a developer's own scripts over their own store. ``audit_extra`` goes into the audit
        record's ``extra`` (which shell asked: ``{"via": "mcp"}``)."""
        return AnswerStream(self._audited(question.strip(), as_messages(history), user, _groups(user, groups),
                                          audit_extra=audit_extra))

    def ask(self, question: str, history: HistoryLike | None = None, *, user: Identity | None = None,
            groups: Sequence[str] | None = None, audit_extra: dict[str, Any] | None = None) -> Answer:
        return self.stream(question, history, user=user, groups=groups, audit_extra=audit_extra).text()

    def _audited(self, question: str, history: list[Message], user: Identity | None,
                 groups: Sequence[str] | None, audit_extra: dict[str, Any] | None = None,
                 **kw: Any) -> Iterator[str]:
        metrics.IN_FLIGHT.inc()
        try:
            answer = yield from self._run(question, history, groups, **kw)
        except Exception as exc:
            # Which endpoint failed is in the message; several may have (failover), so label the primary.
            metrics.observe_error(self.endpoint.base_url, exc)
            raise
        finally:  # also when the reader abandons the stream (GeneratorExit)
            metrics.IN_FLIGHT.dec()
        metrics.observe_answer(answer, answer.endpoint or self.endpoint.base_url)
        self._audit("ask", user, question=question, cited=list(dict.fromkeys(c.path for c in answer.cited)),
                    latency_ms=(answer.timings.get("total") or 0) * 1000, model=answer.model,
                    endpoint=answer.endpoint or self.endpoint.base_url,
                    extra={"refused": answer.refused, "sources": len(answer.sources), **(audit_extra or {})})
        return answer

    def _audit(self, event: str, user: Identity | None, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            fields.setdefault("endpoint", self.endpoint.base_url)
            self.audit.record(event, user=user.name if user else None, **fields)
        except RagError as exc:  # the answer is already out; a full disk must not turn it into an error
            log.error("audit log: %s", exc)

    def _run(self, question: str, history: list[Message], groups: Sequence[str] | None, *,
             standalone: str | None = None, retrieved: Retrieved | None = None) -> Iterator[str]:
        if not question:
            raise RagError("the question is empty")
        self.pool.check_usable()
        timings: dict[str, float | None] = {}
        t0 = time.perf_counter()
        if standalone is None:
            standalone = self.condense(question, history)
        timings["condense"] = time.perf_counter() - t0
        if retrieved is None:
            retrieved = self.retrieve(standalone, groups=groups)
        timings["retrieve"] = retrieved.seconds
        timings["rerank"] = retrieved.rerank_seconds  # included in "retrieve"
        if not retrieved.passages:
            yield NO_ANSWER
            timings.update(pack=0.0, ttft=None, generate=0.0, total=time.perf_counter() - t0, tokens_per_s=None)
            known = self.endpoint.cached_info
            return Answer(question, standalone, NO_ANSWER, [], True, {"prompt_tokens": 0, "completion_tokens": 0,
                          "total_tokens": 0, "source": "no LLM call"}, timings, None, known.model if known else None)

        failovers: list[str] = []
        for lease in self.pool.attempts():
            failovers += lease.skipped
            try:
                started = self._start(lease, retrieved.passages, question, history, timings)
            except _FailOver as exc:
                failovers.append(str(exc))
                lease.release()
                continue
            except BaseException:
                lease.release()
                raise
            break
        return (yield from self._generate(started, question, standalone, timings, t0, failovers))

    def _start(self, lease: Lease, passages: Sequence[Passage], question: str, history: list[Message],
               timings: dict[str, float | None]) -> _Started:
        """Pack for the leased endpoint and send; return once the first chunk is in. A context overflow is
        learned and repacked once; raises :class:`_FailOver` for a failure another endpoint may not have."""
        ep = lease.endpoint
        retries = 0
        window = ep.info.context_window
        extra_margin = 0
        while True:
            t = time.perf_counter()
            packing = self.pack(passages, question, history, context_window=window, extra_margin=extra_margin,
                                endpoint=ep)
            timings["pack"] = time.perf_counter() - t
            cite = CitationFilter(s.n for s in packing.sources)
            llm = self.llm(context_window=window, endpoint=ep)
            chunks = llm.stream(_lc_messages(self.messages(packing, question)))
            t_send = time.perf_counter()
            try:
                first = next(chunks, None)
            except Exception as exc:  # noqa: BLE001
                n = parse_overflow(api_message(exc))
                if n is None and "No generation chunks" in str(exc):
                    n = self._probe_overflow(packing, question, ep)
                if n is None or retries:
                    raise self._failure(lease, exc) from exc
                retries += 1
                over = packing.prompt_tokens + self.settings.llm_max_tokens - n
                log.warning("the LLM server says its context is %d tokens; we packed %d + %d for the answer into "
                            "%d; repacking once", n, packing.prompt_tokens or 0, self.settings.llm_max_tokens, window)
                ep.learn_window(n)
                if n < (window or n + 1):
                    window = n
                else:  # same window, so our count was off: hold back what it was over by, and 2% more
                    extra_margin += max(over, 0) + n // 50
                continue
            lease.ok()
            return _Started(lease, packing, cite, chunks, first, t_send, retries)

    def _failure(self, lease: Lease, exc: BaseException) -> Exception:
        """What a failed LLM call becomes: :class:`_FailOver` (counted against the endpoint) when another
        endpoint may answer, else the endpoint's one-line explanation."""
        err = lease.endpoint.explain(exc)
        if is_failover_error(exc):
            lease.failed(str(err), trip=is_timeout(exc))
            if self.pool.multi:
                return _FailOver(str(err))
        return err

    def _generate(self, started: _Started, question: str, standalone: str, timings: dict[str, float | None],
                  t0: float, failovers: list[str]) -> Iterator[str]:
        """Stream the answer begun in :meth:`_start`; the endpoint counts as busy until the stream ends or is
        abandoned."""
        lease, packing, cite, chunks, t_send = (started.lease, started.packing, started.cite, started.chunks,
                                                started.t_send)
        ep = lease.endpoint
        first = started.first
        ttft = time.perf_counter() - t_send if first is not None else None
        raw: list[str] = []
        shown: list[str] = []
        usage_meta: dict[str, Any] | None = None
        t_last = time.perf_counter()
        try:
            try:
                chunk = first
                while chunk is not None:
                    piece = _content(chunk)
                    if getattr(chunk, "usage_metadata", None):
                        usage_meta = dict(chunk.usage_metadata)
                    if piece:
                        raw.append(piece)
                        t_last = time.perf_counter()
                        out = cite.feed(piece)
                        if out:
                            shown.append(out)
                            yield out
                    chunk = next(chunks, None)
            except Exception as exc:  # noqa: BLE001
                err = ep.explain(exc)
                if is_failover_error(exc):
                    lease.failed(str(err), trip=is_timeout(exc))
                if self.pool.multi:
                    err = EndpointError(f"{err} (the answer had already begun, so it was not sent to another "
                                        "endpoint: that would repeat part of it; ask again)")
                raise err from exc
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # an abandoned stream ends its HTTP request too
            lease.release()
        tail = cite.flush()
        if tail:
            shown.append(tail)
            yield tail

        raw_text = "".join(raw)
        text = "".join(shown).strip()  # exactly what the user saw
        gen_seconds = max(t_last - (t_send + (ttft or 0.0)), 0.0)
        if usage_meta and usage_meta.get("input_tokens"):
            usage = {"prompt_tokens": usage_meta.get("input_tokens"), "completion_tokens":
                     usage_meta.get("output_tokens"), "total_tokens": usage_meta.get("total_tokens"),
                     "source": "server"}
        else:  # llama-cpp-python does not report usage when streaming: our exact counts
            completion = ep.count_tokens(raw_text)
            usage = {"prompt_tokens": packing.prompt_tokens, "completion_tokens": completion,
                     "total_tokens": (packing.prompt_tokens or 0) + completion,
                     "source": "counted" if ep.exact_tokenizer else "estimated"}
        usage["prompt_tokens_packed"] = packing.prompt_tokens
        completion_tokens = usage.get("completion_tokens") or 0
        timings.update(
            ttft=ttft, generate=gen_seconds, total=time.perf_counter() - t0,
            tokens_per_s=(completion_tokens - 1) / gen_seconds if gen_seconds > 0 and completion_tokens > 1 else None,
        )
        sources = [_citation(s, s.n in cite.cited) for s in packing.sources]
        return Answer(question, standalone, text, sources, False, usage, timings, packing, ep.info.model,
                      removed_citations=cite.removed, retries=started.retries, endpoint=ep.base_url,
                      failovers=failovers)

    def _probe_overflow(self, packing: Packing, question: str,
                        endpoint: OpenAICompatibleEndpoint | None = None) -> int | None:
        try:
            return (endpoint or self.endpoint).overflow_of(self.messages(packing, question))
        except Exception:  # noqa: BLE001 - the original failure is what the user sees
            return None

    # --- LangChain ------------------------------------------------------------------------------
    def as_runnable(self):
        """The chain as a LangChain ``Runnable``: input ``{"question", "history"?, "user"?, "groups"?}``, streams
        text.

        ``.invoke`` returns the whole text; ``.stream`` yields pieces. Built from the same pieces as
        :meth:`stream`: condense | retrieve | pack | generate."""
        from langchain_core.runnables import RunnableGenerator, RunnableLambda

        def condense(x: dict) -> dict:
            return {**x, "standalone": self.condense(x["question"], x.get("history"))}

        def retrieve(x: dict) -> dict:
            return {**x, "retrieved": self.retrieve(x["standalone"], user=x.get("user"), groups=x.get("groups"))}

        def generate(inputs: Iterator[dict]) -> Iterator[str]:
            for x in inputs:
                yield from AnswerStream(self._audited(x["question"], as_messages(x.get("history")), x.get("user"),
                                                      _groups(x.get("user"), x.get("groups")),
                                                      standalone=x["standalone"], retrieved=x["retrieved"]))

        return (RunnableLambda(condense, name="condense") | RunnableLambda(retrieve, name="retrieve")
                | RunnableGenerator(generate, name="pack_and_generate"))


# --- helpers ------------------------------------------------------------------------------------
def _lc_messages(messages: Sequence[tuple[str, str]]):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[r](content=c) for r, c in messages]


def _content(chunk: Any) -> str:
    c = getattr(chunk, "content", chunk)
    if isinstance(c, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in c)
    return c if isinstance(c, str) else str(c or "")


def _citation(src: Any, cited: bool) -> Citation:
    best = max(src.passages, key=lambda p: p.score)
    return Citation(n=src.n, path=src.path, source=src.source, page=best.page_start or src.page_start,
                    page_end=best.page_end if best.page_start is not None else src.page_end,
                    section=best.section or src.section,
                    snippet=snippet(best.text, 300), score=src.score, cited=cited,
                    trimmed=any(p.trimmed for p in src.passages), text=src.text)


def _clean_standalone(out: str, question: str) -> str:
    """Small models wrap the rewrite in quotes, labels or chatter; anything odd falls back to the question."""
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    if not lines:
        return question
    s = re.sub(r"^(standalone question|question|rewritten question)\s*:\s*", "", lines[0], flags=re.I)
    s = s.strip().strip('"“”\'').strip()
    if len(s) < 3 or len(s) > 3 * len(question) + 200:
        return question
    return s


def _groups(user: Identity | None, groups: Sequence[str] | None) -> Sequence[str] | None:
    """The store filter: a user's groups (None only for the unrestricted local user), else explicit groups."""
    if user is not None:
        if groups is not None:
            raise ValueError("pass either user or groups, not both")
        return user.groups_any
    return groups

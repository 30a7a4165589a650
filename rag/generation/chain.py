"""Cited answers, as one LangChain (LCEL) graph: condense -> retrieve -> pack -> prompt -> chat model -> cite.

``RAG`` is the facade (``RAG.from_settings().ask(question, history=...)``) that the CLI, UI, API and MCP server
call; :meth:`RAG.chain` is the graph itself, a ``Runnable`` whose callbacks and tracers see every step (the
retriever, the prompt, the model) and whose prompt, model and retriever a developer replaces in one line::

    chain = rag.chain(prompt=my_prompt, model=ChatOllama(model="llama3.1"))
    chain.invoke({"question": "How many vacation days?"})["answer"].sources

The graph streams ``{"text": piece}`` chunks and ends with ``{"answer": Answer}``; :meth:`RAG.as_runnable`
streams the text alone. Every run, whatever the entry point, is counted in the metrics and written to the audit
log (rag/ops/metrics.py, rag/security/audit.py).

The prompt is counted as a whole in the serving endpoint's tokenizer before it is sent and repacked if it is over
(rag/generation/window.py); an overflow the server still reports is learned and retried once
(rag/generation/generate.py). With several endpoints (``RAG_LLM_ENDPOINTS``, rag/llm/pool.py) each request
leases one and packs for *its* window; a failure before the first token sends the request to the next endpoint
(``Answer.failovers``), after it a failure is an error, since a second endpoint would repeat part of an answer
already shown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.prompts import BasePromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator

from rag.errors import AccessDenied, RagError
from rag.evidence.pages import RenderedPage, render_page
from rag.evidence.text import CONTEXT_CHARS, TextWindow, text_window
from rag.generation import condense as condensing
from rag.generation.generate import FailOver, failure, own_model_failure
from rag.generation.packing import Packing
from rag.generation.prompts import CONDENSE, SYSTEM_PROMPT, answer_prompt
from rag.generation.window import WindowPacker, as_pairs
from rag.index.embeddings import Embedder
from rag.index.store import Store
from rag.llm.endpoints import Cancelled, CancelToken, OpenAICompatibleEndpoint
from rag.llm.pool import EndpointPool
from rag.retrieval.retriever import Retrieved, Retriever, StoreRetriever
from rag.security.audit import AuditLog
from rag.security.auth import Identity
from rag.security.downloads import read_indexed
from rag.settings import Settings
from rag.generation.graph import Graph, store_groups
from rag.types import Answer, ChunkPayload, Citation, HistoryLike, Passage, Sampling, as_messages

__all__ = ["RAG", "Answer", "AnswerStream", "Citation", "as_messages"]

log = logging.getLogger(__name__)


class AnswerStream:
    """Iterate for the answer's text as it arrives; ``.answer`` holds the full :class:`Answer` afterwards.

    :meth:`cancel` (from any thread: a server's, whose client has gone) ends it early: at once if it waits for
    the LLM, whose request is then closed, else at the next chunk; the audit log records the run as
    ``abandoned``. The iteration then just stops, with ``.answer`` None."""

    def __init__(self, chunks: Iterator[dict]) -> None:
        self._chunks = chunks
        self.answer: Answer | None = None
        self._token = CancelToken()
        self._cancelled = False
        self._done = False

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop answering; thread-safe, idempotent. Close it afterwards (:meth:`close`) if nobody iterates."""
        self._cancelled = True
        self._token.cancel()

    def __iter__(self) -> Iterator[str]:
        try:
            while not self._token.cancelled:
                try:
                    with self._token.bound():  # every LLM call of the chain is this stream's to cancel
                        chunk = next(self._chunks, None)
                except Cancelled:
                    if not self._token.cancelled:  # another token's: not ours to swallow
                        raise
                    return
                if chunk is None:
                    self._done = True
                    return
                if chunk.get("text"):
                    yield chunk["text"]
                if "answer" in chunk:
                    self.answer = chunk["answer"]
        finally:  # a reader that stops early ends the request now, not when this object is collected
            self.close()

    def close(self) -> None:
        """End the chain now (its LLM request, its audit record), not when it is collected; idempotent. Not
        while another thread iterates: :meth:`cancel` is for that."""
        close = getattr(self._chunks, "close", None)
        if close is None:
            return
        if not self._done:
            # Closed, LangChain's steps read the rest of their input: the LLM's whole answer, unless it ends now.
            self._token.cancel(quietly=True)
        with self._token.bound():
            close()

    def text(self) -> Answer:
        """Consume the stream; return the answer. Raises :class:`Cancelled` if :meth:`cancel` ended it first."""
        for _ in self:
            pass
        if self.answer is None and self._cancelled:
            raise Cancelled
        assert self.answer is not None
        return self.answer


class RAG:
    """The retrieval-augmented answerer over one store, one embedder and one LLM endpoint (or a pool of them)."""

    def __init__(self, settings: Settings, *, store: Store, embedder: Embedder,
                 endpoint: OpenAICompatibleEndpoint | EndpointPool, system_prompt: str = SYSTEM_PROMPT,
                 prompt: BasePromptTemplate | None = None, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self.store = store
        self.embedder = embedder
        self.pool = (endpoint if isinstance(endpoint, EndpointPool)
                     else EndpointPool.from_settings(settings, endpoints=[endpoint]))
        self.system_prompt = system_prompt.strip()
        self.prompt = prompt or answer_prompt(self.system_prompt)
        self.retriever_core = Retriever.from_settings(settings, store, embedder)
        self._owns_store = False
        self._owns_pool = True
        self._chain: Runnable | None = None

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
                  system_prompt=self.system_prompt, prompt=self.prompt, audit=self.audit)
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
        """LangChain ``BaseRetriever`` over the store, with the configured threshold and reranker."""
        return StoreRetriever(retriever=self.retriever_core)

    def llm(self, *, max_tokens: int | None = None, streaming: bool = True, context_window: int | None = None,
            endpoint: OpenAICompatibleEndpoint | None = None, sampling: Sampling | None = None):
        """A LangChain chat model on ``endpoint`` (default: :attr:`endpoint`), with the settings' sampling or a
        request's (:class:`~rag.types.Sampling`)."""
        sampling = sampling or Sampling()
        temperature = self.settings.llm_temperature if sampling.temperature is None else sampling.temperature
        return (endpoint or self.endpoint).chat_model(
            max_tokens=max_tokens or sampling.answer_tokens(self.settings.llm_max_tokens), temperature=temperature,
            top_p=sampling.top_p, seed=sampling.seed, streaming=streaming, context_window=context_window)

    def retrieve(self, query: str, *, groups: Sequence[str] | None = None, user: Identity | None = None) -> Retrieved:
        """``user`` (or ``groups``) restricts retrieval, inside the store query, to what they may read."""
        return self.retriever_core.retrieve(query, groups=store_groups(user, groups))

    def readable(self, path: str, *, user: Identity | None = None, groups: Sequence[str] | None = None) -> bool:
        """Whether ``path`` is an indexed document that ``user`` may read (source viewers, downloads)."""
        return self._readable_record(path, user, groups) is not None

    def _readable_record(self, path: str, user: Identity | None, groups: Sequence[str] | None):
        """The index's record of ``path`` if ``user`` may read it, else None (one store lookup)."""
        record = self.store.get_document(path)
        allowed = store_groups(user, groups)
        if record is None or (allowed is not None and not set(record.groups) & set(allowed)):
            return None
        return record

    def read_source(self, path: str, *, user: Identity | None = None, groups: Sequence[str] | None = None) -> bytes:
        """The original file of an indexed document, for downloads. Refuses anything that is not an indexed
        document the user may read, in the same words whether it exists or not (no probing for names), and a
        file that is no longer the bytes that were indexed (rag/security/downloads.py)."""
        record = self._record_or_refused(path, user, groups)
        self.audit_event("download", user, cited=[path])
        return read_indexed(path, record.sha256)

    def _record_or_refused(self, path: str, user: Identity | None, groups: Sequence[str] | None):
        record = self._readable_record(path, user, groups)
        if record is None:
            raise AccessDenied(f"{Path(path).name}: no such document, or you may not read it")
        return record

    def source_page(self, path: str, page: int, *, highlight: str | None = None,
                    span: tuple[int, int] | None = None, user: Identity | None = None,
                    groups: Sequence[str] | None = None) -> RenderedPage:
        """Page ``page`` (1-based) of an indexed PDF, as PNG with a passage marked: ``highlight`` (a citation's
        text), or the indexed text of ``span`` (a citation's char span, what API clients send). The download's
        checks apply (the user may read it; the file is still the bytes that were indexed); audited as a view."""
        record = self._record_or_refused(path, user, groups)
        if highlight is None and span is not None:
            highlight = self._window(path, span[0], span[1], user, groups, 0).passage
        self.audit_event("view", user, cited=[path])
        return render_page(read_indexed(path, record.sha256), page, highlight)

    def source_text(self, path: str, char_start: int, char_end: int, *, user: Identity | None = None,
                    groups: Sequence[str] | None = None, context: int = CONTEXT_CHARS) -> TextWindow:
        """The indexed text around [char_start, char_end) of a document the user may read (a citation's span),
        from the document's chunks in the index (rag/evidence/text.py), audited as a view."""
        self._record_or_refused(path, user, groups)
        window = self._window(path, char_start, char_end, user, groups, context)
        self.audit_event("view", user, cited=[path])
        return window

    def _window(self, path: str, char_start: int, char_end: int, user: Identity | None,
                groups: Sequence[str] | None, context: int) -> TextWindow:
        """The text window from the chunks the user may read (the caller has checked the document)."""
        chunks = [ChunkPayload.from_dict(h.payload)
                  for h in self.store.chunks_of(path, groups_any=store_groups(user, groups))]
        return text_window(chunks, char_start, char_end, context)

    def condense(self, question: str, history: HistoryLike | None, *, model: Runnable | None = None,
                 config: RunnableConfig | None = None) -> str:
        """A follow-up rewritten as a standalone question, for retrieval. Without history: the question."""
        hist = as_messages(history)
        if not hist or not self.settings.condense_questions:
            return question
        for lease in self.pool.attempts():
            with lease:
                variables = condensing.fitted_variables(CONDENSE, hist, question, lease.endpoint)
                llm = model or self.llm(max_tokens=condensing.MAX_TOKENS, streaming=False, endpoint=lease.endpoint)
                try:
                    out = (CONDENSE | llm).invoke(variables, config)
                except Exception as exc:  # noqa: BLE001 - every client failure becomes one actionable line
                    if model is not None:
                        raise own_model_failure(model, exc) from exc
                    err = failure(self.pool, lease, exc)
                    if isinstance(err, FailOver):
                        continue
                    raise err from exc
                lease.ok()
                break
        return condensing.standalone_question(str(out.content), question, hist)

    def pack(self, passages: Sequence[Passage], question: str, history: HistoryLike | None = None, *,
             context_window: int | None = None, extra_margin: int = 0,
             endpoint: OpenAICompatibleEndpoint | None = None) -> Packing:
        """Pack passages and history for ``question`` and verify the whole prompt's token count, in the
        tokenizer and window of ``endpoint`` (default: :attr:`endpoint`).

        The result's ``prompt_tokens`` is the count of the exact prompt :meth:`messages` builds from it."""
        return WindowPacker(self.settings, self.prompt).pack(
            passages, question, as_messages(history), endpoint=endpoint or self.endpoint,
            context_window=context_window, extra_margin=extra_margin)

    def messages(self, packing: Packing, question: str) -> list[tuple[str, str]]:
        """The chat messages for a packing, as (role, content): system, kept history, then sources and question."""
        return as_pairs(WindowPacker(self.settings, self.prompt).messages(packing, question))

    # --- the graph ------------------------------------------------------------------------------
    def chain(self, *, prompt: BasePromptTemplate | None = None, model: Runnable | None = None,
              retriever: BaseRetriever | None = None) -> Runnable:
        """The answer path as a LangChain ``Runnable``. Input: ``{"question", "history"?, "user"?, "groups"?,
        "audit_extra"?, "sampling"?}`` (``sampling``: a :class:`~rag.types.Sampling` or a dict of its fields,
        this run's max_tokens, temperature, top_p, seed); output chunks ``{"text": piece}``, then ``{"answer": Answer}`` (``invoke`` gives
        both, the text whole).

        ``prompt`` replaces the answer prompt (variables ``history``, ``sources``, ``question``); ``model`` the
        chat model of every endpoint (packing still counts with the endpoint's tokenizer and window);
        ``retriever`` the store retriever (its documents need a ``path`` or ``source`` in their metadata). A
        replaced retriever does not know the caller's groups, so a chain with one refuses requests that carry
        a user or groups."""
        return Graph(self, prompt=prompt or self.prompt, model=model, retriever=retriever).runnable()

    def as_runnable(self) -> Runnable:
        """:meth:`chain` streaming only the answer's text: ``.invoke`` returns the whole text."""

        def text(chunks: Iterator[dict]) -> Iterator[str]:
            for chunk in chunks:
                if chunk.get("text"):
                    yield chunk["text"]

        async def atext(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
            async for chunk in chunks:
                if chunk.get("text"):
                    yield chunk["text"]

        return self.chain() | RunnableGenerator(text, atext, name="text")

    def stream(self, question: str, history: HistoryLike | None = None, *, user: Identity | None = None,
               groups: Sequence[str] | None = None, audit_extra: dict[str, Any] | None = None,
               config: RunnableConfig | None = None, sampling: Sampling | None = None) -> AnswerStream:
        """Answer ``question`` as it is generated. ``user``: who asks (their groups filter retrieval, and the
        audit log names them); ``groups`` instead of a user restricts retrieval the same way. Neither = no
        filter, for a developer's own scripts over their own store. ``audit_extra`` goes into the audit
        record's ``extra`` (which shell asked: ``{"via": "mcp"}``). ``config``: LangChain's run config
        (callbacks, tags, metadata), passed to every step. ``sampling``: this answer's max_tokens, temperature,
        top_p or seed instead of the settings' (max_tokens only below ``RAG_LLM_MAX_TOKENS``)."""
        store_groups(user, groups)  # a wrong call fails here, not at the first piece
        if self._chain is None:
            self._chain = self.chain()
        return AnswerStream(self._chain.stream({"question": question, "history": history, "user": user,
                                                "groups": groups, "audit_extra": audit_extra,
                                                "sampling": sampling}, config))

    def ask(self, question: str, history: HistoryLike | None = None, *, user: Identity | None = None,
            groups: Sequence[str] | None = None, audit_extra: dict[str, Any] | None = None,
            config: RunnableConfig | None = None, sampling: Sampling | None = None) -> Answer:
        return self.stream(question, history, user=user, groups=groups, audit_extra=audit_extra,
                           config=config, sampling=sampling).text()

    # --- the steps ------------------------------------------------------------------------------
    def audit_event(self, event: str, user: Identity | None, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            fields.setdefault("endpoint", self.endpoint.base_url)
            self.audit.record(event, user=user.name if user else None, **fields)
        except RagError as exc:
            if self.audit.required:  # RAG_AUDIT_REQUIRED: what cannot be recorded is not delivered
                raise
            # Otherwise availability wins: a full disk must not turn an answer or a download into an error.
            log.error("audit log: %s", exc)

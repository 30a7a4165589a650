"""The answer path as one LCEL graph: condense -> retrieve -> answer (pack -> prompt -> model -> cite, per endpoint).

Each step is a runnable that receives the run's config, so callbacks and tracers see the retriever, the prompts
and the chat models as children of the graph's run. The steps pass one dict along: the question and history,
who asks (``user``/``groups``), then ``standalone``, then ``passages``; ``timings`` collects each step's time.
The graph streams ``{"text": piece}`` chunks and ends with ``{"answer": Answer}``.

The outer runnable counts every run in the metrics and writes it to the audit log, so a developer's own
composition of the graph is audited like the shells' calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from langchain_core.prompts import BasePromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from rag.errors import AccessDenied, RagError
from rag.generation.generate import FailOver, Generator, answer_of
from rag.generation.prompts import NO_ANSWER
from rag.generation.support import SupportScorer, check_answer
from rag.generation.window import WindowPacker
from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.ops import metrics
from rag.retrieval.retriever import StoreRetriever, group_names, passages_of
from rag.security.auth import Identity
from rag.types import Answer, Sampling, as_messages

if TYPE_CHECKING:
    from rag.generation.chain import RAG

log = logging.getLogger(__name__)
T = TypeVar("T")


def store_groups(user: Identity | None, groups: Sequence[str] | None) -> Sequence[str] | None:
    """The store filter: a user's groups (None only for the unrestricted local user), else explicit groups."""
    if user is not None:
        if groups is not None:
            raise ValueError("pass either user or groups, not both")
        return user.groups_any
    return None if groups is None else group_names(groups)


_END = object()


def _shape(x: object) -> str:
    return f"a dict with {sorted(map(str, x))}" if isinstance(x, dict) else f"a {type(x).__name__}"


async def in_thread(gen: Iterator[T]) -> AsyncIterator[T]:
    """A blocking generator (store, tokenizer and HTTP calls) driven from an event loop: each step runs in a worker
    thread, so ``ainvoke``/``astream`` never block the loop; closed there too when the reader stops early."""
    try:
        while True:
            item = await asyncio.to_thread(next, gen, _END)
            if item is _END:
                return
            yield cast(T, item)
    finally:
        await asyncio.to_thread(getattr(gen, "close", lambda: None))


class Graph:
    """The steps over one :class:`RAG`'s store, endpoints and audit log, with the prompt, model and retriever
    the graph was built with (``model``/``retriever`` None: the endpoint's model, the store's retriever)."""

    def __init__(self, rag: RAG, *, prompt: BasePromptTemplate, model: Runnable | None,
                 retriever: BaseRetriever | None) -> None:
        self.rag = rag
        self.model = model
        self.retriever = retriever
        self.generator = Generator(rag.pool, WindowPacker(rag.settings, prompt), model or self._model_for,
                                   rag.settings.llm_max_tokens)

    def runnable(self) -> Runnable:
        # RunnableGenerator passes ``config`` to a function that takes one; its annotations do not say so.
        steps = (RunnableLambda(self.condense, name="condense") | RunnableLambda(self.retrieve, name="retrieve")
                 | RunnableGenerator(self.answer, name="answer"))  # type: ignore[arg-type]

        def observed(inputs: Iterator[dict], config: RunnableConfig) -> Iterator[AddableDict]:
            for x in inputs:
                yield from self.observed(steps, x, config)

        async def aobserved(inputs: AsyncIterator[dict], config: RunnableConfig) -> AsyncIterator[AddableDict]:
            async for x in inputs:
                async for chunk in in_thread(self.observed(steps, x, config)):
                    yield chunk

        return RunnableGenerator(observed, aobserved, name="rag")  # type: ignore[arg-type]

    def _model_for(self, *, endpoint: OpenAICompatibleEndpoint, context_window: int | None,
                   sampling: Sampling) -> Runnable:
        return self.rag.llm(context_window=context_window, endpoint=endpoint, sampling=sampling)

    def observed(self, steps: Runnable, x: dict, config: RunnableConfig) -> Iterator[AddableDict]:
        """Run the steps, counted in the metrics and audited, for every caller of the graph alike."""
        if not isinstance(x, dict) or "question" not in x:
            raise RagError(f"the chain's input is a dict with a 'question' (and optionally 'history', 'user' or "
                           f"'groups'), e.g. chain.invoke({{'question': ...}}); got {_shape(x)}")
        user = x.get("user")
        try:
            sampling = Sampling.of(x.get("sampling"))
        except (TypeError, ValueError) as exc:
            raise RagError(f"the chain's 'sampling' is a rag.types.Sampling or a dict of its fields: {exc}") from None
        state: dict[str, Any] = {"question": str(x["question"]).strip(), "history": as_messages(x.get("history")),
                                 "user": user, "groups": store_groups(user, x.get("groups")), "sampling": sampling,
                                 "started": time.perf_counter(), "timings": {}}
        primary = self.rag.endpoint.base_url
        metrics.IN_FLIGHT.inc()
        chunks = steps.stream(state, config)
        # RAG_AUDIT_REQUIRED: not one piece of text goes out before its audit line is written.
        withhold = self.rag.audit is not None and self.rag.audit.required
        held: list[AddableDict] = []
        recorded, shown, outcome = False, 0, "abandoned"
        try:
            for chunk in chunks:
                if "answer" in chunk:  # recorded before it is handed on: the reader may stop at it
                    self._record(chunk["answer"], user, x.get("audit_extra"))
                    recorded = True
                    yield from held
                elif withhold:
                    held.append(chunk)
                    continue
                else:
                    shown += len(chunk.get("text", ""))
                yield chunk
        except Exception as exc:
            outcome = "error"
            # Which endpoint failed is in the message; several may have (failover), so label the primary.
            metrics.observe_error(primary, exc)
            raise
        finally:  # also when the reader abandons the stream (GeneratorExit): ends the LLM request too
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            metrics.IN_FLIGHT.dec()
            if not recorded:  # a reader who stopped part-way (a client that disconnected) has still read it
                self._record_unfinished(state, user, x.get("audit_extra"), outcome, shown, primary)

    def _record(self, answer: Answer, user: Identity | None, audit_extra: dict[str, Any] | None) -> None:
        endpoint = answer.endpoint or self.rag.endpoint.base_url
        metrics.observe_answer(answer, endpoint)
        self.rag.audit_event("ask", user, question=answer.question,
                             cited=list(dict.fromkeys(c.path for c in answer.cited)),
                             latency_ms=(answer.timings.get("total") or 0) * 1000, model=answer.model,
                             endpoint=endpoint,
                             extra={"refused": answer.refused, "sources": len(answer.sources), **(audit_extra or {})})

    def _record_unfinished(self, state: dict, user: Identity | None, audit_extra: dict[str, Any] | None,
                           outcome: str, shown: int, endpoint: str) -> None:
        """The audit line of a run that ended without its answer: who asked what, and how much text went out."""
        try:
            self.rag.audit_event("ask", user, question=state["question"], endpoint=endpoint,
                                 latency_ms=(time.perf_counter() - state["started"]) * 1000,
                                 extra={"outcome": outcome, "chars_shown": shown, **(audit_extra or {})})
        except RagError as exc:  # the run's own error, or the reader's leaving, is what the caller must see
            log.error("audit log: %s", exc)

    def condense(self, x: dict, config: RunnableConfig) -> dict:
        if not x["question"]:
            raise RagError("the question is empty")
        if x["history"] and self.rag.settings.condense_questions:
            self.rag.pool.check_usable()  # condensing asks the LLM: fail at once, with the reason
        t = time.perf_counter()
        standalone = self.rag.condense(x["question"], x["history"], model=self.model, config=config)
        return {**x, "standalone": standalone, "timings": {**x["timings"], "condense": time.perf_counter() - t}}

    def retrieve(self, x: dict, config: RunnableConfig) -> dict:
        if self.retriever is not None and x["groups"] is not None:
            raise AccessDenied("this chain's retriever was replaced and cannot restrict what a user may read; "
                               "filter by group inside that retriever and call it without a user or groups")
        t = time.perf_counter()
        retriever = self.retriever or StoreRetriever(retriever=self.rag.retriever_core,
                                                     groups=None if x["groups"] is None else list(x["groups"]))
        docs = retriever.invoke(x["standalone"], config)
        rerank = docs[0].metadata.get("rerank_seconds", 0.0) if docs else 0.0
        timings = {**x["timings"], "retrieve": time.perf_counter() - t, "rerank": rerank}
        return {**x, "passages": passages_of(docs), "timings": timings}

    def answer(self, inputs: Iterator[dict], config: RunnableConfig) -> Iterator[AddableDict]:
        for x in inputs:
            yield from self._answer(x, config)

    def _answer(self, x: dict, config: RunnableConfig) -> Iterator[AddableDict]:
        if not x["passages"]:
            yield AddableDict(text=NO_ANSWER)
            yield AddableDict(answer=self._no_answer(x))
            return
        # Only now: a question the documents do not answer is refused without the LLM, even while it is down.
        self.rag.pool.check_usable()
        failovers: list[str] = []
        for lease in self.rag.pool.attempts():
            failovers += lease.skipped
            try:
                attempt, stream = self.generator.start(lease, x, config)
            except FailOver as exc:
                failovers.append(str(exc))
                lease.release()
                continue
            except BaseException:
                lease.release()
                raise
            break
        shown: list[str] = []
        for piece in self.generator.rest(attempt, stream):
            if piece:
                shown.append(piece)
                yield AddableDict(text=piece)
        answer = answer_of(attempt, "".join(shown).strip(), x, failovers)
        settings = self.rag.settings
        if settings.citation_check and attempt.packing is not None:  # after the text: it delays nothing shown
            check_answer(answer, attempt.packing.sources,
                         SupportScorer(self.rag.embedder, threshold=settings.citation_threshold),
                         getattr(self.rag.store, "vectors", None))
        yield AddableDict(answer=answer)

    def _no_answer(self, x: dict) -> Answer:
        timings = {**x["timings"], "pack": 0.0, "ttft": None, "generate": 0.0,
                   "total": time.perf_counter() - x["started"], "tokens_per_s": None}
        known = self.rag.endpoint.cached_info
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "source": "no LLM call"}
        return Answer(x["question"], x["standalone"], NO_ANSWER, [], True, usage, timings, None,
                      known.model if known else None)

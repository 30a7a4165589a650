"""Generation on one endpoint: pack -> prompt -> chat model -> citation filter, as one LCEL sequence per attempt.

An attempt is built for the endpoint a request leased from the pool (rag/llm/pool.py), because packing is exact
only for *that* endpoint's window and tokenizer. The sequence streams; its first output (an empty string, sent
as soon as the model's first chunk arrives) marks the point after which a failure is an error rather than a
reason to fail over: before it, nothing has been shown.

If the server answers "maximum context length is N" although we counted, its window is learned from the error
and the attempt is rebuilt and sent once more (``Answer.retries``).

LangChain's ``with_fallbacks`` is not used for failover: it tries a fixed list in a fixed order, while the pool
chooses the next endpoint at request time (least busy first, circuit breakers open and close) and counts every
failure against the endpoint that had it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator, RunnableLambda

from rag.errors import RagError
from rag.generation.citations import CitationFilter, snippet
from rag.generation.packing import Packing, Source
from rag.generation.window import WindowPacker, as_pairs
from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.llm.failures import EndpointError, api_message, is_failover_error, is_timeout, parse_overflow
from rag.llm.pool import EndpointPool, Lease
from rag.types import Answer, Citation, Sampling

log = logging.getLogger(__name__)


class FailOver(Exception):
    """An endpoint failed before the first token; the request goes to the next one."""


def failure(pool: EndpointPool, lease: Lease, exc: BaseException) -> Exception:
    """What a failed LLM call becomes: :class:`FailOver` (counted against the endpoint) when another endpoint
    may answer, else the endpoint's one-line explanation."""
    err = lease.endpoint.explain(exc)
    if is_failover_error(exc):
        if not is_timeout(exc):
            # Gone or failing, not just slow: what discovery found before no longer holds. Asking again at the
            # next look tells the sidebar, /healthz and the next question (a timeout's re-check would hang too).
            lease.endpoint.suspect()
        lease.failed(str(err), trip=is_timeout(exc))
        if pool.multi:
            return FailOver(str(err))
    return err


def own_model_failure(model: Runnable, exc: BaseException) -> EndpointError:
    """A developer's own chat model failed: say so, and count nothing against the configured endpoints, which
    did not take part (their circuit breakers would otherwise stop answers for every other caller)."""
    return EndpointError(f"this chain's own chat model ({model.get_name()}) failed: {api_message(exc)}; check the "
                         "server that model points at (the RAG_LLM_* settings only size the prompt for it)")


@dataclass
class Attempt:
    """One try on one endpoint; the steps of its sequence record here what the answer reports."""

    lease: Lease
    retries: int = 0
    packing: Packing | None = None
    cite: CitationFilter = field(default_factory=lambda: CitationFilter(()))
    raw: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    pack_seconds: float = 0.0
    t_send: float | None = None  # the prompt went out
    t_first: float | None = None  # the model's first chunk came back
    t_last: float | None = None  # its last text
    finish_reason: str | None = None  # the server's (OpenAI "finish_reason", Ollama "done_reason")


def _content(chunk: Any) -> str:
    c = getattr(chunk, "content", chunk)
    if isinstance(c, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in c)
    return c if isinstance(c, str) else str(c or "")


def pack_step(packer: WindowPacker, attempt: Attempt, endpoint: OpenAICompatibleEndpoint, *,
              context_window: int | None, extra_margin: int, max_tokens: int) -> Runnable:
    """Input ``{"passages", "question", "history"}`` -> the prompt's variables, packed for ``endpoint`` with
    ``max_tokens`` left for the answer."""

    def run(x: dict) -> dict:
        t = time.perf_counter()
        packing = packer.pack(x["passages"], x["question"], x["history"], endpoint=endpoint,
                              context_window=context_window, extra_margin=extra_margin, max_tokens=max_tokens)
        attempt.packing, attempt.cite = packing, CitationFilter(s.n for s in packing.sources)
        attempt.t_send = time.perf_counter()
        attempt.pack_seconds = attempt.t_send - t
        return packer.variables(packing, x["question"])

    return RunnableLambda(run, name="pack")


def cite_step(attempt: Attempt) -> Runnable:
    """Model chunks -> answer text with invented citation numbers removed, as it streams (first: ``""``)."""

    def run(chunks: Iterator[Any]) -> Iterator[str]:
        for chunk in chunks:
            if attempt.t_first is None:
                attempt.t_first = attempt.t_last = time.perf_counter()
                yield ""
            if getattr(chunk, "usage_metadata", None):
                attempt.usage = dict(chunk.usage_metadata)
            meta = getattr(chunk, "response_metadata", None) or {}
            attempt.finish_reason = meta.get("finish_reason") or meta.get("done_reason") or attempt.finish_reason
            piece = _content(chunk)
            if piece:
                attempt.raw.append(piece)
                attempt.t_last = time.perf_counter()
                out = attempt.cite.feed(piece)
                if out:
                    yield out
        tail = attempt.cite.flush()
        if tail:
            yield tail

    return RunnableGenerator(run, name="cite")


class Generator:
    """Runs attempts on leased endpoints: ``packer`` for the window, ``model`` for the chat model of an
    endpoint and window (a developer's own model ignores both)."""

    def __init__(self, pool: EndpointPool, packer: WindowPacker, model: Any, max_tokens: int) -> None:
        self.pool = pool
        self.packer = packer
        self.model = model
        self.own_model = model if isinstance(model, Runnable) else None
        self.max_tokens = max_tokens

    def sequence(self, attempt: Attempt, window: int | None, extra_margin: int, sampling: Sampling) -> Runnable:
        ep = attempt.lease.endpoint
        model = (self.model if isinstance(self.model, Runnable)
                 else self.model(endpoint=ep, context_window=window, sampling=sampling))
        return (pack_step(self.packer, attempt, ep, context_window=window, extra_margin=extra_margin,
                          max_tokens=self.answer_tokens(sampling))
                | self.packer.prompt | model | cite_step(attempt))

    def answer_tokens(self, sampling: Sampling) -> int:
        """Room kept for the answer. A developer's own model has its own max_tokens, which we cannot read, so it
        gets the setting's."""
        return self.max_tokens if self.own_model is not None else sampling.answer_tokens(self.max_tokens)

    def start(self, lease: Lease, x: dict, config: RunnableConfig | None) -> tuple[Attempt, Iterator[str]]:
        """Send on the leased endpoint; return once the model's first chunk is in. A context overflow is learned
        and the prompt repacked once; raises :class:`FailOver` for a failure another endpoint may not have."""
        ep = lease.endpoint
        sampling: Sampling = x.get("sampling") or Sampling()
        max_out = self.answer_tokens(sampling)
        window, extra_margin, retries = ep.info.context_window, 0, 0
        while True:
            attempt = Attempt(lease, retries=retries)
            stream = self.sequence(attempt, window, extra_margin, sampling).stream(x, config)
            try:
                next(stream, None)
            except Exception as exc:  # noqa: BLE001
                if attempt.t_send is None or isinstance(exc, RagError):
                    raise  # packing failed: not the server's answer
                n = parse_overflow(api_message(exc))
                if n is None and "No generation chunks" in str(exc):
                    n = self._probe_overflow(attempt, x["question"])
                if n is None or retries:
                    if self.own_model is not None:
                        raise own_model_failure(self.own_model, exc) from exc
                    raise failure(self.pool, lease, exc) from exc
                retries += 1
                assert attempt.packing is not None  # it was sent
                packed = attempt.packing.prompt_tokens or 0
                log.warning("the LLM server says its context is %d tokens; we packed %d + %d for the answer into "
                            "%s; repacking once", n, packed, max_out, window)
                ep.learn_window(n)
                if n < (window or n + 1):
                    window = n
                else:  # same window, so our count was off: hold back what it was over by, and 2% more
                    extra_margin += max(packed + max_out - n, 0) + n // 50
                continue
            lease.ok()
            return attempt, stream

    def _probe_overflow(self, attempt: Attempt, question: str) -> int | None:
        if attempt.packing is None:
            return None
        try:
            messages = as_pairs(self.packer.messages(attempt.packing, question))
            return attempt.lease.endpoint.overflow_of(messages)
        except Exception:  # noqa: BLE001 - the original failure is what the user sees
            return None

    def rest(self, attempt: Attempt, stream: Iterator[str]) -> Iterator[str]:
        """The remaining text of a started attempt; the endpoint counts as busy until it ends or is abandoned."""
        lease = attempt.lease
        try:
            yield from stream
        except Exception as exc:  # noqa: BLE001
            if self.own_model is not None:
                raise own_model_failure(self.own_model, exc) from exc
            err = lease.endpoint.explain(exc)
            if is_failover_error(exc):
                lease.failed(str(err), trip=is_timeout(exc))
            if self.pool.multi:
                err = EndpointError(f"{err} (the answer had already begun, so it was not sent to another "
                                    "endpoint: that would repeat part of it; ask again)")
            raise err from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # an abandoned stream ends its HTTP request too
            lease.release()


def usage_of(attempt: Attempt) -> dict[str, Any]:
    """Token counts as the server reported them, else our exact counts (llama-cpp-python reports none when
    streaming)."""
    packing, ep = attempt.packing, attempt.lease.endpoint
    assert packing is not None
    meta = attempt.usage
    if meta and meta.get("input_tokens"):
        usage: dict[str, Any] = {"prompt_tokens": meta.get("input_tokens"),
                                 "completion_tokens": meta.get("output_tokens"),
                                 "total_tokens": meta.get("total_tokens"), "source": "server"}
    else:
        completion = ep.count_tokens("".join(attempt.raw))
        usage = {"prompt_tokens": packing.prompt_tokens, "completion_tokens": completion,
                 "total_tokens": (packing.prompt_tokens or 0) + completion,
                 "source": "counted" if ep.exact_tokenizer else "estimated"}
    usage["prompt_tokens_packed"] = packing.prompt_tokens
    return usage


def citation(src: Source, cited: bool) -> Citation:
    best = max(src.passages, key=lambda p: p.score)
    return Citation(n=src.n, path=src.path, source=src.source, page=best.page_start or src.page_start,
                    page_end=best.page_end if best.page_start is not None else src.page_end,
                    section=best.section or src.section,
                    snippet=snippet(best.text, 300), score=src.score, cited=cited,
                    trimmed=any(p.trimmed for p in src.passages), text=src.text,
                    char_start=src.char_start, char_end=max(p.char_end for p in src.passages))


def answer_of(attempt: Attempt, text: str, x: dict, failovers: list[str]) -> Answer:
    """The answer a finished attempt gave, with its usage and timings."""
    packing, ep = attempt.packing, attempt.lease.endpoint
    assert packing is not None and attempt.t_send is not None
    usage = usage_of(attempt)
    ttft = attempt.t_first - attempt.t_send if attempt.t_first is not None else None
    generate = max((attempt.t_last or 0.0) - (attempt.t_first or 0.0), 0.0)
    completion = usage.get("completion_tokens") or 0
    timings = {**x["timings"], "pack": attempt.pack_seconds, "ttft": ttft, "generate": generate,
               "total": time.perf_counter() - x["started"],
               "tokens_per_s": (completion - 1) / generate if generate > 0 and completion > 1 else None}
    sources = [citation(s, s.n in attempt.cite.cited) for s in packing.sources]
    return Answer(x["question"], x["standalone"], text, sources, False, usage, timings, packing, ep.info.model,
                  removed_citations=attempt.cite.removed, retries=attempt.retries, endpoint=ep.base_url,
                  failovers=failovers, finish_reason=attempt.finish_reason or "stop")

"""`rag search`, `rag ask`, `rag chat`: what retrieval finds, and answers from the documents."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from rag.errors import RagError
from rag.settings import RETRIEVAL_MODES, Settings
from rag.cli.common import check_rerank_option, AsUser, err, fail, identity_for, load_settings, out, rel, snippet


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many chunks to show.")] = 5,
    mode: Annotated[str | None, typer.Option(help="dense, sparse or hybrid (default: RAG_RETRIEVAL_MODE).")] = None,
    rerank: Annotated[bool | None, typer.Option("--rerank/--no-rerank", help="Reorder the candidates with the "
                                                "configured reranker (default: on when RAG_RERANK_MODEL or "
                                                "RAG_RERANK_URL is set).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    as_user: AsUser = None,
) -> None:
    """Show what retrieval finds for a query (path, page, score, snippet). No LLM involved."""
    from rag.index.embeddings import get_embedder
    from rag.retrieval.retriever import Retriever
    from rag.index.store import open_store

    if not query.strip():
        err.print(Text("error: the query is empty: give the words to look for", style="bold red"))
        raise typer.Exit(2)
    settings = load_settings()
    if mode is not None:
        if mode not in RETRIEVAL_MODES:
            err.print(Text(f"error: --mode must be dense, sparse or hybrid, not {mode!r}", style="bold red"))
            raise typer.Exit(2)
        settings = settings.model_copy(update={"retrieval_mode": mode})
    check_rerank_option(rerank, settings)
    user = identity_for(settings, as_user)
    try:
        embedder = get_embedder(settings)
        with open_store(settings) as store:
            overrides: dict[str, Any] = {"reranker": None} if rerank is False else {}
            found = Retriever.from_settings(settings, store, embedder, top_k=top_k, min_score=float("-inf"),
                                            **overrides).retrieve(query, groups=user.groups_any if user else None)
            empty = not found.passages and store.count_chunks() == 0
    except RagError as exc:
        raise fail(exc) from None
    _audit_search(settings, user, query, found)
    results: list[dict[str, Any]] = [{"path": p.path, "page": p.page_start, "score": round(p.score, 4), "snippet": snippet(p.text),
                "section": p.section, "relevant": p.score >= settings.min_score}
               | ({"rerank_score": round(p.rerank_score, 4)} if p.rerank_score is not None else {})
               for p in found.passages]
    if as_json:
        out.print_json(json.dumps({"query": query, "results": results, "min_score": settings.min_score,
                                   "seconds": round(found.seconds, 4), "reranker": found.reranker,
                                   "reranked": found.reranked, "rerank_seconds": round(found.rerank_seconds, 4)}))
        return
    if not results:
        out.print("Nothing found: the index is empty. Run [bold]rag ingest PATH[/] first." if empty else
                  f"Nothing found: no document {as_user or 'here'} may read matches (`rag access` shows who may "
                  "read what).")
        return
    if found.reranker:
        out.print(Text(f"reranked by {found.reranker}: best {found.reranked} candidates in "
                       f"{found.rerank_seconds:.2f} s (rerank score, then cosine)", style="dim"))
    for i, r in enumerate(results, 1):
        where = rel(r["path"]) + (f", p. {r['page']}" if r["page"] else "")
        style = "green" if r["relevant"] else "dim"
        rr = f"{r['rerank_score']:.3f} " if "rerank_score" in r else ""
        out.print(Text.assemble((f"{i}. ", "bold"), (rr, "bold cyan"), (f"{r['score']:.3f} ", style), (where, "bold"),
                                (f" — {r['section']}" if r["section"] else "", "italic")))
        out.print(Text("   " + r["snippet"], style="" if r["relevant"] else "dim"))
    below = sum(1 for r in results if not r["relevant"])
    if below:
        out.print(Text(f"({below} result(s) below the relevance threshold {settings.min_score}: RAG_MIN_SCORE)",
                       style="dim"))


def _audit_search(settings: Settings, user, query: str, found) -> None:
    from rag.security.audit import AuditLog

    log = AuditLog.from_settings(settings)
    if log is not None:
        try:
            log.record("search", user=user.name if user else None, question=query,
                       cited=list(dict.fromkeys(p.path for p in found.passages)),
                       latency_ms=found.seconds * 1000)
        except RagError as exc:
            if log.required:  # RAG_AUDIT_REQUIRED: no results that are not on record
                raise fail(exc) from None
            err.print(Text(f"warning: audit log: {exc}", style="yellow"))


def ask(
    question: Annotated[str, typer.Argument(help="The question, in any language the model speaks.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (answer, sources, usage, "
                                                          "timings, packing) instead of streaming.")] = False,
    all_sources: Annotated[bool, typer.Option("--all-sources", help="List every source given to the model, "
                                                                   "not only the cited ones.")] = False,
    as_user: AsUser = None,
) -> None:
    """Answer a question from the documents, streamed, then list the sources it cites."""
    from rag.generation.chain import RAG

    settings = load_settings()
    user = identity_for(settings, as_user)
    try:
        with RAG.from_settings(settings) as rag:
            stream = rag.stream(question, user=user)
            for piece in stream:
                if not as_json:
                    out.print(piece, end="", markup=False, highlight=False)
            answer = stream.answer
    except RagError as exc:
        if not as_json:
            out.print()
        raise fail(exc) from None
    assert answer is not None
    if as_json:
        out.print_json(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    out.print()
    _print_sources(answer, all_sources)
    _print_stats(answer)


def _print_sources(answer, all_sources: bool = False) -> None:
    shown = answer.sources if all_sources or not answer.cited else answer.cited
    if not shown:
        return
    out.print(Text("\nSources" if answer.cited else "\nSources given to the model (none cited)", style="bold"))
    for c in shown:
        out.print(Text.assemble((f"[{c.n}] ", "bold cyan"), (rel(c.path), "bold"),
                                (f", p. {c.page}" if c.page else "", ""),
                                (f" — {c.section}" if c.section else "", "italic"),
                                (f"  not found in the source (support {c.support:.2f})"
                                 if c.verdict == "unsupported" else "", "bold yellow")))
        out.print(Text("    " + snippet(c.snippet, 200), style="dim"))


def _print_stats(answer) -> None:
    t, pk = answer.timings, answer.packing
    parts = [f"retrieve {t['retrieve']:.2f} s" + (f" (rerank {t['rerank']:.2f} s)" if t.get("rerank") else "")]
    if (t.get("condense") or 0) > 0.05:
        parts.insert(0, f"condense {t['condense']:.1f} s")
    if pk is not None:
        parts.append(f"pack {t['pack']:.2f} s ({pk.used}/{pk.budget} tokens, {len(pk.sources)} sources)")
    if t.get("ttft") is not None:
        parts.append(f"first token {t['ttft']:.1f} s")
    if t.get("tokens_per_s"):
        parts.append(f"{t['tokens_per_s']:.1f} tokens/s")
    if answer.retries:
        parts.append("repacked once after an overflow")
    err.print(Text(" · ".join(parts), style="dim"))
    if answer.finish_reason == "length":
        err.print(Text(f"the answer was cut off at {answer.usage.get('completion_tokens')} tokens: raise "
                       "RAG_LLM_MAX_TOKENS for longer answers", style="yellow"))


def chat(as_user: AsUser = None) -> None:
    """Interactive questions with history. /sources shows the last answer's sources, /reset forgets the
    conversation, /exit (or Ctrl-D) ends."""
    from rag.generation.chain import RAG
    from rag.types import Message

    settings = load_settings()
    user = identity_for(settings, as_user)
    try:
        rag = RAG.from_settings(settings)
    except RagError as exc:
        raise fail(exc) from None
    history: list[Message] = []
    last = None
    out.print(Text("Ask about your documents. /sources, /reset, /exit.", style="dim"))
    try:
        while True:
            try:
                q = input("\n> ").strip()
            except EOFError:
                break
            if not q:
                continue
            if q in ("/exit", "/quit"):
                break
            if q == "/reset":
                history, last = [], None
                out.print(Text("(conversation forgotten)", style="dim"))
                continue
            if q == "/sources":
                if last is not None:
                    _print_sources(last, all_sources=True)
                continue
            try:
                stream = rag.stream(q, history, user=user)
                for piece in stream:
                    out.print(piece, end="", markup=False, highlight=False)
                last = stream.answer
                assert last is not None, "AnswerStream sets .answer once iterated to the end"
            except RagError as exc:
                out.print()
                err.print(Text(f"error: {exc}", style="bold red"))
                continue
            out.print()
            _print_sources(last)
            history += [Message("user", q), Message("assistant", last.text)]
    except KeyboardInterrupt:
        out.print()
    finally:
        rag.close()

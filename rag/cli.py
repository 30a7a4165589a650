"""`rag` command line: a thin shell over the library (rag.*, ingest.*).

Exit codes: 0 success; 1 some files failed to ingest (the others were ingested); 2 nothing could be done
(bad settings, store locked or unreachable, usage error); 3 the LLM endpoint failed (down, timeout, HTTP error,
wrong model, prompt too long); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from rag import offline
from rag.cli_users import users_app
from rag.errors import RagError
from rag.settings import RETRIEVAL_MODES, Settings

offline.apply()

app = typer.Typer(
    help="onprem-rag: chat with your company's documents; every byte stays on your machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details (and tracebacks) to stderr.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    _state["verbose"] = verbose


_state: dict[str, Any] = {"verbose": False}


def _fail(exc: BaseException) -> typer.Exit:
    from rag.endpoints import EndpointError

    if _state["verbose"]:
        err.print_exception()
    err.print(Text(f"error: {exc}", style="bold red"))
    return typer.Exit(3 if isinstance(exc, EndpointError) else 2)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: name the variable that is wrong
        err.print(Text(f"error: invalid settings (RAG_* environment or rag.toml): {exc}", style="bold red"))
        raise typer.Exit(2) from None


AsUser = Annotated[str | None, typer.Option(
    "--as", metavar="USER", help="Run as this user of RAG_USERS_FILE: only documents their groups may read. "
                                 "Without it the local operator sees everything.")]


def _identity(settings: Settings, as_user: str | None):
    """The user to run as, or None: the operator at the machine, who owns the store files anyway."""
    if as_user is None:
        return None
    from rag.auth import identity_as
    from rag.users import UserDirectory

    try:
        return identity_as(UserDirectory.from_settings(settings), as_user)
    except RagError as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None


def _rel(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


class _ChunkRate(ProgressColumn):
    def render(self, task) -> Text:  # type: ignore[override]
        chunks = task.fields.get("chunks", 0)
        elapsed = task.elapsed or 0
        rate = chunks / elapsed if elapsed > 0 else 0.0
        return Text(f"{chunks} chunks · {rate:.1f}/s", style="cyan")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest (folders are walked).")],
    groups: Annotated[str | None, typer.Option(help=(
        "Comma-separated groups allowed to read the documents that no .rag-access.toml rule covers. Policy files "
        "in the ingested folders win: they are read from each document's folder up to the folder given here (a "
        "file given on its own: only its folder's). Without --groups such documents get RAG_DEFAULT_GROUPS, "
        "default \"admins\": nobody but admins. See `rag access PATH`."))] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; print only failures.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
) -> None:
    """Ingest files and folders: new files are added, changed ones replaced, deleted ones removed."""
    from ingest import ingest as run_ingest

    from rag.access import check_group, split_groups

    settings = _settings()
    group_list = split_groups(groups) or None
    try:
        for g in group_list or ():
            check_group(g, "--groups: ")
    except ValueError as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None
    show_bar = not quiet and not as_json and err.is_terminal
    bar = Progress(
        TextColumn("[bold]ingest"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[files]}"),
        _ChunkRate(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
        console=err, transient=True, disable=not show_bar,
    )
    task = bar.add_task("ingest", total=None, files="", chunks=0, current="")

    def on_progress(p) -> None:
        bar.update(task, total=max(p.bytes_total, 1), completed=p.bytes_done, chunks=p.chunks_done,
                   files=f"{p.files_done}/{p.files_total} files",
                   current=Path(p.current).name[:40] if p.current else "")

    try:
        with bar:
            report = run_ingest(paths, settings, groups=group_list, progress=on_progress)
    except KeyboardInterrupt:
        err.print("interrupted: documents finished so far are stored; run the same command again to continue")
        raise typer.Exit(130) from None
    except RagError as exc:
        raise _fail(exc) from None

    if as_json:
        d = report.to_dict()
        for key in ("failed", "skipped", "warnings"):
            d[key] = [{"path": f["path"], "reason": f["reason"]} for f in d[key]]
        out.print_json(json.dumps(d))
    else:
        for f in report.failed:
            err.print(Text.assemble(("failed ", "bold red"), (_rel(f.path), "bold"), f": {f.reason}"))
        if not quiet:
            for f in report.warnings:
                err.print(Text.assemble(("warning ", "yellow"), (_rel(f.path), "bold"), f": {f.reason}"))
            if report.skipped:
                err.print(f"skipped {len(report.skipped)} unsupported file(s)"
                          + (": " + ", ".join(_rel(f.path) for f in report.skipped[:5]) if report.skipped else "")
                          + (" …" if len(report.skipped) > 5 else ""))
            rate = report.chunks / report.seconds if report.seconds else 0
            out.print(
                f"[bold]{report.added}[/] added, [bold]{report.updated}[/] updated, "
                f"[bold]{report.unchanged}[/] unchanged, [bold]{report.removed}[/] removed, "
                f"[bold]{report.access_updated}[/] access updated, "
                f"[bold {'red' if report.failed else ''}]{len(report.failed)}[/] failed · "
                f"{report.chunks} chunks written, {report.chunks_removed} removed · "
                f"{report.seconds:.1f}s ({rate:.1f} chunks/s)"
            )
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def access(
    paths: Annotated[list[Path], typer.Argument(help="Indexed documents, or folders: every document below.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
) -> None:
    """Who may read indexed documents, what decided it (policy file and rule, --groups or RAG_DEFAULT_GROUPS),
    and whether the policy changed since the last ingest (then run `rag ingest` again to apply it)."""
    import os

    from rag.access import AccessPolicy
    from rag.store import open_store

    settings = _settings()
    try:
        with open_store(settings) as store:
            registry = store.documents()
    except RagError as exc:
        raise _fail(exc) from None
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for raw in paths:
        p = str(raw.expanduser().absolute())
        found = sorted(k for k in registry if k == p or k.startswith(p.rstrip(os.sep) + os.sep))
        if not found:
            missing.append(p)
        for k in found:
            rec = registry[k]
            row: dict[str, Any] = {"path": k, "groups": sorted(rec.groups), "access": rec.access or None}
            if not rec.access:  # ingested before access decisions were recorded
                row["current"] = row["stale"] = None
                rows.append(row)
                continue
            try:
                now = AccessPolicy.from_record(rec.access).record(k, rec.access["root"])
            except (RagError, ValueError, KeyError) as exc:  # a policy file broken since: say so, do not guess
                row["current"], row["stale"], row["error"] = None, True, str(exc)
            else:
                row["current"] = now
                row["stale"] = now["signature"] != rec.access.get("signature") or now["groups"] != row["groups"]
            rows.append(row)
    if as_json:
        out.print_json(json.dumps({"documents": rows, "not_indexed": missing}))
    else:
        for r in rows:
            out.print(Text.assemble((_rel(r["path"]), "bold"), ": ",
                                    (", ".join(r["groups"]) or "nobody (empty group list)", "cyan")))
            a = r["access"]
            if not a:
                out.print(Text("    ingested before access decisions were recorded: run rag ingest again to record "
                               "and apply the policy", style="yellow"))
                continue
            out.print(Text("    " + a["reason"], style="dim"))
            if r.get("error"):
                out.print(Text(f"    policy now broken: {r['error']}", style="red"))
            elif r["stale"]:
                cur = r["current"]
                now = f" (it would now be {', '.join(cur['groups']) or 'nobody'}: {cur['reason']})" if cur else ""
                out.print(Text(f"    the policy changed since the last ingest{now}; run rag ingest {_rel(a['root'])}",
                               style="yellow"))
        for m in missing:
            err.print(Text.assemble(("not indexed ", "yellow"), _rel(m)))
    raise typer.Exit(1 if missing else 0)


@app.command()
def forget(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to remove from the index.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Remove documents from the index (the files themselves are not touched)."""
    from ingest import forget as run_forget

    try:
        report = run_forget(paths, _settings())
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"removed": report.removed, "chunks_removed": report.chunks_removed,
                                   "failed": [{"path": f.path, "reason": f.reason} for f in report.failed]}))
    else:
        for f in report.failed:
            err.print(Text.assemble(("not found ", "yellow"), _rel(f.path), f": {f.reason}"))
        out.print(f"removed {report.removed} document(s), {report.chunks_removed} chunks")
    raise typer.Exit(0 if not report.failed else 1)


def _snippet(text: str, width: int = 240) -> str:
    from rag.citations import snippet

    return snippet(text, width)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many chunks to show.")] = 5,
    mode: Annotated[str | None, typer.Option(help="dense, sparse or hybrid (default: RAG_RETRIEVAL_MODE).")] = None,
    rerank: Annotated[bool | None, typer.Option("--rerank/--no-rerank", help="Reorder the candidates with the "
                                                "configured reranker (default: on when RAG_RERANK_MODEL or "
                                                "RAG_RERANK_URL is set).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    as_user: AsUser = None,
) -> None:
    """Show what retrieval finds for a query (path, page, score, snippet). No LLM involved."""
    from rag.embeddings import get_embedder
    from rag.retrieval import Retriever
    from rag.store import open_store

    settings = _settings()
    if mode is not None:
        if mode not in RETRIEVAL_MODES:
            err.print(Text(f"error: --mode must be dense, sparse or hybrid, not {mode!r}", style="bold red"))
            raise typer.Exit(2)
        settings = settings.model_copy(update={"retrieval_mode": mode})
    _check_rerank_option(rerank, settings)
    user = _identity(settings, as_user)
    try:
        embedder = get_embedder(settings)
        with open_store(settings) as store:
            overrides: dict[str, Any] = {"reranker": None} if rerank is False else {}
            found = Retriever.from_settings(settings, store, embedder, top_k=top_k, min_score=float("-inf"),
                                            **overrides).retrieve(query, groups=user.groups_any if user else None)
    except RagError as exc:
        raise _fail(exc) from None
    _audit_search(settings, user, query, found)
    results = [{"path": p.path, "page": p.page_start, "score": round(p.score, 4), "snippet": _snippet(p.text),
                "section": p.section, "relevant": p.score >= settings.min_score}
               | ({"rerank_score": round(p.rerank_score, 4)} if p.rerank_score is not None else {})
               for p in found.passages]
    if as_json:
        out.print_json(json.dumps({"query": query, "results": results, "min_score": settings.min_score,
                                   "seconds": round(found.seconds, 4), "reranker": found.reranker,
                                   "reranked": found.reranked, "rerank_seconds": round(found.rerank_seconds, 4)}))
        return
    if not results:
        out.print("Nothing found: the index is empty. Run [bold]rag ingest PATH[/] first.")
        return
    if found.reranker:
        out.print(Text(f"reranked by {found.reranker}: best {found.reranked} candidates in "
                       f"{found.rerank_seconds:.2f} s (rerank score, then cosine)", style="dim"))
    for i, r in enumerate(results, 1):
        where = _rel(r["path"]) + (f", p. {r['page']}" if r["page"] else "")
        style = "green" if r["relevant"] else "dim"
        rr = f"{r['rerank_score']:.3f} " if "rerank_score" in r else ""
        out.print(Text.assemble((f"{i}. ", "bold"), (rr, "bold cyan"), (f"{r['score']:.3f} ", style), (where, "bold"),
                                (f" — {r['section']}" if r["section"] else "", "italic")))
        out.print(Text("   " + r["snippet"], style="" if r["relevant"] else "dim"))
    below = sum(1 for r in results if not r["relevant"])
    if below:
        out.print(Text(f"({below} result(s) below the relevance threshold {settings.min_score}: RAG_MIN_SCORE)",
                       style="dim"))


def _check_rerank_option(rerank: bool | None, settings: Settings) -> None:
    if rerank and not (settings.rerank_url or settings.rerank_model):
        err.print(Text("error: --rerank needs a reranker: set RAG_RERANK_MODEL to a local cross-encoder folder or "
                       "RAG_RERANK_URL to a reranking endpoint", style="bold red"))
        raise typer.Exit(2)


def _audit_search(settings: Settings, user, query: str, found) -> None:
    from rag.audit import AuditLog

    log = AuditLog.from_settings(settings)
    if log is not None:
        try:
            log.record("search", user=user.name if user else None, question=query,
                       cited=list(dict.fromkeys(p.path for p in found.passages)),
                       latency_ms=found.seconds * 1000)
        except RagError as exc:
            err.print(Text(f"warning: audit log: {exc}", style="yellow"))


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where the index is and what it holds."""
    from rag.status import index_info
    from rag.store import open_store

    settings = _settings()
    t0 = time.perf_counter()
    try:
        store = open_store(settings)
        try:
            info = index_info(store, settings)
        finally:
            store.close()
    except RagError as exc:
        raise _fail(exc) from None
    info |= {
        "llm": _llm_info(settings),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(show_header=False, box=None)
    for k in ("backend", "location", "collection", "documents", "chunks", "pages", "embedding_model",
              "embedding_dimension", "embedding_backend", "retrieval_mode", "reranker"):
        table.add_row(k.replace("_", " "), str(info[k]))
    if info["last_ingest"]:
        table.add_row("last ingest", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["last_ingest"])))
    llm = info["llm"]
    if len(llm["endpoints"]) > 1:
        table.add_row("llm routing", f"{llm['routing']} over {len(llm['endpoints'])} endpoints")
        for i, e in enumerate(llm["endpoints"], 1):
            if e["healthy"]:
                row: str | Text = (f"{e['base_url']} — {e['model']} ({e['kind']}), priority {e['priority']}, "
                                   f"context window {e['context_window']} ({e['context_source']}), "
                                   f"token counting: {e['tokenizer']}")
            else:
                row = Text(f"{e['base_url']} — priority {e['priority']}, unavailable: {e['error']}", style="yellow")
            table.add_row(f"llm endpoint {i}", row)
    else:
        table.add_row("llm endpoint", llm["base_url"])
        if llm["healthy"]:
            table.add_row("llm model", f"{llm['model']} ({llm['kind']})")
            table.add_row("context window", f"{llm['context_window']} — {llm['context_source']}")
            table.add_row("token counting", llm["tokenizer"])
        else:
            table.add_row("llm status", Text(f"unavailable: {llm['error']}", style="yellow"))
    out.print(table)
    if not info["documents"]:
        out.print("The index is empty: run [bold]rag ingest PATH[/] to add documents.")
    elif not info["sparse_vectors"] and settings.retrieval_mode != "dense":
        out.print(Text(f"RAG_RETRIEVAL_MODE={settings.retrieval_mode} needs keyword (BM25) vectors, which this index, "
                       "built by an older version, lacks: dense retrieval is used. To rebuild, ingest into a new "
                       "RAG_DATA_DIR or RAG_COLLECTION.", style="yellow"))


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, in any language the model speaks.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (answer, sources, usage, "
                                                          "timings, packing) instead of streaming.")] = False,
    all_sources: Annotated[bool, typer.Option("--all-sources", help="List every source given to the model, "
                                                                   "not only the cited ones.")] = False,
    as_user: AsUser = None,
) -> None:
    """Answer a question from the documents, streamed, then list the sources it cites."""
    from rag.chain import RAG

    settings = _settings()
    user = _identity(settings, as_user)
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
        raise _fail(exc) from None
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
        out.print(Text.assemble((f"[{c.n}] ", "bold cyan"), (_rel(c.path), "bold"),
                                (f", p. {c.page}" if c.page else "", ""),
                                (f" — {c.section}" if c.section else "", "italic")))
        out.print(Text("    " + _snippet(c.snippet, 200), style="dim"))


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


@app.command()
def chat(as_user: AsUser = None) -> None:
    """Interactive questions with history. /sources shows the last answer's sources, /reset forgets the
    conversation, /exit (or Ctrl-D) ends."""
    from rag.chain import RAG
    from rag.packing import Message

    settings = _settings()
    user = _identity(settings, as_user)
    try:
        rag = RAG.from_settings(settings)
    except RagError as exc:
        raise _fail(exc) from None
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


eval_app = typer.Typer(help="Measure retrieval and answer quality on your own or public data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[Path, typer.Argument(help="A BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/.")],
    split: Annotated[str, typer.Option(help="Which qrels/<split>.tsv to score.")] = "test",
    mode: Annotated[str, typer.Option(help="dense, sparse, hybrid or all.")] = "all",
    limit: Annotated[int | None, typer.Option(help="Only the first N queries (by id).")] = None,
    rerank: Annotated[bool | None, typer.Option("--rerank/--no-rerank", help="Also measure each mode with the "
                                                "configured reranker, as <mode>+rerank (default: when "
                                                "RAG_RERANK_MODEL or RAG_RERANK_URL is set).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object keyed by mode.")] = False,
) -> None:
    """nDCG@10, Recall@10/100, MRR@10 and latency per retrieval mode (and with reranking, when configured).
    The corpus is ingested through the normal pipeline into its own index under <data dir>/eval/<dataset>
    (reused on the next run)."""
    from evaluation.retrieval import MODES, build_index, evaluate, load_beir
    from rag.embeddings import get_embedder
    from rag.rerank import get_reranker

    modes = MODES if mode == "all" else (mode,)
    if any(m not in MODES for m in modes):
        err.print(Text(f"error: --mode must be dense, sparse, hybrid or all, not {mode!r}", style="bold red"))
        raise typer.Exit(2)
    settings = _settings()
    _check_rerank_option(rerank, settings)
    try:
        ds = load_beir(dataset, split)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None
    err.print(Text(f"{ds.name}: {len(ds.corpus):,} documents, {len(ds.queries):,} {split} queries", style="dim"))
    try:
        embedder = get_embedder(settings)
        report = build_index(ds, settings, embedder=embedder)
        err.print(Text(f"index: {report.added} added, {report.unchanged} unchanged, {len(report.failed)} failed "
                       f"({report.seconds:.0f} s)", style="dim"))
        reranker = get_reranker(settings) if rerank is not False else None
        if reranker is not None:
            err.print(Text(f"reranker: {reranker.name}, over the best {settings.rerank_candidates} chunks "
                           "(RAG_RERANK_CANDIDATES)", style="dim"))
        results = evaluate(ds, settings, modes, embedder=embedder, limit=limit, reranker=reranker)
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps(results))
        return
    table = Table("mode", "nDCG@10", "Recall@10", "Recall@100", "MRR@10", "p50 ms", "p95 ms")
    for m, r in results.items():
        table.add_row(m, f"{r['ndcg@10']:.4f}", f"{r['recall@10']:.4f}", f"{r['recall@100']:.4f}",
                      f"{r['mrr@10']:.4f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}")
    out.print(table)


@eval_app.command("answers")
def eval_answers(
    qa_file: Annotated[Path, typer.Argument(help="JSON lines: question, answers (references; [] = not in the "
                                                 "documents), optional source and page.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N questions.")] = None,
    results_file: Annotated[Path | None, typer.Option("--out", help="Write each question's answer and scores "
                                                                    "here (JSON lines).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Ask every question through the whole chain (configured index and LLM endpoint) and score the answers:
    exact match, token F1, citation validity, expected source found and cited, refusals, latency."""
    from evaluation.answers import evaluate_answers, load_qa, write_results
    from rag.chain import RAG

    settings = _settings()
    try:
        items = load_qa(qa_file)[:limit] if limit else load_qa(qa_file)
    except (OSError, ValueError) as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None

    def on_item(i: int, r) -> None:
        mark = "error" if r.error else ("refused" if r.refused else f"F1 {r.f1:.2f}" if r.f1 is not None else "answered")
        err.print(Text(f"[{i + 1}/{len(items)}] {mark:>9}  {r.question}", style="dim"))

    try:
        with RAG.from_settings(settings) as rag:
            summary, results = evaluate_answers(rag, items, on_item=on_item)
            summary["model"] = rag.endpoint.info.model
    except RagError as exc:
        raise _fail(exc) from None
    if results_file:
        write_results(results_file, results)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table("metric", "value", show_header=False)
    for k, v in summary.items():
        table.add_row(k.replace("_", " "), "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)
    for r in results:
        if r.error:
            out.print(Text(f"error on {r.question!r}: {r.error}", style="yellow"))


@app.command()
def sizing(
    model: Annotated[str, typer.Argument(help="A built-in model (e.g. Llama-3.1-70B; a wrong name lists them) or "
                                              "the path of a Hugging Face config.json or model folder.")],
    dtype: Annotated[str | None, typer.Option(help="Weight precision: bf16, fp16, fp8, int8, int4, awq or gptq "
                                                   "(default: bf16, or the checkpoint's own quantization).")] = None,
    context: Annotated[int | None, typer.Option(help="Tokens per sequence, prompt + answer (vLLM --max-model-len; "
                                                     "default: 8192, or the model's maximum if smaller).")] = None,
    concurrency: Annotated[int, typer.Option(help="Sequences served at the same time (vLLM --max-num-seqs).")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="KV cache precision: fp16 or fp8 "
                                                             "(vLLM --kv-cache-dtype).")] = "fp16",
    params: Annotated[str | None, typer.Option(help="Parameter count, e.g. 8B or 7.2e9: overrides the built-in "
                                                    "count or the estimate from config.json.")] = None,
    utilization: Annotated[float, typer.Option("--gpu-memory-utilization",
                                               help="Share of each GPU vLLM may take.")] = 0.9,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
) -> None:
    """How many GPUs a model needs: weights + 20 % headroom + KV cache (context x concurrency), the cards of a
    catalogue that hold it and with how many for tensor parallelism, and the vllm / ollama command lines.
    Sizes are in GB = 10^9 bytes."""
    from rag.sizing import find_model, parse_params, size

    try:
        spec = find_model(model)
        s = size(spec, dtype, context, concurrency, kv_dtype, utilization,
                 params=parse_params(params) if params else None)
    except RagError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps(s.to_dict()))
        return
    _print_sizing(s)


def _print_sizing(s) -> None:
    from rag.sizing import precision

    m = s.model
    seqs = f"{s.concurrency} sequence{'s' if s.concurrency > 1 else ''}"
    out.print(Text.assemble((m.name, "bold"), f" · {m.params / 1e9:.2f}B parameters ({m.source}) · {s.dtype} "
                            f"weights · {s.kv_dtype} KV cache · {s.context:,} tokens × {seqs}"))
    bytes_per = s.weights_gb * 1e9 / m.params
    kv_b = 1 if s.kv_dtype == "fp8" else 2
    table = Table("", "GB", "how", box=None, title_justify="left", title="Memory (GB = 10⁹ bytes)",
                  title_style="bold")
    table.add_row("weights", f"{s.weights_gb:.2f}", f"{m.params / 1e9:.2f}B × {bytes_per:.2f} bytes"
                  + ("" if s.dtype in ("bf16", "fp16") else " (embeddings stay at 16 bit, scales included)"))
    table.add_row("headroom", f"{s.headroom_gb:.2f}", "+20 % of the weights: activations, CUDA graphs, buffers")
    table.add_row("KV cache", f"{s.kv_cache_gb:.2f}",
                  f"2 × {m.layers} layers × {m.kv_heads} KV heads × {m.head_dim} dims × {kv_b} bytes "
                  f"× {s.context:,} tokens × {s.concurrency}")
    table.add_row(Text("total", style="bold"), Text(f"{s.total_gb:.2f}", style="bold"),
                  "weights + headroom + KV cache")
    table.add_row("rule of thumb", f"{s.rule_of_thumb_gb:.2f}",
                  f"{m.nominal_params / 1e9:g}B × {precision(s.dtype).bytes:g} bytes "
                  "+ 20 % (the size in the name, no KV cache)")
    out.print(table)

    gpus = Table("GPU", "memory", "GPUs", "layout", "per GPU", f"budget ({s.gpu_memory_utilization:.0%})",
                 f"sequences of {s.context:,}", title="GPUs (sizes in GB)", title_justify="left", title_style="bold")
    for f in s.gpus:
        layout = "one GPU" if f.count == 1 else f"TP {f.tensor_parallel}" + (
            f" × PP {f.pipeline_parallel} ({f.nodes} nodes)" if f.pipeline_parallel > 1 else "")
        style = "green" if f.count == 1 else ("yellow" if f.nodes > 1 else "")
        gpus.add_row(f.gpu, f"{f.memory_gb:g}", str(f.count), layout, f"{f.per_gpu_gb:.1f}", f"{f.budget_gb:.1f}",
                     str(f.max_sequences), style=style)
    for name in s.no_fit:
        gpus.add_row(name, "", "", "does not fit on 4 nodes of 8", "", "", "", style="red")
    out.print(gpus)
    if s.not_on_one_gpu:
        out.print(Text("No GPU of the catalogue holds it alone." if len(s.not_on_one_gpu) == len(s.gpus) + len(
            s.no_fit) else f"Not on one GPU: {', '.join(s.not_on_one_gpu)}", style="dim"))

    out.print(Text("\nvLLM", style="bold"))
    layouts: dict[str, list[str]] = {}
    for f in s.gpus:
        layouts.setdefault(f.vllm_command, []).append(f.gpu)
    for command, names in layouts.items():
        f = next(f for f in s.gpus if f.vllm_command == command)
        what = "1 GPU" if f.count == 1 else f"{f.count} GPUs" + (f" on {f.nodes} nodes" if f.nodes > 1 else "")
        out.print(Text(f"  {what} ({', '.join(names)}):", style="dim"))
        out.print(f"    {command}", markup=False, highlight=False)
    if not s.gpus:
        out.print("  no layout fits: lower --context or --concurrency, or pick a smaller --dtype")

    _print_ollama(s.ollama)
    if s.notes:
        out.print(Text("\nNotes", style="bold"))
        for note in s.notes:
            out.print(Text(f"  • {note}", style="dim"))


def _print_ollama(o) -> None:
    out.print(Text("\nOllama, one user", style="bold"))
    if o is None:
        out.print("  no Ollama tag is known for this model: import its GGUF with a Modelfile, sized as vLLM above")
        return
    out.print(f"  {o.tag}: {o.weights_gb:.1f} GB weights + 20 % + {o.kv_cache_gb:.1f} GB KV cache "
              f"= {o.total_gb:.1f} GB")
    out.print(f"    {o.command}", markup=False, highlight=False)
    if o.one_gpu:
        out.print(Text(f"  fits one {', '.join(o.one_gpu)}", style="dim"))
    if o.split:
        split = ", ".join(f"{d['count']}× {d['gpu']}" for d in o.split)
        out.print(Text(f"  {'on smaller cards' if o.one_gpu else 'no single card holds it'}: Ollama spreads the "
                       f"layers over {split} of one machine (no tensor parallelism: one GPU works at a time)",
                       style="dim"))
    if not o.one_gpu and not o.split:
        out.print(Text("  too large for Ollama on one machine: use vLLM", style="yellow"))


app.add_typer(users_app, name="users")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 serves the network.")] = "127.0.0.1",
    mcp: Annotated[bool, typer.Option("--mcp", help="Also serve the MCP server (rag mcp) at /mcp, with the same "
                                                    "keys.")] = False,
) -> None:
    """The RAG as an OpenAI-compatible API: /v1/chat/completions (streaming or not; the model names the
    collection), /v1/models, /healthz, /metrics (Prometheus). Keys: rag users key NAME."""
    import uvicorn

    from rag.api import create_app

    settings = _settings()
    if settings.auth == "none" and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(Text(f"warning: RAG_AUTH=none on {host}: anyone who reaches port {port} reads every document "
                       "without a key. Set RAG_AUTH=password and give users keys (rag users key NAME).",
                       style="yellow"))
    names = settings.api_collections or [settings.collection]
    err.print(Text(f"OpenAI-compatible API on http://{host}:{port}/v1 · models: {', '.join(names)} · "
                   f"auth: {settings.auth}" + (f" · MCP on http://{host}:{port}/mcp" if mcp else ""), style="bold"))
    uvicorn.run(create_app(settings, mcp=mcp, host=host), host=host, port=port, log_level="warning", access_log=False)


@app.command()
def mcp(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP (shared use; each request "
                                                      "identified by its API key) instead of stdio.")] = False,
    port: Annotated[int, typer.Option(help="TCP port (with --http).")] = 8765,
    host: Annotated[str, typer.Option(help="Interface (with --http); 0.0.0.0 serves the network.")] = "127.0.0.1",
    as_user: AsUser = None,
) -> None:
    """The documents as tools for agents (Model Context Protocol): search, ask, get_source, list_collections,
    and the readable documents as resources. stdio by default (a desktop client or IDE starts `rag mcp`);
    --http for shared use at http://HOST:PORT/mcp with Authorization: Bearer <key> (rag users key NAME)."""
    from rag.auth import local_identity
    from rag.mcp_server import create_server, serve_http

    settings = _settings()
    if http and as_user is not None:
        err.print(Text("error: --as is for stdio; over --http each request is the user of its API key",
                       style="bold red"))
        raise typer.Exit(2)
    if http and settings.auth == "none" and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(Text(f"warning: RAG_AUTH=none on {host}: anyone who reaches port {port} reads every document "
                       "without a key. Set RAG_AUTH=password and give users keys (rag users key NAME).",
                       style="yellow"))
    # stdio: whoever starts the process owns the store files anyway; --as narrows what the agent sees.
    user = None if http else (_identity(settings, as_user) or local_identity())
    try:
        server = create_server(settings, user=user)
    except RagError as exc:
        raise _fail(exc) from None
    if http:
        names = settings.api_collections or [settings.collection]
        err.print(Text(f"MCP server on http://{host}:{port}/mcp · collections: {', '.join(names)} · "
                       f"auth: {settings.auth}", style="bold"))
        serve_http(server, host=host, port=port)
    else:
        # stdout is the protocol channel: nothing else may be printed there.
        server.run("stdio")


llm_app = typer.Typer(help="The local demo LLM (SmolLM2-135M; production uses vLLM, Ollama, llama.cpp...).",
                      no_args_is_help=True)
app.add_typer(llm_app, name="llm")


EngineOption = Annotated[str, typer.Option(
    "--engine", help="vllm (the default: batches concurrent chats) or llamacpp (small, one chat at a time).")]


def _engine(name: str | None):
    from rag.local_llm import DEFAULT_ENGINE, get_engine

    try:
        return get_engine(name or DEFAULT_ENGINE)
    except RagError as exc:
        raise _fail(exc) from None


def _say(line: str) -> None:
    err.print(Text(line, style="dim"))


@llm_app.command("install")
def llm_install(engine: EngineOption = "", rebuild: Annotated[bool, typer.Option(
        help="Build/install again even if present (a broken or non-portable install).")] = False) -> None:
    """Install an engine for the demo model (vLLM: its own venv, ~3 min once; llama.cpp: a portable build,
    ~9 min once), then check it with one tiny completion."""
    from rag.local_llm import llamacpp, selfcheck, vllm

    eng = _engine(engine)
    try:
        if rebuild and eng.name == "vllm":
            vllm.remove()
        if rebuild and eng.name == "llamacpp":
            llamacpp.install(_say, force=True)
        eng.install(_say)
        result = selfcheck.run(eng, say=_say) if rebuild else selfcheck.run_once(eng, say=_say)
    except RagError as exc:
        raise _fail(exc) from None
    if result is None:
        out.print(f"{eng.title}: installed (checked on this CPU before)")
    else:
        out.print(f"{eng.title}: installed and checked (started in {result.start_s:.1f} s, first completion in "
                  f"{result.completion_s:.2f} s)")


@llm_app.command("check")
def llm_check(engine: EngineOption = "") -> None:
    """Start the engine on a free port, ask for one tiny completion, stop it: exit 1 with the reason if the
    server cannot start or crashes (a build that does not suit this CPU)."""
    from rag.local_llm import selfcheck

    eng = _engine(engine)
    if not eng.installed():
        raise _fail(RagError(f"{eng.title} is not installed: rag llm install --engine {eng.name}"))
    try:
        result = selfcheck.run(eng)
    except RagError as exc:
        raise _fail(exc) from None
    out.print(f"{eng.title}: ok (started in {result.start_s:.1f} s, first completion in {result.completion_s:.2f} s)")


@llm_app.command("serve")
def llm_serve(
    engine: EngineOption = "",
    port: Annotated[int, typer.Option(help="Port of the OpenAI-compatible API.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 = every interface).")] = "127.0.0.1",
    ctx: Annotated[int, typer.Option("--ctx", help="Context window in tokens (the model is trained on 8192).")] = 2048,
    threads: Annotated[int | None, typer.Option(help="CPU threads (llama.cpp; default: up to 2).")] = None,
    max_restarts: Annotated[int, typer.Option(help="Restarts after a crash within 10 minutes before giving "
                                                   "up (0 = never restart).")] = 5,
) -> None:
    """Serve the packaged tiny demo model (SmolLM2-135M) until Ctrl-C: an OpenAI-compatible API on --port,
    restarted if it crashes. It answers weakly; for real use point RAG_LLM_BASE_URL at vLLM, Ollama or
    llama.cpp with a real model. Installs the engine on first use."""
    from rag.local_llm import MODEL_ALIAS
    from rag.local_llm.supervisor import Supervisor, status_path

    eng = _engine(engine)
    settings = _settings()
    log = sys.stderr if _state["verbose"] else None
    # die_with_parent: started (and restarted) from this main thread, the server gets SIGTERM even if we are
    # SIGKILLed; it runs in a session of its own, so nothing else would stop it.
    supervisor = Supervisor(lambda: eng.server(host=host, port=port, n_ctx=ctx, threads=threads, log=log,
                                               die_with_parent=True),
                            engine=eng.name, start_timeout=eng.start_timeout, max_restarts=max_restarts,
                            status_path=status_path(settings.data_dir), say=_say)
    # A supervisor (scripts/demo.sh, systemd) stops us with SIGTERM, a closed terminal with SIGHUP: stop the
    # server too, never orphan it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        if not eng.installed():
            eng.install(_say)
        _say(f"starting the demo LLM (SmolLM2-135M, a tiny model for demos and tests) with {eng.title} on "
             f"port {port}…")
        server = supervisor.start()
    except RagError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        supervisor.stop()
        raise typer.Exit(130) from None
    out.print(f"demo LLM ready: [bold]{server.base_url}[/] (model {MODEL_ALIAS}, {eng.title}, context {ctx} "
              f"tokens). Use it with RAG_LLM_BASE_URL={server.base_url} — Ctrl-C stops it.")
    sys.stdout.flush()
    try:
        code = supervisor.run()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 lets colleagues connect.")] = "127.0.0.1",
) -> None:
    """Start the chat UI in the browser (Streamlit) over the configured index and LLM; Ctrl-C stops it."""
    import os

    import ui as ui_pkg

    settings = _settings()
    app_path = Path(ui_pkg.__file__).parent / "app.py"
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    llms = ", ".join(e.base_url for e in settings.llm_endpoint_list())
    out.print(f"onprem-rag UI: [bold]http://{shown}:{port}[/] (LLM {llms}, "
              f"index {settings.qdrant_url or settings.store_dir}) — Ctrl-C stops it.")
    sys.stdout.flush()
    # No telemetry, no file watching, no tracebacks in the browser (they go to this terminal).
    args = [sys.executable, "-m", "streamlit", "run", str(app_path),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.maxUploadSize", str(max(1, int(settings.max_file_mb))),
            "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal"]
    # exec: Ctrl-C and the demo script's kill reach Streamlit itself.
    os.execv(sys.executable, args)


def _llm_info(settings: Settings) -> dict:
    """The first healthy endpoint's discovery (the only one's, usually) at the top level, every endpoint's under
    "endpoints"; never includes an API key."""
    from rag.pool import EndpointPool

    pool = EndpointPool.from_settings(settings, timeout=10, connect_timeout=3)
    try:
        endpoints = [m.endpoint.info.to_dict() | {"priority": m.priority} for m in pool.members]
    finally:
        pool.close()
    first = next((e for e in endpoints if e["healthy"]), endpoints[0])
    return {**{k: v for k, v in first.items() if k != "priority"}, "routing": settings.llm_routing,
            "endpoints": endpoints}


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""`rag ingest`, `rag access`, `rag forget`, `rag status`: documents into the index and what it holds."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
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

from rag.errors import RagError
from rag.settings import REMOVALS_ALWAYS_ALLOWED, RemovalLimit, Settings
from rag.cli.common import err, fail, load_settings, out, rel
from rag.index.store.base import describe_index


class _ChunkRate(ProgressColumn):
    def render(self, task) -> Text:
        chunks = task.fields.get("chunks", 0)
        elapsed = task.elapsed or 0
        rate = chunks / elapsed if elapsed > 0 else 0.0
        return Text(f"{chunks} chunks · {rate:.1f}/s", style="cyan")


# Typer evaluates the option annotations as strings, so the help is built here rather than inline.
_MAX_REMOVE_HELP = (
    "The most documents this run may remove from a folder given here because their files are gone: a percentage "
    "of the folder's documents (\"100%\" = no limit) or a number of documents. Beyond it they all stay and the "
    f"folder is reported as failed. Default RAG_INGEST_MAX_REMOVE ({Settings.model_fields['ingest_max_remove'].default}"
    f"; a percentage counts only when more than {REMOVALS_ALWAYS_ALLOWED} would go).")


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest (folders are walked).")],
    groups: Annotated[str | None, typer.Option(help=(
        "Comma-separated groups allowed to read the documents that no .rag-access.toml rule covers. Policy files "
        "in the ingested folders win: they are read from each document's folder up to the folder given here (a "
        "file given on its own: only its folder's). Without --groups such documents get RAG_DEFAULT_GROUPS, "
        "default \"admins\": nobody but admins. See `rag access PATH`."))] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; print only failures.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
    ray: Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help=(
        "Parse, chunk and embed on a Ray cluster (needs the \\[ray] extra): its address (host:port, auto, "
        "ray://host:10001), or \"local\" to start one on this machine for the run. This process still writes "
        "the store. Default RAG_INGEST_RAY."))] = None,
    max_remove: Annotated[str | None, typer.Option("--max-remove", metavar="LIMIT", help=_MAX_REMOVE_HELP)] = None,
) -> None:
    """Ingest files and folders: new files are added, changed ones replaced, deleted ones removed."""
    from ingest import ingest as run_ingest

    settings = load_settings()
    if ray:
        settings = settings.model_copy(update={"ingest_ray": ray})
    if max_remove is not None:
        settings = settings.model_copy(update={"ingest_max_remove": str(_checked_limit(max_remove))})
    group_list = _checked_groups(groups)
    try:
        with _ingest_progress(show=not quiet and not as_json and err.is_terminal) as on_progress:
            report = run_ingest(paths, settings, groups=group_list, progress=on_progress)
    except KeyboardInterrupt as exc:
        so_far = getattr(exc, "report", None)  # the pipeline's report so far (ingest/pipeline.py)
        if as_json and so_far is not None:
            _print_json_report(so_far)
        err.print("interrupted: documents finished so far are stored; run the same command again to continue")
        raise typer.Exit(130) from None
    except RagError as exc:
        raise fail(exc) from None
    if as_json:
        _print_json_report(report)
    else:
        _print_ingest_report(report, quiet)
    raise typer.Exit(0 if report.ok else 1)


def _checked_limit(text: str) -> RemovalLimit:
    try:
        return RemovalLimit.parse(text, "--max-remove")
    except ValueError as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None


def _checked_groups(groups: str | None) -> list[str] | None:
    from rag.security.access import split_groups
    from rag.types import check_group

    group_list = split_groups(groups) or None
    try:
        for g in group_list or ():
            check_group(g, "--groups: ")
    except ValueError as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None
    return group_list


@contextlib.contextmanager
def _ingest_progress(*, show: bool) -> Iterator[Callable[[Any], None]]:
    """The progress bar on stderr while ingesting (drawn only when ``show``); yields the progress callback."""
    bar = Progress(
        TextColumn("[bold]ingest"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[files]}"),
        _ChunkRate(), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
        console=err, transient=True, disable=not show,
    )
    task = bar.add_task("ingest", total=None, files="", chunks=0, current="")

    def on_progress(p) -> None:
        bar.update(task, total=max(p.bytes_total, 1), completed=p.bytes_done, chunks=p.chunks_done,
                   files=f"{p.files_done}/{p.files_total} files",
                   current=Path(p.current).name[:40] if p.current else "")

    with bar:
        yield on_progress


def _print_ingest_report(report, quiet: bool) -> None:
    for f in report.failed:
        err.print(Text.assemble(("failed ", "bold red"), (rel(f.path), "bold"), f": {f.reason}"))
    if quiet:
        return
    for f in report.warnings:
        err.print(Text.assemble(("warning ", "yellow"), (rel(f.path), "bold"), f": {f.reason}"))
    links = [f for f in report.skipped if f.reason.startswith("symbolic link")]
    others = [f for f in report.skipped if f not in links]
    for what, found in (("unsupported or policy file(s)", others), ("symbolic link(s), not followed", links)):
        if found:
            err.print(f"skipped {len(found)} {what}: " + ", ".join(rel(f.path) for f in found[:5])
                      + (" …" if len(found) > 5 else "") + " (--json lists each reason)")
    rate = report.chunks / report.seconds if report.seconds else 0
    out.print(
        f"[bold]{report.added}[/] added, [bold]{report.updated}[/] updated, "
        f"[bold]{report.unchanged}[/] unchanged, [bold]{report.removed}[/] removed, "
        f"[bold]{report.access_updated}[/] access updated, "
        f"[bold {'red' if report.failed else ''}]{len(report.failed)}[/] failed · "
        f"{report.chunks} chunks written, {report.chunks_removed} removed · "
        f"{report.seconds:.1f}s ({rate:.1f} chunks/s)"
    )
    if report.index and report.index["kind"] != "exact":  # a graph was (re)built at the end of the run
        out.print(f"index: {describe_index(report.index)}")


def access(
    paths: Annotated[list[Path], typer.Argument(help="Indexed documents, or folders: every document below.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
) -> None:
    """Who may read indexed documents, what decided it (policy file and rule, --groups or RAG_DEFAULT_GROUPS),
    and whether the policy changed since the last ingest (then run `rag ingest` again to apply it)."""
    from rag.index.store import open_store

    settings = load_settings()
    try:
        with open_store(settings) as store:
            registry = store.documents()
    except RagError as exc:
        raise fail(exc) from None
    rows, missing = _access_rows(registry, paths)
    if as_json:
        out.print_json(json.dumps({"documents": rows, "not_indexed": missing}))
    else:
        for r in rows:
            _print_access_row(r)
        for m in missing:
            err.print(Text.assemble(("not indexed ", "yellow"), rel(m)))
    raise typer.Exit(1 if missing else 0)


def _print_json_report(report: Any) -> None:
    d = report.to_dict()
    for key in ("failed", "skipped", "warnings"):
        d[key] = [{"path": f["path"], "reason": f["reason"]} for f in d[key]]
    out.print_json(json.dumps(d))


def _access_rows(registry: dict[str, Any], paths: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per indexed document at or below each of ``paths``, and the paths under which nothing is indexed."""
    import os

    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for raw in paths:
        p = os.path.abspath(raw.expanduser())  # as the index records it: "a/../a" is "a"
        found = sorted(k for k in registry if k == p or k.startswith(p.rstrip(os.sep) + os.sep))
        if not found:
            missing.append(p)
        rows += [_access_row(k, registry[k]) for k in found]
    return rows, missing


def _access_row(path: str, rec) -> dict[str, Any]:
    """The groups stored for a document, the access decision recorded at ingest, and what the policy decides now."""
    from rag.security.access import AccessPolicy

    row: dict[str, Any] = {"path": path, "groups": sorted(rec.groups), "access": rec.access or None}
    if not rec.access:  # ingested before access decisions were recorded
        row["current"] = row["stale"] = None
        return row
    try:
        now = AccessPolicy.from_record(rec.access).record(path, rec.access["root"])
    except (RagError, ValueError, KeyError) as exc:  # a policy file broken since: say so, do not guess
        row["current"], row["stale"], row["error"] = None, True, str(exc)
    else:
        row["current"] = now
        row["stale"] = now["signature"] != rec.access.get("signature") or now["groups"] != row["groups"]
    return row


def _print_access_row(r: dict[str, Any]) -> None:
    out.print(Text.assemble((rel(r["path"]), "bold"), ": ",
                            (", ".join(r["groups"]) or "nobody (empty group list)", "cyan")))
    a = r["access"]
    if not a:
        out.print(Text("    ingested before access decisions were recorded: run rag ingest again to record "
                       "and apply the policy", style="yellow"))
        return
    out.print(Text("    " + a["reason"], style="dim"))
    if r.get("error"):
        out.print(Text(f"    policy now broken: {r['error']}", style="red"))
    elif r["stale"]:
        cur = r["current"]
        now = f" (it would now be {', '.join(cur['groups']) or 'nobody'}: {cur['reason']})" if cur else ""
        out.print(Text(f"    the policy changed since the last ingest{now}; run rag ingest {rel(a['root'])}",
                       style="yellow"))


def forget(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to remove from the index.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Remove documents from the index (the files themselves are not touched)."""
    from ingest import forget as run_forget

    try:
        report = run_forget(paths, load_settings())
    except RagError as exc:
        raise fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"removed": report.removed, "chunks_removed": report.chunks_removed,
                                   "failed": [{"path": f.path, "reason": f.reason} for f in report.failed]}))
    else:
        for f in report.failed:
            err.print(Text.assemble(("not found ", "yellow"), rel(f.path), f": {f.reason}"))
        out.print(f"removed {report.removed} document(s), {report.chunks_removed} chunks")
    raise typer.Exit(0 if not report.failed else 1)


def build_index(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Build the index kind RAG_INDEX_KIND asks for (or auto picks) from the stored vectors: no re-ingest."""
    from rag.index.store import open_store

    settings = load_settings()
    t0 = time.perf_counter()
    try:
        with open_store(settings) as store:
            state = store.build_index()
    except RagError as exc:
        raise fail(exc) from None
    if as_json:
        out.print_json(json.dumps(state.to_dict() | {"seconds": round(time.perf_counter() - t0, 1)}))
    else:
        out.print(f"index: {describe_index(state.to_dict())} — {time.perf_counter() - t0:.1f} s")


def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where the index is and what it holds."""
    from rag.ops.status import index_info
    from rag.index.store import open_store

    settings = load_settings()
    t0 = time.perf_counter()
    try:
        store = open_store(settings)
        try:
            info = index_info(store, settings)
        finally:
            store.close()
    except RagError as exc:
        raise fail(exc) from None
    info |= {
        "llm": _llm_info(settings),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(show_header=False, box=None)
    for k in ("backend", "location", "collection", "documents", "chunks", "pages", "embedding_model",
              "embedding_dimension", "embedding_backend", "retrieval_mode", "reranker", "windows"):
        table.add_row(k.replace("_", " "), str(info[k]))
    if info["fusion"]:
        table.add_row("fusion", info["fusion"])
    table.add_row("index", describe_index(info["index"]))
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
            from rag.llm.local.supervisor import notice_for

            # The demo LLM's supervisor may know why (restarting after a crash, still loading, gave up).
            why = notice_for(settings.data_dir, [llm["base_url"]])
            table.add_row("llm status", Text(why or f"unavailable: {llm['error']}", style="yellow"))
    out.print(table)
    if not info["documents"]:
        out.print("The index is empty: run [bold]rag ingest PATH[/] to add documents.")
    elif not info["sparse_vectors"] and settings.retrieval_mode != "dense":
        out.print(Text(f"RAG_RETRIEVAL_MODE={settings.retrieval_mode} needs keyword (BM25) vectors, which this index, "
                       "built by an older version, lacks: dense retrieval is used. To rebuild, ingest into a new "
                       "RAG_DATA_DIR or RAG_COLLECTION.", style="yellow"))


def _llm_info(settings: Settings) -> dict:
    """The first healthy endpoint's discovery (the only one's, usually) at the top level, every endpoint's under
    "endpoints"; never includes an API key."""
    from rag.llm.pool import EndpointPool

    pool = EndpointPool.from_settings(settings, timeout=10, connect_timeout=3)
    try:
        endpoints = [m.endpoint.info.to_dict() | {"priority": m.priority} for m in pool.members]
    finally:
        pool.close()
    first = next((e for e in endpoints if e["healthy"]), endpoints[0])
    return {**{k: v for k, v in first.items() if k != "priority"}, "routing": settings.llm_routing,
            "endpoints": endpoints}

"""`rag eval retrieval|answers`: retrieval and answer quality on your own or public data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from rag.errors import RagError
from rag.cli.common import check_rerank_option, err, fail, load_settings, out


eval_app = typer.Typer(help="Measure retrieval and answer quality on your own or public data.", no_args_is_help=True)


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[Path, typer.Argument(help="A BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/.")],
    split: Annotated[str, typer.Option(help="Which qrels/<split>.tsv to score.")] = "test",
    mode: Annotated[str, typer.Option(help="dense, sparse, hybrid or all.")] = "all",
    limit: Annotated[int | None, typer.Option(help="Only the first N queries (by id).")] = None,
    rerank: Annotated[bool | None, typer.Option("--rerank/--no-rerank", help="Also measure each mode with the "
                                                "configured reranker, as <mode>+rerank (default: when "
                                                "RAG_RERANK_MODEL or RAG_RERANK_URL is set).")] = None,
    folds: Annotated[int | None, typer.Option(help=(
        "Also deal the queries into K folds (a fixed shuffle, the same for every mode) and report each metric's "
        "mean, spread and worst fold: tune on a setting that holds in every fold, not on one average."))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object keyed by mode.")] = False,
) -> None:
    """nDCG@10, Recall@10/100, MRR@10 and latency per retrieval mode (and with reranking, when configured).
    The corpus is ingested through the normal pipeline into its own index under <data dir>/eval/<dataset>
    (reused on the next run)."""
    from evaluation.retrieval import MODES, build_index, evaluate, load_beir
    from rag.index.embeddings import get_embedder
    from rag.retrieval.rerank import get_reranker

    modes = MODES if mode == "all" else (mode,)
    if any(m not in MODES for m in modes):
        err.print(Text(f"error: --mode must be dense, sparse, hybrid or all, not {mode!r}", style="bold red"))
        raise typer.Exit(2)
    settings = load_settings()
    check_rerank_option(rerank, settings)
    try:
        ds = load_beir(dataset, split)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        err.print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from None
    queries = min(limit, len(ds.queries)) if limit else len(ds.queries)
    if folds is not None and not 2 <= folds <= queries:
        err.print(Text(f"error: --folds must be between 2 and the number of queries ({queries}), not {folds}",
                       style="bold red"))
        raise typer.Exit(2)
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
        results = evaluate(ds, settings, modes, embedder=embedder, limit=limit, reranker=reranker, folds=folds)
    except RagError as exc:
        raise fail(exc) from None
    if as_json:
        out.print_json(json.dumps(results))
        return
    table = Table("mode", "nDCG@10", "Recall@10", "Recall@100", "MRR@10", "p50 ms", "p95 ms")
    for m, r in results.items():
        table.add_row(m, f"{r['ndcg@10']:.4f}", f"{r['recall@10']:.4f}", f"{r['recall@100']:.4f}",
                      f"{r['mrr@10']:.4f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}")
    out.print(table)
    if folds:
        out.print(_folds_table(results))


def _folds_table(results: dict[str, dict]) -> Table:
    """A row per fold and a column per mode, so that ten folds fit an 80-column terminal as well as two (a column
    per fold cut the mean and the worst fold, the figures a user reads, to "0.74…" at five)."""
    k = next(iter(results.values()))["folds"]["k"]
    table = Table("fold", *results, title=f"nDCG@10 per fold ({k} folds)")
    per = {m: r["folds"]["ndcg@10"] for m, r in results.items()}
    for i in range(k):
        table.add_row(f"f{i + 1}", *(f"{f['per_fold'][i]:.4f}" for f in per.values()))
    table.add_section()
    for label, key in (("mean", "mean"), ("stdev", "stdev"), ("worst", "min")):
        table.add_row(label, *(f"{f[key]:.4f}" for f in per.values()))
    return table


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
    from rag.generation.chain import RAG

    settings = load_settings()
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
        raise fail(exc) from None
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

"""`rag eval retrieval --folds K`'s table: every figure printed whole, however many folds, in 80 columns."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rag.cli.evaluate import _folds_table


@pytest.mark.parametrize("k", [2, 5, 10])
def test_fold_table_prints_every_figure_whole_in_80_columns(k):
    def folds(base: float) -> dict:
        per = [base + i / 1000 for i in range(k)]
        return {"folds": {"k": k, "ndcg@10": {"per_fold": per, "mean": sum(per) / k, "stdev": 0.0123,
                                              "min": min(per)}}}

    results = {"dense": folds(0.6), "sparse": folds(0.7), "hybrid": folds(0.75)}
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(_folds_table(results))
    text = buf.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for r in results.values():
        f = r["folds"]["ndcg@10"]
        for v in [*f["per_fold"], f["mean"], f["stdev"], f["min"]]:
            assert f"{v:.4f}" in text
    assert f" f{k} " in text and "worst" in text

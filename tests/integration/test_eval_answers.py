"""`rag eval answers`: SQuAD scores, refusal and citation bookkeeping, and a run through the real chain."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, _free_port, rag_cmd
from evaluation.answers import (
    QAItem,
    contains,
    exact_match,
    is_refusal,
    load_qa,
    normalize,
    score_item,
    summarize,
    token_f1,
)
from rag.generation.chain import Answer, Citation
from rag.generation.prompts import NO_ANSWER

SAMPLE_QA = ROOT / "tests" / "data" / "sample_qa.jsonl"


def test_squad_normalisation_and_scores():
    assert normalize("The  Chief Financial-Officer.") == "chief financialofficer"
    assert exact_match("the Chief Financial Officer", ["Chief Financial Officer"]) == 1.0
    assert exact_match("Chief Financial Officer Jonas", ["Chief Financial Officer"]) == 0.0
    # 3 shared tokens: precision 3/5, recall 3/3 -> F1 0.75; the best reference counts.
    assert token_f1("30 working days of vacation", ["thirty", "30 working days"]) == pytest.approx(0.75)
    assert token_f1("nothing in common", ["30 days"]) == 0.0
    assert contains("Employees get 30 working days per year.", ["30 working days"]) == 1.0
    assert contains("Employees get 130 working days.", ["30 working days"]) == 0.0  # whole words only


def _answer(text: str, cited: list[int], removed: list[int] = (), refused: bool = False) -> Answer:
    sources = [Citation(n, f"/docs/{name}", name, page, page, None, "", 0.5, n in cited)
               for n, name, page in ((1, "employee-handbook.pdf", 3), (2, "it-security.md", None))]
    return Answer("q", "q", text, [] if refused else sources, refused, {}, {"ttft": 0.5}, None, "m",
                  removed_citations=list(removed))


def test_refusals_are_recognised():
    assert is_refusal(_answer(NO_ANSWER, [], refused=True))
    assert is_refusal(_answer("The provided documents do not contain information about revenue.", []))
    assert is_refusal(_answer("The sources don't mention the CEO's salary.", []))
    assert is_refusal(_answer("I could not find this in the documents.", []))
    assert not is_refusal(_answer("Employees get 30 working days of vacation [1].", [1]))
    assert not is_refusal(_answer("Laptops that do not contain customer data may be shipped [2].", [2]))


def test_score_item_checks_citations_and_the_expected_source():
    item = QAItem("How many vacation days?", ["30 working days"], "employee-handbook.pdf", page=3)
    r = score_item(item, _answer("Employees get 30 working days [1][7].", cited=[1], removed=[7]), 2.0)
    assert (r.exact_match, r.contains, r.refused) == (0.0, 1.0, False)
    assert (r.citations_valid, r.citations_invalid) == (1, 1)
    assert r.source_retrieved and r.source_cited
    # The right file on the wrong page is not the expected source; cited but only the other file = not cited.
    wrong_page = score_item(QAItem("q", ["x"], "employee-handbook.pdf", page=9), _answer("x [1]", [1]), 1.0)
    assert wrong_page.source_retrieved is False
    other = score_item(item, _answer("30 working days [2]", [2]), 1.0)
    assert other.source_retrieved and not other.source_cited
    unanswerable = score_item(QAItem("Revenue?", []), _answer(NO_ANSWER, [], refused=True), 0.1)
    assert unanswerable.f1 is None and unanswerable.refused

    s = summarize([r, other, unanswerable])
    assert s["citation_validity"] == pytest.approx(2 / 3, abs=1e-4)  # [1] and [2] valid, [7] invented
    assert s["source_cited"] == pytest.approx(0.5)
    assert s["correct_refusal_rate"] == 1.0 and s["false_refusal_rate"] == 0.0
    assert s["answers_with_citation"] == 1.0


def test_load_qa_formats_and_errors(tmp_path):
    items = load_qa(SAMPLE_QA)
    assert len(items) == 10 and sum(not i.answerable for i in items) == 2
    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "a?", "answer": "one"}\n\n{"question": "b?", "answers": ["x"], "answerable": false}\n'
                 '{"q": "c?"}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:4: .*question"):
        load_qa(f)
    f.write_text('{"question": "a?", "answer": "one"}\n{"question": "b?", "answers": ["x"], "answerable": false}\n')
    a, b = load_qa(f)
    assert a.answers == ["one"] and not b.answerable


def test_rag_eval_answers_through_the_chain(sample_index, llm_server, tmp_path):
    qa = tmp_path / "qa.jsonl"
    lines = SAMPLE_QA.read_text().splitlines()
    qa.write_text("\n".join([lines[0], lines[4], lines[9]]) + "\n")  # two answerable, one about rockets
    env = {"RAG_DATA_DIR": str(sample_index.data_dir), "RAG_LLM_BASE_URL": llm_server,
           "RAG_LLM_CONTEXT_WINDOW": "1024", "RAG_LLM_MAX_TOKENS": "60", "RAG_LLM_TEMPERATURE": "0"}
    out = tmp_path / "results.jsonl"
    r = rag_cmd("eval", "answers", str(qa), "--json", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["questions"], s["errors"], s["answerable"], s["unanswerable"]) == (3, 0, 2, 1)
    assert s["model"] == "smollm2-135m-demo"
    # Retrieval puts both expected files in front of the model; nothing about rockets passes the threshold.
    assert s["source_retrieved"] == 1.0
    assert s["correct_refusal_rate"] == 1.0
    for key in ("exact_match", "f1", "contains", "citation_validity", "refusal_rate", "latency_p50_s",
                "latency_p95_s", "ttft_p50_s"):
        assert key in s
    assert 0 <= s["f1"] <= 1 and s["latency_p95_s"] >= s["latency_p50_s"] > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["question"] for row in rows] == [json.loads(x)["question"] for x in qa.read_text().splitlines()]
    assert rows[2]["refused"] and rows[0]["answer"]

    # A dead endpoint is an error (exit 3), not a score of zero.
    dead = rag_cmd("eval", "answers", str(qa), "--json", env={**env, "RAG_LLM_BASE_URL":
                                                             f"http://127.0.0.1:{_free_port()}/v1"})
    assert dead.returncode == 3, dead.stdout + dead.stderr
    assert "cannot reach" in dead.stderr

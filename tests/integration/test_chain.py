"""The whole answer path against real servers (llama-cpp-python and vLLM, both serving SmolLM2-135M) and the
ingested samples: every test here runs once per server.

The model is tiny and its answers weak: these tests check behaviour (streaming, citation mapping, refusal,
overflow recovery, error lines), not wisdom. Windows are kept small because prompt processing is slow here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from rag.errors import RagError
from rag.generation.chain import RAG, Answer
from rag.types import Message
from rag.llm.endpoints import EndpointError
from rag.generation.prompts import NO_ANSWER

from conftest import LLM_CTX, _free_port

WINDOW = 1024
MAX_TOKENS = 40


def make_rag(sample_index, base_url, **overrides) -> RAG:
    settings = sample_index.model_copy(update={"llm_base_url": base_url, "llm_context_window": WINDOW,
                                               "llm_max_tokens": MAX_TOKENS, "llm_temperature": 0.0, **overrides})
    return RAG.from_settings(settings)


@pytest.fixture(scope="module", params=["llamacpp", "vllm"])
def rag(request, sample_index):
    r = make_rag(sample_index, request.getfixturevalue("llm_server" if request.param == "llamacpp"
                                                      else "vllm_server"))
    r.engine = request.param  # type: ignore[attr-defined]
    yield r
    r.close()


def check_answer(a: Answer, window: int = WINDOW, max_tokens: int = MAX_TOKENS) -> None:
    pk = a.packing
    assert pk is not None and pk.sources
    # Exactly what was counted reached the model, and it fit.
    assert a.usage["prompt_tokens"] == pk.prompt_tokens <= window - max_tokens
    assert pk.used <= pk.budget
    if any("does not fit" in d.reason for d in pk.dropped) or pk.trimmed:
        assert pk.fill >= 0.95, pk.summary()
    # Every number maps to a source that exists, with its file, page and a snippet from the store.
    assert [c.n for c in a.sources] == list(range(1, len(a.sources) + 1))
    for c in a.sources:
        assert Path(c.path).exists() and c.snippet
    for n in re.findall(r"\[(\d+)\]", a.text):
        assert 1 <= int(n) <= len(a.sources)
    for key in ("retrieve", "pack", "ttft", "generate", "total", "tokens_per_s"):
        assert key in a.timings


def test_streams_and_cites(rag):
    stream = rag.stream("How many vacation days do full-time employees get?")
    pieces, times = [], []
    for piece in stream:
        pieces.append(piece)
        times.append(time.perf_counter())
    a = stream.answer
    assert len(pieces) > 3 and times[-1] - times[0] > 0  # arrived piece by piece
    assert "".join(pieces).strip() == a.text and a.text and not a.refused
    check_answer(a)
    assert a.usage["completion_tokens"] <= MAX_TOKENS
    assert a.timings["ttft"] > 0 and a.timings["tokens_per_s"] > 0
    # The vacation page is among the sources given to the model.
    assert any(c.source == "employee-handbook.pdf" and c.page == 3 for c in a.sources)
    # Snippets come from the store's chunks for that file and page.
    store_texts = " ".join(h.payload["text"] for h in rag.store.chunks_of(a.sources[0].path))
    assert a.sources[0].snippet.rstrip("…")[:80] in " ".join(store_texts.split())


def test_an_answer_cut_off_by_the_token_limit_says_so(rag):
    """finish_reason came back "stop" whatever happened: an answer cut off mid-sentence looked complete."""
    with rag.with_settings(llm_max_tokens=4) as r:
        a = r.ask("Describe the whole travel policy in detail.")
    assert a.finish_reason == "length" and a.to_dict()["finish_reason"] == "length"


def test_a_prompt_without_history_keeps_no_room_for_it(rag):
    """Its history was budgeted (and reported as kept) though never sent: room the sources could have had."""
    from langchain_core.prompts import ChatPromptTemplate

    from rag.generation.window import WindowPacker

    question = "How many vacation days do full-time employees get?"
    passages = rag.retrieve(question).passages
    history = [Message("user", "Tell me about the travel policy."), Message("assistant", "It covers hotels [1].")]
    prompt = ChatPromptTemplate.from_messages([("system", "Cite [n]."), ("human", "{sources}\n\nQ: {question}")])
    packing = WindowPacker(rag.settings, prompt).pack(passages, question, history, endpoint=rag.endpoint)
    assert packing.history == [] and packing.prompt_tokens <= WINDOW - MAX_TOKENS


def test_invented_citation_numbers_are_removed(rag):
    a = rag.ask('Repeat exactly: "The hotel cap is 140 EUR [1][42]."')
    check_answer(a)
    assert 42 in a.removed_citations and "[42]" not in a.text
    assert "[1]" in a.text and a.sources[0].cited and a.cited[0].n == 1


def test_refuses_when_nothing_is_relevant(rag):
    a = rag.ask("What is the airspeed velocity of an unladen swallow?")
    assert a.refused and a.text == NO_ANSWER and a.sources == [] and a.usage["source"] == "no LLM call"
    # The threshold is a setting: at 0.99 even a question the handbook answers is refused.
    strict = rag.with_settings(min_score=0.99)
    assert strict.ask("How many vacation days do employees get?").refused


def test_follow_up_is_condensed_with_history(rag):
    history = [("user", "What is the hotel cap for business trips?"),
               ("assistant", "The hotel cap is 140 EUR per night [1].")]
    a = rag.ask("And what about meals?", history=history)
    assert a.standalone_question != "And what about meals?" and a.timings["condense"] > 0
    assert a.packing.history  # the conversation went into the prompt too
    check_answer(a)


def test_overflow_is_recovered_by_repacking_once(rag, caplog):
    # Configured for 4096 but the server has 2048: the first request overflows, the error teaches 2048.
    with rag.with_settings(llm_context_window=2 * LLM_CTX, llm_max_tokens=8) as r:
        with caplog.at_level("WARNING", logger="rag.generation.chain"):
            a = r.ask("What is the per-diem for meals in Lisbon?")
        assert a.retries == 1 and a.packing.context_window == LLM_CTX
        assert "repacking once" in caplog.text
        assert r.endpoint.info.context_window == LLM_CTX and r.endpoint.info.context_source == "server overflow error"
        check_answer(a, window=LLM_CTX, max_tokens=8)


def test_endpoint_down_is_one_clear_line(rag):
    r = rag.with_settings(llm_base_url=f"http://127.0.0.1:{_free_port()}/v1")
    t = time.perf_counter()
    with pytest.raises(EndpointError, match="cannot reach the LLM endpoint .* is the server running"):
        r.ask("How many vacation days?")
    assert time.perf_counter() - t < 15
    r.close()


def test_with_the_llm_down_a_question_the_documents_do_not_answer_is_still_refused(rag):
    """A refusal needs no LLM call, so it needs no LLM either; a question with sources fails with the reason."""
    with rag.with_settings(llm_base_url=f"http://127.0.0.1:{_free_port()}/v1") as r:
        a = r.ask("What is the airspeed velocity of an unladen swallow?")
        assert a.refused and a.text == NO_ANSWER and a.usage["source"] == "no LLM call"
        with pytest.raises(EndpointError, match="is the server running"):
            r.ask("How many vacation days do full-time employees get?")


def test_a_lone_group_string_is_refused_not_read_letter_by_letter(rag):
    with pytest.raises(TypeError, match=r"groups=\['hr'\]"):
        rag.ask("How many vacation days do full-time employees get?", groups="hr")
    with pytest.raises(TypeError, match=r"groups=\['hr'\]"):
        rag.retrieve("vacation days", groups="hr")
    assert rag.retrieve("vacation days", groups=["hr"]).passages == []  # no group of the sample index: nothing


def test_wrong_model_name(rag):
    with rag.with_settings(llm_model="llama-3-70b") as r, \
            pytest.raises(EndpointError, match="smollm2-135m.*RAG_LLM_MODEL"):
        r.ask("How many vacation days?")


def test_timeout_is_one_clear_line(rag):
    with rag.with_settings(llm_context_window=600) as r:
        r.endpoint.chat_overhead()  # measured with the normal timeout
        # Processing a 500-token prompt takes seconds on llama.cpp here, ~0.3 s on vLLM (bf16, prefix cache).
        timeout = 0.3 if rag.engine == "llamacpp" else 0.02
        r.endpoint.timeout = timeout
        t = time.perf_counter()
        with pytest.raises(EndpointError, match=f"did not answer within {timeout} s.*RAG_LLM_TIMEOUT"):
            r.ask("How many vacation days do employees get?")
        assert time.perf_counter() - t < 10


def test_runnable_and_retriever_compose(rag):
    from langchain_core.documents import Document
    from langchain_core.runnables import Runnable

    chain = rag.as_runnable()
    assert isinstance(chain, Runnable)
    pieces = list(chain.stream({"question": "When are the office buildings open?"}))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert chain.invoke({"question": "What is the airspeed velocity of an unladen swallow?"}) == NO_ANSWER
    docs = rag.retriever.invoke("vacation days")
    assert docs and isinstance(docs[0], Document) and docs[0].metadata["path"].endswith(".pdf")


def test_the_chain_runs_from_an_event_loop(rag):
    """ainvoke/astream/abatch, as an async server (FastAPI, LangServe) calls a runnable: they raised
    NotImplementedError ("only supports sync methods")."""
    import asyncio

    question = {"question": "How many vacation days do full-time employees get?"}

    async def main():
        chunks = [c async for c in rag.chain().astream(question)]
        whole = await rag.chain().ainvoke(question, {"callbacks": [runs.handler]})
        text = await rag.as_runnable().ainvoke(question)
        both = await rag.chain().abatch([question, {"question": "What is the airspeed velocity of a swallow?"}])
        return chunks, whole, text, both

    runs = RunLog()
    chunks, whole, text, both = asyncio.run(main())
    root = runs.root()  # callbacks still see every step as a child of the chain's run
    for run in runs.of("retriever") + runs.of("chat_model") + runs.of("chain", "pack"):
        assert root in runs.ancestors(run), runs.runs
    assert len([c for c in chunks if c.get("text")]) > 1 and chunks[-1]["answer"].sources
    assert whole["text"] == whole["answer"].text and whole["answer"].sources
    assert isinstance(text, str) and text
    assert both[0]["answer"].sources and both[1]["answer"].refused


def test_a_wrong_input_says_what_the_chain_takes(rag):
    for wrong in ("How many vacation days?", {"query": "How many vacation days?"}):
        with pytest.raises(RagError, match=r"a dict with a 'question'.*got a (str|dict with \['query'\])"):
            rag.chain().invoke(wrong)


def test_endpoint_describes_server_failures():
    """5xx, 401 and 404 as the OpenAI client raises them (built from real httpx responses)."""
    import httpx
    import openai

    from rag.llm.endpoints import describe_failure

    req = httpx.Request("POST", "http://gpu1:8000/v1/chat/completions")

    def err(cls, status, msg):
        return cls(msg, response=httpx.Response(status, request=req), body={"error": {"message": msg}})

    url = "http://gpu1:8000/v1"
    assert "failed (HTTP 503: overloaded)" in describe_failure(err(openai.InternalServerError, 503, "overloaded"),
                                                              url, "m", 60)
    assert "RAG_LLM_API_KEY" in describe_failure(err(openai.AuthenticationError, 401, "bad key"), url, "m", 60)
    assert "RAG_LLM_MODEL" in describe_failure(err(openai.NotFoundError, 404, "The model `m` does not exist"),
                                               url, "m", 60)
    over = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens"
    assert "8192" in describe_failure(err(openai.BadRequestError, 400, over), url, "m", 60)
    assert "within 60 s" in describe_failure(openai.APITimeoutError(request=req), url, "m", 60)
    assert "is the server running" in describe_failure(openai.APIConnectionError(request=req), url, "m", 60)


# --- the chain as a LangChain graph --------------------------------------------------------------------------
class RunLog:
    """A LangChain callback handler that records every run it is told about, with its parent."""

    def __init__(self):
        from langchain_core.callbacks import BaseCallbackHandler

        log = self.runs = {}  # run_id -> (kind, name, parent_run_id)
        sent = self.sent = {}  # chat model run_id -> the messages it was given

        class Handler(BaseCallbackHandler):
            def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw):
                log[run_id] = ("chain", kw.get("name") or (serialized or {}).get("name"), parent_run_id)

            def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kw):
                log[run_id] = ("retriever", kw.get("name") or (serialized or {}).get("name"), parent_run_id)

            def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):
                log[run_id] = ("chat_model", kw.get("name") or (serialized or {}).get("name"), parent_run_id)
                sent[run_id] = messages[0]

            def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, **kw):
                log[run_id] = ("llm", kw.get("name") or (serialized or {}).get("name"), parent_run_id)

        self.handler = Handler()

    def root(self):
        (root,) = [r for r, (_, _, parent) in self.runs.items() if parent is None]
        return root

    def ancestors(self, run_id):
        out = []
        while (parent := self.runs[run_id][2]) is not None:
            out.append(parent)
            run_id = parent
        return out

    def of(self, kind, name=None):
        return [r for r, (k, n, _) in self.runs.items() if k == kind and (name is None or n == name)]


def test_callbacks_see_retriever_prompt_and_model_as_children_of_the_chain(rag):
    runs = RunLog()
    answer = rag.ask("How many vacation days do full-time employees get?", history=[
        ("user", "Hi, I have questions about the handbook."), ("assistant", "Sure, ask away.")],
        config={"callbacks": [runs.handler]})
    assert answer.sources and answer.text
    root = runs.root()
    assert runs.runs[root][1] == "rag"
    # The condense prompt and the answer prompt, the retriever, the condense call and the answer call: all
    # inside the one run of the chain.
    prompts = runs.of("chain", "ChatPromptTemplate")
    retrievers = runs.of("retriever")
    models = runs.of("chat_model")
    assert len(prompts) == 2 and len(retrievers) == 1 and len(models) == 2, runs.runs
    for run in prompts + retrievers + models + runs.of("chain", "pack") + runs.of("chain", "cite"):
        assert root in runs.ancestors(run), (run, runs.runs)


def test_prompt_and_model_are_replaced_in_one_line(rag, request):
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    from rag.llm.endpoints import OpenAICompatibleEndpoint

    # The chain packs for its own endpoint's window and tokenizer; the answer comes from the *other* server,
    # through a chat model the developer configured themselves.
    other = "vllm" if rag.engine == "llamacpp" else "llamacpp"
    other_url = request.getfixturevalue("vllm_server" if other == "vllm" else "llm_server")
    prompt = ChatPromptTemplate.from_messages([
        ("system", "You are the ACME handbook bot. Cite sources as [n]."),
        ("placeholder", "{history}"),
        ("human", "Handbook excerpts:\n{sources}\n\nEmployee question: {question}"),
    ])
    model = ChatOpenAI(base_url=other_url, api_key="none", model=OpenAICompatibleEndpoint(other_url).info.model,
                       max_tokens=MAX_TOKENS, temperature=0, stream_usage=True).with_config(run_name="developers-model")
    runs = RunLog()
    chain = rag.chain(prompt=prompt, model=model)
    result = chain.invoke({"question": "How many vacation days do full-time employees get?"},
                          {"callbacks": [runs.handler]})
    answer = result["answer"]
    assert result["text"] == answer.text and answer.sources
    (model_run,) = runs.of("chat_model")
    assert runs.runs[model_run][1] == "developers-model"
    system, user = runs.sent[model_run]
    assert system.content.startswith("You are the ACME handbook bot")
    assert user.content.startswith('Handbook excerpts:\n<source id="1"')
    assert user.content.endswith("Employee question: How many vacation days do full-time employees get?")
    assert answer.packing.prompt_tokens <= WINDOW - MAX_TOKENS
    # vLLM reports usage when streaming, llama-cpp-python does not: which one answered shows in the usage.
    assert answer.usage["source"] == ("server" if other == "vllm" else "counted")


def test_a_replaced_models_failure_is_its_own_and_trips_no_endpoint(rag):
    """The developer's model is down, the configured servers are not: the error names that model, and its
    failures neither fail over nor open the configured endpoints' circuits for every other caller."""
    from langchain_openai import ChatOpenAI

    base = rag.endpoint.base_url
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    model = ChatOpenAI(base_url=dead, api_key="none", model="m", max_retries=0)
    with rag.with_settings(llm_endpoints=[base, base.replace("127.0.0.1", "localhost")],
                           llm_failure_threshold=2) as r:
        chain = r.chain(model=model)
        for _ in range(3):
            with pytest.raises(EndpointError, match=r"own chat model \(ChatOpenAI\) failed") as err:
                chain.invoke({"question": "How many vacation days do full-time employees get?"})
            assert base not in str(err.value)
        with pytest.raises(EndpointError, match="own chat model"):  # condensing a follow-up, the same
            r.condense("And part-time?", [("user", "Vacation days?"), ("assistant", "25 [1].")], model=model)
        answer = r.ask("How many vacation days do full-time employees get?")
        assert answer.text and not answer.failovers


def test_retriever_is_replaced_in_one_line_and_a_replaced_one_refuses_groups(rag):
    from rag.errors import AccessDenied
    from rag.retrieval.retriever import StoreRetriever

    chain = rag.chain(retriever=StoreRetriever(retriever=rag.retriever_core, k=1))
    answer = chain.invoke({"question": "How many vacation days do full-time employees get?"})["answer"]
    assert len(answer.sources) == 1 and len(answer.packing.sources) == 1
    # The store's own retriever filters by group inside the query; a replaced one cannot, so it refuses.
    with pytest.raises(AccessDenied, match="retriever was replaced"):
        chain.invoke({"question": "vacation days", "groups": ["hr"]})

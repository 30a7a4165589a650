"""Randomized packings checked against the served model's own tokenizer and chat template.

For each packing the exact prompt the chain would send is rendered with the GGUF's chat template (as
llama-cpp-python's server does) and counted by the server's tokenizer: it must equal what the chain counted
and fit the window minus the reserved answer. Some are actually sent, and the server's usage.prompt_tokens
must agree too. Figures are printed (pytest -s) for the closing note.
"""

from __future__ import annotations

import random
from dataclasses import replace

import httpx
import pytest

from rag.generation.chain import RAG
from rag.llm.local import packaged_model
from rag.types import Message
from rag.retrieval.retriever import to_passage

from conftest import LLM_CTX

N_PACKINGS = 216
N_SENT_SMALL = 20  # windows of 512-1024 tokens: quick to process
N_SENT_FULL = 4  # the server's whole 2048-token context, answer reserved: the overflow edge


@pytest.fixture(scope="module")
def render():
    """The server's chat template, rendered locally from the GGUF's metadata (same code path as the server)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    gguf = packaged_model()
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    eos, bos = llm.token_eos(), llm.token_bos()
    fmt = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    return lambda msgs: fmt(messages=[{"role": r, "content": c} for r, c in msgs]).prompt


def _corpus(rag: RAG) -> list:
    passages = []
    for path in rag.store.documents():
        passages += [to_passage(h) for h in rag.store.chunks_of(path)]
    # Independent of where the checkout lives (point ids derive from paths): the same random cases everywhere.
    return sorted(passages, key=lambda p: (p.source, p.chunk_index))


def _variant(rng: random.Random, p):
    """A passage of varied size: the whole chunk, or a word-aligned slice of it (offsets kept consistent,
    so slices of one chunk overlap and exercise merging)."""
    if rng.random() < 0.5:
        return p
    cuts = [0] + [i + 1 for i, ch in enumerate(p.text) if ch == " "] + [len(p.text)]
    a = rng.randrange(len(cuts) - 1)
    b = rng.randrange(a + 1, len(cuts))
    text = p.text[cuts[a]:cuts[b]].strip()
    if not text:
        return p
    return replace(p, id=f"{p.id}:{cuts[a]}", text=text, char_start=p.char_start + cuts[a],
                   char_end=p.char_start + cuts[a] + len(text))


def _words(rng: random.Random, corpus, n: int) -> str:
    words = rng.choice(corpus).text.split() * 8
    start = rng.randrange(max(1, len(words) - n))
    return " ".join(words[start:start + n])


@pytest.fixture(params=["llamacpp", "vllm"])
def served_count(request, render):
    """(server URL, how that server counts a chat prompt): llama-cpp-python's tokenizer on the locally rendered
    template; vLLM's /tokenize given the messages (it renders its own template, as its chat route does)."""
    if request.param == "llamacpp":
        url = request.getfixturevalue("llm_server")
        root = url.removesuffix("/v1")
        return url, lambda http, msgs: http.post(f"{root}/extras/tokenize/count",
                                                 json={"input": render(msgs)}).json()["count"]
    url = request.getfixturevalue("vllm_server")
    root = url.removesuffix("/v1")
    return url, lambda http, msgs: http.post(f"{root}/tokenize", json={
        "messages": [{"role": r, "content": c} for r, c in msgs], "add_generation_prompt": True}).json()["count"]


def test_randomized_packings_are_exact_and_fit(sample_index, served_count):
    llm_server, count = served_count
    base = RAG.from_settings(sample_index.model_copy(update={"llm_base_url": llm_server}))
    corpus = _corpus(base)
    rng = random.Random(20261124)
    http = httpx.Client(timeout=300)
    stats = {"packings": 0, "oversubscribed": 0, "fills": [], "sent": 0, "overflows": 0,
             "trimmed": 0, "merged": 0, "small_budget": 0, "small_min_fill": 1.0,
             "odd_history": 0, "big": 0, "big_min_fill": 1.0}
    overflows: list[tuple[int, str]] = []
    try:
        for i in range(N_PACKINGS):
            full = i < N_SENT_FULL
            window = LLM_CTX if full else rng.choice([512, 768, 1024] if i < N_SENT_FULL + N_SENT_SMALL
                                                     else [512, 768, 1024, 1536, 2048, 4096])
            max_out = rng.randint(8, 16) if full else rng.randint(8, window // 4)
            rag = base.with_settings(llm_max_tokens=max_out, history_share=rng.choice([0.0, 0.25, 0.5]))
            passages = [_variant(rng, p) for p in rng.sample(corpus, rng.randint(1, min(40, len(corpus))))]
            passages = list({p.id: p for p in passages}.values())
            passages.sort(key=lambda p: -p.score)
            history = [Message("user" if k % 2 == 0 else "assistant", _words(rng, corpus, rng.randint(3, 250)))
                       for k in range(rng.choice([0, 0, 1, 2, 4, 6]))]
            question = _words(rng, corpus, rng.randint(3, 40)) + "?"

            pk = rag.pack(passages, question, history, context_window=window)
            msgs = rag.messages(pk, question)
            served = count(http, msgs)
            if len(pk.history) % 2 == 0:  # whole user/assistant turns, as chats have: exact
                assert served == pk.prompt_tokens, (i, served, pk.prompt_tokens)
            else:  # an unanswered question in the history: role overheads cannot be split apart, so over
                assert pk.prompt_tokens - 8 <= served <= pk.prompt_tokens, (i, served, pk.prompt_tokens)
                stats["odd_history"] += 1
            assert served + max_out <= window, (i, served, max_out, window)
            assert pk.used <= pk.budget
            stats["packings"] += 1
            stats["trimmed"] += bool(pk.trimmed)
            stats["merged"] += sum(len(s.passages) > 1 for s in pk.sources)
            if any(d.reason.startswith("does not fit") for d in pk.dropped) or pk.trimmed:
                stats["oversubscribed"] += 1
                stats["fills"].append(pk.fill)
                # The last room is filled by continuing a kept source (no header needed) or, from 24 tokens, a
                # trimmed new one if its header (~25-30 tokens) and a word fit. What can stay empty is about
                # 32 tokens, so fill >= 0.95 is asserted from a 640-token budget up; smaller ones are printed.
                if pk.budget >= 640:
                    assert pk.fill >= 0.95, (i, pk.summary())
                    stats["big_min_fill"] = min(stats["big_min_fill"], pk.fill)
                    stats["big"] += 1
                else:
                    stats["small_budget"] += 1
                    stats["small_min_fill"] = min(stats["small_min_fill"], pk.fill)

            if i < N_SENT_FULL + N_SENT_SMALL:
                sent_max = max_out if full else 2
                r = http.post(f"{llm_server}/chat/completions", json={
                    "messages": [{"role": a, "content": c} for a, c in msgs],
                    "max_tokens": sent_max, "temperature": 0})
                stats["sent"] += 1
                # An overflow is either refused (400) or, on vLLM, accepted with max_tokens silently cut to what
                # is left of the window: finish_reason "length" with fewer tokens than asked. Both count.
                if r.status_code == 400:
                    stats["overflows"] += 1
                    overflows.append((i, r.text[:200]))
                    continue
                assert r.status_code == 200, r.text[:300]
                body = r.json()
                if body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] < sent_max:
                    stats["overflows"] += 1
                    overflows.append((i, f"answer cut to {body['usage']['completion_tokens']} of {sent_max} tokens"))
                # The server agrees with the count above, so with what the chain counted.
                assert body["usage"]["prompt_tokens"] == served
    finally:
        http.close()
        base.close()
    fills = sorted(stats.pop("fills"))
    print(f"\npackings {stats['packings']}, oversubscribed {stats['oversubscribed']} (budget >= 640: {stats['big']}, "
          f"min fill {stats['big_min_fill']:.4f}), odd-length histories {stats['odd_history']}, "
          f"fill min {fills[0]:.4f} median {fills[len(fills) // 2]:.4f}, trimmed {stats['trimmed']}, "
          f"merged sources {stats['merged']}, sent {stats['sent']}, overflows {stats['overflows']}, "
          f"budgets under 640: {stats['small_budget']} (min fill {stats['small_min_fill']:.4f})")
    assert stats["oversubscribed"] >= 100 and stats["sent"] >= 20
    assert stats["overflows"] == 0, overflows

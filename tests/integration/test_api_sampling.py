"""`rag serve`: what a client may say about generation (max_tokens, temperature, top_p, seed) reaches the model,
within the operator's budget; what it cannot have (several choices, JSON output, values out of range) is refused
with a reason.

The app runs in-process in front of tests/data/scripted_llm.py, which records each chat completion it is asked,
so the test reads what the model was actually sent. test_api.py checks max_tokens against llama.cpp and vLLM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from test_api_errors import QUESTION, error_of, index, scripted_llm, serve  # noqa: F401 - fixtures

SETTINGS_MAX_TOKENS = 32  # serve()'s llm_max_tokens


@pytest.fixture
def api(index, scripted_llm) -> Iterator[TestClient]:  # noqa: F811 - the fixtures above
    with serve(index, scripted_llm, llm_temperature=0.1) as client:
        yield client


def ask(client: TestClient, stream: bool = False, **fields: Any):
    return client.post("/v1/chat/completions", json={"model": "documents", "stream": stream,
                                                       "messages": [{"role": "user", "content": QUESTION}],
                                                       **fields})


def sent(llm: str) -> dict[str, Any]:
    """The last chat completion the model was asked (not the one-token probes)."""
    return httpx.get(llm.removesuffix("/v1") + "/requests").json()[-1]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_clients_sampling_reaches_the_model(api, scripted_llm, stream):  # noqa: F811
    r = ask(api, stream, max_tokens=5, temperature=0.7, top_p=0.9, seed=7)
    assert r.status_code == 200, r.text[:500]
    body = sent(scripted_llm)
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (5, 0.7, 0.9, 7)
    # OpenAI's newer name for it.
    assert ask(api, stream, max_completion_tokens=6).status_code == 200
    assert sent(scripted_llm)["max_tokens"] == 6


def test_without_them_the_operators_settings_decide(api, scripted_llm):  # noqa: F811
    assert ask(api).status_code == 200
    body = sent(scripted_llm)
    assert body["max_tokens"] == SETTINGS_MAX_TOKENS and body["temperature"] == 0.1
    assert "top_p" not in body and "seed" not in body


def test_max_tokens_above_the_operators_budget_is_capped_at_it(api, scripted_llm):  # noqa: F811
    assert ask(api, max_tokens=5000).status_code == 200
    assert sent(scripted_llm)["max_tokens"] == SETTINGS_MAX_TOKENS


def test_a_shorter_answer_leaves_room_for_more_sources(index, scripted_llm):  # noqa: F811
    # A window where the operator's 300 tokens for the answer leave room for one source at most.
    with serve(index, scripted_llm, llm_context_window=700, llm_max_tokens=300, top_k=8) as client:
        default, short = ask(client), ask(client, max_tokens=20)
    assert default.status_code == 200 and short.status_code == 200, (default.text[:300], short.text[:300])
    n_default, n_short = len(default.json()["sources"]), len(short.json()["sources"])
    assert n_short > n_default, (n_default, n_short)
    assert short.json()["usage"]["prompt_tokens"] > default.json()["usage"]["prompt_tokens"]


def test_several_choices_are_refused_with_a_reason(api, scripted_llm):  # noqa: F811
    error = error_of(ask(api, n=3), 400)
    assert error["param"] == "n" and error["code"] == "unsupported_value"
    assert "one answer per request" in error["message"]
    assert ask(api, n=1).status_code == 200


@pytest.mark.parametrize("fmt", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x"}}])
def test_structured_output_is_refused_rather_than_answered_in_prose(api, fmt):
    error = error_of(ask(api, response_format=fmt), 400)
    assert error["param"] == "response_format" and "not JSON" in error["message"]
    assert ask(api, response_format={"type": "text"}).status_code == 200


@pytest.mark.parametrize("field, value", [("temperature", 3), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.5),
                                          ("max_tokens", 0), ("n", 0)])
def test_a_value_out_of_range_is_a_422_naming_it(api, field, value):
    error = error_of(ask(api, **{field: value}), 422)
    assert error["type"] == "invalid_request_error" and error["param"] == field

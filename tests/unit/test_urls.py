"""rag/urls.py: the display form of a URL with credentials, and the scrubbing of text that quotes one."""

from __future__ import annotations

import pickle

from rag.settings import Settings
from rag.urls import SecretUrl, scrub


def test_display_form_and_scrub():
    u = SecretUrl("https://alice:s3cret@gpu1:8000/v1?api-key=XYZ&v=1#frag")
    assert str(u) == repr(u)[1:-1] == "https://***@gpu1:8000/v1?api-key=***&v=***"
    assert u.bare == "https://gpu1:8000/v1" and u.auth == ("alice", "s3cret") and u.params == [("api-key", "XYZ"),
                                                                                               ("v", "1")]
    assert "s3cret" not in repr(vars(u)) and "XYZ" not in repr(vars(u))
    assert SecretUrl("http://gpu1/v1") == "http://gpu1/v1" and SecretUrl("http://gpu1/v1").auth is None
    assert SecretUrl("http://a:1@h/") != SecretUrl("http://a:2@h/")  # two configurations, two cached clients
    assert SecretUrl(str(u)).auth is None  # the display form read back carries no (fake) credentials
    msg = "Client error '401' for url 'http://bob:pw@h:1/v1/models?token=abc&n=1'"
    assert scrub(msg) == "Client error '401' for url 'http://***@h:1/v1/models?token=***&n=1'"
    assert scrub("at http://u:p@ss@h/v1 and http://h/v1?n=1") == "at http://***@h/v1 and http://h/v1?n=1"


def test_every_url_setting_is_scrubbed_on_the_way_in(monkeypatch):
    monkeypatch.setenv("RAG_LLM_BASE_URL", "http://a:pw-one@gpu1/v1?token=tok-one")
    monkeypatch.setenv("RAG_LLM_ENDPOINTS",
                       '["http://b:pw-two@gpu2/v1", {"base_url": "http://gpu3/v1?api_key=tok-three"}]')
    monkeypatch.setenv("RAG_QDRANT_URL", "https://c:pw-four@qdrant:6333?api-key=tok-four")
    monkeypatch.setenv("RAG_RERANK_URL", "http://d:pw-five@tei/rerank?key=tok-five")
    s = Settings()
    shown = f"{s!r} {s} {s.model_dump()} {s.model_dump_json()} {s.llm_endpoint_list()}"
    secrets = ("pw-one", "tok-one", "pw-two", "tok-three", "pw-four", "tok-four", "pw-five", "tok-five")
    assert not [t for t in secrets if t in shown]
    assert [e.base_url.auth for e in s.llm_endpoint_list()] == [("b", "pw-two"), None]
    assert s.llm_base_url.auth == ("a", "pw-one")
    assert s.qdrant_url and s.qdrant_url.params == [("api-key", "tok-four")]
    # Copies and pickles keep what the clients need.
    assert s.model_copy().rerank_url.reveal() == "http://d:pw-five@tei/rerank?key=tok-five"  # type: ignore[union-attr]
    assert pickle.loads(pickle.dumps(s.llm_base_url)).auth == ("a", "pw-one")
    # A URL changed on a copy (RAG.with_settings) is scrubbed as well.
    changed = s.model_copy(update={"llm_base_url": "http://e:pw-six@gpu4/v1", "top_k": 3})
    assert "pw-six" not in repr(changed) and changed.llm_base_url.auth == ("e", "pw-six") and changed.top_k == 3

"""rag.security.exposure: the one decision `rag serve`, `rag mcp --http` and `rag ui` take before they bind, and
the Host allow-list. The attacks themselves are in tests/integration/test_network_defaults.py."""

from __future__ import annotations

import pytest

from rag.security.exposure import allowed_hosts, exposure_problem, host_allowed, is_loopback
from rag.settings import Settings


@pytest.mark.parametrize(("auth", "host", "safe"), [
    ("none", "127.0.0.1", True), ("none", "127.8.9.10", True), ("none", "::1", True), ("none", "localhost", True),
    ("none", "0.0.0.0", False), ("none", "::", False), ("none", "10.1.2.3", False), ("none", "rag.example", False),
    ("password", "0.0.0.0", True), ("proxy", "127.0.0.1", False), ("proxy", "0.0.0.0", False),
])
def test_one_function_decides(auth, host, safe, tmp_path):
    s = Settings(data_dir=tmp_path, auth=auth)
    assert (exposure_problem(s, host) is None) is safe
    assert is_loopback(host) is (host in ("127.0.0.1", "127.8.9.10", "::1", "localhost"))
    secret = Settings(data_dir=tmp_path, auth="proxy", auth_proxy_secret="x" * 32)
    assert exposure_problem(secret, "0.0.0.0") is None


def test_host_allow_list(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_ALLOWED_HOSTS", "rag.internal, *.corp.example")
    s = Settings(data_dir=tmp_path)
    assert s.allowed_hosts == ["rag.internal", "*.corp.example"]
    local = allowed_hosts(s, "127.0.0.1")
    for host in ("localhost:8501", "127.0.0.1", "[::1]:8000", "rag.internal", "chat.corp.example:443"):
        assert host_allowed(host, local), host
    for host in ("evil.example", "evil.example:8501", "corp.example.evil", "localhost.evil.example", "", None):
        assert not host_allowed(host, local), host
    assert allowed_hosts(Settings(data_dir=tmp_path, allowed_hosts=[]), "0.0.0.0") is None
    assert host_allowed("anything", None)

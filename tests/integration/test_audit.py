"""Audit log: JSON lines with every field, rotation, two writers at once, no credentials."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import datetime

import pytest

from conftest import ROOT
from rag.security.audit import AuditLog, safe_endpoint
from rag.errors import AuditLogError, RagError
from rag.settings import Settings

FIELDS = {"time", "event", "user", "question", "cited", "endpoint", "model", "latency_ms", "extra"}


def lines_of(log: AuditLog) -> list[dict]:
    out = []
    for p in reversed(log.files()):  # oldest first
        out += [json.loads(ln) for ln in p.read_text().splitlines()]
    return out


def test_lines_are_json_with_every_field(tmp_path):
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    log.record("ask", user="alice", question="Wie hoch ist das Hotellimit? \"quoted\"\nsecond line",
               cited=["/docs/travel.pdf", "/docs/faq.md"], endpoint="http://llm:8080/v1", model="qwen",
               latency_ms=812.44, extra={"retrieval_mode": "hybrid"})
    log.record("login_failed", user="mallory")
    raw = log.path.read_text().splitlines()
    assert len(raw) == 2
    first, second = (json.loads(x) for x in raw)
    assert set(first) == FIELDS == set(second)
    assert first["user"] == "alice" and first["cited"] == ["/docs/travel.pdf", "/docs/faq.md"]
    assert first["question"].endswith("second line") and first["latency_ms"] == 812.4
    assert first["endpoint"] == "http://llm:8080/v1" and first["model"] == "qwen" and first["event"] == "ask"
    ts = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert ts.utcoffset().total_seconds() == 0 and abs(ts.timestamp() - time.time()) < 60
    assert second == {**second, "event": "login_failed", "question": None, "cited": [], "latency_ms": None}
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600  # questions are confidential too
    assert all(x.isascii() for x in raw)
    huge = log.record("ask", user="u", question="y" * 50_000)  # bounded, and says how long it was
    assert len(huge["question"]) == 20_000 and huge["extra"]["question_chars"] == 50_000


@pytest.mark.parametrize("url,expected", [
    ("http://user:sk-secret@llm.internal:8080/v1", "http://llm.internal:8080/v1"),
    ("https://sk-secret@api.example.com/v1?api_key=sk-secret#frag", "https://api.example.com/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
    ("user:sk-secret@host:80/v1", "host:80/v1"),
    ("http://u:sk-secret@host:notaport/v1", "http://host:notaport/v1"),
])
def test_credentials_are_stripped_from_the_endpoint(tmp_path, url, expected):
    assert safe_endpoint(url) == expected
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("ask", user="a", endpoint=url,
               extra={"api_key": "sk-secret", "nested": {"Authorization": "Bearer sk-secret"}, "ok": 1})
    text = log.path.read_text()
    assert "sk-secret" not in text
    entry = json.loads(text)
    assert entry["endpoint"] == expected and entry["extra"]["ok"] == 1
    assert entry["extra"]["api_key"] == "[redacted]" and entry["extra"]["nested"]["Authorization"] == "[redacted]"


def test_rotation_keeps_n_backups(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1000, backups=3)
    for i in range(200):
        log.record("search", user="u", question=f"q{i:04d}" + "x" * 100)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.jsonl") and
                   not p.name.endswith(".lock"))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    for p in log.files():
        assert p.stat().st_size <= 1000
    kept = [int(e["question"][1:5]) for e in lines_of(log)]
    assert kept == list(range(kept[0], 200))  # the newest, in order, nothing lost inside the kept window
    per_file = 1000 // len(log.path.read_text().splitlines()[0].encode() + b"\n")
    assert per_file >= 2 and 3 * per_file + 1 <= len(kept) <= 4 * per_file  # three full backups + current


def test_no_rotation_when_max_is_zero_and_settings(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=0)
    for _ in range(50):
        log.record("ask", user="u", question="x" * 100)
    assert log.files() == [log.path] and len(log.path.read_text().splitlines()) == 50
    s = Settings(data_dir=tmp_path / "data", audit_max_mb=2, audit_backups=4)
    a = AuditLog.from_settings(s)
    assert a.path == tmp_path / "data" / "audit.jsonl" and a.max_bytes == 2 * 1024 * 1024 and a.backups == 4
    assert AuditLog.from_settings(Settings(data_dir=tmp_path, RAG_AUDIT_LOG="")) is None
    assert AuditLog.from_settings(Settings(data_dir=tmp_path, RAG_AUDIT_LOG=str(tmp_path / "x.jsonl"))).path \
        == tmp_path / "x.jsonl"


def test_unwritable_log_is_an_actionable_error(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    log = AuditLog(tmp_path / "blocker" / "audit.jsonl")
    with pytest.raises(AuditLogError, match="RAG_AUDIT_LOG="):
        log.record("ask", user="u")


_WRITER = """
import sys, time
from rag.security.audit import AuditLog
path, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
log = AuditLog(path, max_bytes=200_000, backups=100)
while time.time() < start:
    time.sleep(0.001)
for i in range(500):
    # long lines (one page to several), so a write split in pieces would show
    log.record("ask", user=tag, question=f"{tag}-{i}-" + tag * (15_000 if i % 10 == 0 else 3_000),
               cited=[f"/d/{i}"], latency_ms=i)
"""


def test_two_processes_append_without_torn_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    start = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(start)], env=env,
                              stderr=subprocess.PIPE, text=True) for tag in ("A", "B")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    log = AuditLog(path, max_bytes=200_000, backups=100)
    assert len(log.files()) > 3  # rotation happened while both wrote
    seen: dict[str, list[int]] = {"A": [], "B": []}
    for p in log.files():
        for ln in p.read_text().splitlines():
            e = json.loads(ln)  # a torn or interleaved line would not parse
            tag, i = e["user"], int(e["question"].split("-")[1])
            assert e["question"] == f"{tag}-{i}-" + tag * (15_000 if i % 10 == 0 else 3_000)
            seen[tag].append(i)
    assert sorted(seen["A"]) == list(range(500)) and sorted(seen["B"]) == list(range(500))


@pytest.mark.attack(7, "a full disk makes answers and downloads go out unaudited")
def test_required_audit_withholds_answers_and_downloads_it_cannot_log(group_index, llm_server, tmp_path):
    """RAG_AUDIT_REQUIRED=true on a full disk (/dev/full: every write is ENOSPC): no answer text, no file."""
    import shutil
    from pathlib import Path

    from rag.generation.chain import RAG
    from rag.security.auth import identity_of
    from rag.security.users import UserDirectory

    data = tmp_path / "data"
    shutil.copytree(group_index.data_dir, data)
    question = "How do I contact the IT Service Desk?"

    def rag_with(required: bool) -> RAG:
        s = Settings(data_dir=data, llm_base_url=llm_server, llm_context_window=1024, llm_max_tokens=16,
                     llm_temperature=0, condense_questions=False, RAG_AUDIT_LOG="/dev/full", audit_required=required)
        return RAG.from_settings(s)

    alice = identity_of(UserDirectory.from_settings(Settings(data_dir=data)).get("alice"), "password")
    with rag_with(True) as rag:
        handbook = next(p for p in rag.store.documents() if p.endswith("employee-handbook.pdf"))
        stream = rag.stream(question, user=alice)
        pieces: list[str] = []
        with pytest.raises(AuditLogError, match="No space left"):
            pieces.extend(stream)
        assert pieces == [] and stream.answer is None  # not a word of what could not be logged
        with pytest.raises(AuditLogError):
            rag.ask(question, user=alice)
        with pytest.raises(AuditLogError):
            rag.read_source(handbook, user=alice)
    with rag_with(False) as rag:  # not required: the failure is logged, the user still gets the answer
        assert rag.ask(question, user=alice).text
        assert rag.read_source(handbook, user=alice) == Path(handbook).read_bytes()


@pytest.mark.attack(7, "a full disk makes search results go out unaudited")
def test_required_audit_prints_no_search_results_it_cannot_log(group_index, tmp_path):
    import shutil

    from conftest import rag_cmd

    data = tmp_path / "data"
    shutil.copytree(group_index.data_dir, data)
    env = {"RAG_DATA_DIR": str(data), "RAG_AUDIT_LOG": "/dev/full", "RAG_CONFIG": ""}
    r = rag_cmd("search", "IT Service Desk", "--json", env={**env, "RAG_AUDIT_REQUIRED": "true"})
    assert r.returncode == 2 and "No space left" in r.stderr and not r.stdout.strip()
    r = rag_cmd("search", "IT Service Desk", "--json", env=env)
    assert r.returncode == 0 and "it-security.md" in r.stdout and "audit log" in r.stderr


def test_an_answer_read_part_way_or_failed_is_still_audited(sample_index, llm_server, tmp_path):
    """A reader who stops part-way (a client that disconnects before the final chunk, which comes after the
    citation check) has read what was sent: that question is in the audit log, as is one that failed."""
    from rag.generation.chain import RAG

    s = sample_index.model_copy(update={"llm_base_url": llm_server, "llm_context_window": 1024,
                                        "llm_max_tokens": 48, "llm_temperature": 0.0,
                                        "audit_log_override": str(tmp_path / "audit.jsonl")})
    question = "What is the meals allowance per day?"
    with RAG.from_settings(s) as rag:
        assert rag.audit is not None and rag.audit.path == tmp_path / "audit.jsonl"
        chunks = rag.chain().stream({"question": question, "audit_extra": {"via": "test"}})
        shown = ""
        for chunk in chunks:
            shown += chunk.get("text", "")
            if len(shown) > 5:
                break
        chunks.close()
        (line,) = lines_of(rag.audit)
        assert line["event"] == "ask" and line["question"] == question and line["latency_ms"] > 0
        assert line["extra"] == {"outcome": "abandoned", "chars_shown": len(shown), "via": "test"}
        with rag.with_settings(llm_model="no-such-model") as broken, pytest.raises(RagError):
            broken.ask(question)
        assert lines_of(rag.audit)[-1]["extra"] == {"outcome": "error", "chars_shown": 0}

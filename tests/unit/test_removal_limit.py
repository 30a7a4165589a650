"""RAG_INGEST_MAX_REMOVE: how many documents of a folder one `rag ingest` may remove because their files are gone.
The sweep that applies it is tested end to end in tests/integration/test_pipeline.py."""

from __future__ import annotations

import pytest

from rag.settings import REMOVALS_ALWAYS_ALLOWED, RemovalLimit, Settings, settings_error


@pytest.mark.parametrize(("given", "kept"), [
    ("50%", "50%"), (" 12.5 % ", "12.5%"), ("100%", "100%"), ("0%", "0%"), ("200", "200"), ("0", "0"), (300, "300"),
])
def test_a_percentage_or_a_count_is_accepted_and_kept_in_one_spelling(given, kept):
    assert Settings(ingest_max_remove=given).ingest_max_remove == kept


def test_the_environment_rag_toml_and_the_default(monkeypatch, tmp_path):
    monkeypatch.delenv("RAG_INGEST_MAX_REMOVE", raising=False)
    monkeypatch.setenv("RAG_CONFIG", "")
    assert Settings().ingest_removal_limit == RemovalLimit(percent=50)
    (tmp_path / "rag.toml").write_text("ingest_max_remove = 200\n")  # a TOML number is a count
    (tmp_path / "rag.toml").chmod(0o644)  # whatever the umask: a group-writable config file is refused
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "rag.toml"))
    assert Settings().ingest_max_remove == "200"
    monkeypatch.setenv("RAG_INGEST_MAX_REMOVE", "200")
    assert Settings().ingest_removal_limit == RemovalLimit(count=200)
    monkeypatch.setenv("RAG_INGEST_MAX_REMOVE", "25%")
    assert Settings().ingest_removal_limit == RemovalLimit(percent=25)


@pytest.mark.parametrize("junk", ["", "half", "150%", "-5", "0.5", "1e3", "50%%", "%", "２０", True, 0.5])
def test_anything_else_is_refused_with_what_is_accepted(junk):
    with pytest.raises(ValueError) as info:
        Settings(ingest_max_remove=junk)
    message = settings_error(info.value)
    assert "RAG_INGEST_MAX_REMOVE is a percentage of a folder's documents from 0% to 100%" in message
    assert '"100%" = no limit' in message and 'a number of documents ("200"' in message
    with pytest.raises(ValueError, match=r"^--max-remove is a percentage .* not 'half'$"):
        RemovalLimit.parse("half", "--max-remove")


def test_a_percentage_counts_only_above_the_documents_always_allowed():
    half = RemovalLimit.parse("50%")
    assert half.allows(REMOVALS_ALWAYS_ALLOWED, REMOVALS_ALWAYS_ALLOWED)  # a small folder emptied by its owner
    assert not half.allows(REMOVALS_ALWAYS_ALLOWED + 1, REMOVALS_ALWAYS_ALLOWED + 1)
    assert half.allows(500, 1000) and not half.allows(501, 1000)
    assert RemovalLimit.parse("100%").allows(1000, 1000)
    assert not RemovalLimit.parse("0%").allows(REMOVALS_ALWAYS_ALLOWED + 1, 10_000)


def test_a_count_is_a_count():
    assert RemovalLimit.parse("5").allows(5, 5) and not RemovalLimit.parse("5").allows(6, 10_000)
    assert not RemovalLimit.parse("0").allows(1, 10_000)
    assert RemovalLimit.parse("0").allows(0, 10)

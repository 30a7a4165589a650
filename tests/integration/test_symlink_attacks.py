"""Hole 1 of the hardening issue: symbolic links. Each test performs the attack with real files in tmp_path, real
ingestion into the real embedded store and the packaged embedding model, and checks that nothing leaks.

The tree: ``docs/.rag-access.toml`` gives ``public/**`` to ``everyone`` and ``finance/**`` to ``finance``; a
``users.toml`` (as the data dir holds one) sits outside ``docs``. Whoever may write into ``public/`` plants links.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest import ingest
from rag.errors import AccessDenied, RagError
from rag.generation.chain import RAG
from rag.index.store import SearchFilter, open_store
from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.security.access import POLICY_FILE

SALARY = "Salary table, confidential: Dana earns 187 thousand a year and Lee earns 142 thousand a year."
USERS = '[users.alice]\npassword_hash = "$argon2id$v=19$secret-hash-of-alice"\ngroups = ["admins"]\n'
POLICY = '[[rule]]\nmatch = "public/**"\ngroups = ["everyone"]\n\n[[rule]]\nmatch = "finance/**"\ngroups = ["finance"]\n'


@pytest.fixture
def tree(tmp_path) -> Path:
    docs = tmp_path / "docs"
    (docs / "public").mkdir(parents=True)
    (docs / "finance").mkdir()
    (docs / POLICY_FILE).write_text(POLICY)
    (docs / "public" / "welcome.md").write_text("# Welcome\n\nThe canteen opens at noon and closes at three.\n")
    (docs / "finance" / "salaries.txt").write_text(SALARY + "\n")
    (tmp_path / "users.toml").write_text(USERS)
    return docs


def _everyone_texts(settings) -> dict[str, str]:
    """Every document readable by the group every signed-in user has: path -> its indexed text."""
    with open_store(settings) as s:
        out: dict[str, str] = {}
        for path in s.documents():
            for hit in s.chunks_of(path, groups_any=("everyone",)):
                out[path] = out.get(path, "") + hit.payload["text"]
        return out


def _skipped(report) -> dict[str, str]:
    return {issue.path: issue.reason for issue in report.skipped}


@pytest.mark.attack(1, "a link in a public folder to a private file publishes it with the public folder's groups")
def test_link_inside_the_root_does_not_publish_its_target_with_the_links_groups(tree, settings, embedder):
    """Attack: ``public/notes.txt -> ../finance/salaries.txt``, so the salaries get public/'s ``everyone``."""
    link = tree / "public" / "notes.txt"
    link.symlink_to("../finance/salaries.txt")
    r = ingest([tree], settings, embedder=embedder)
    assert r.ok
    assert not any("Dana" in text for text in _everyone_texts(settings).values())
    with open_store(settings) as s:
        docs = s.documents()
        assert str(link) not in docs  # never under the link's name ...
        target = docs[str(tree / "finance" / "salaries.txt")]  # ... but once under its own, with its own groups
        assert target.groups == ["finance"]
        hits = s.query(embedder.embed_query("How much does Dana earn?"), 20, SearchFilter(groups_any=("everyone",)))
        assert not any("Dana" in h.payload["text"] for h in hits)
    assert "symbolic link" in _skipped(r)[str(link)]


@pytest.mark.attack(1, "a link out of the ingested folder (to the salaries, to users.toml) gets indexed")
def test_link_out_of_the_ingested_folder_is_skipped_and_reported(tree, settings, embedder):
    """Attack: ingest only ``public/``, where ``notes.txt -> ../finance/salaries.txt`` and ``users.txt -> the
    users file``: both targets are outside the folder given and would be published to ``everyone``."""
    public = tree / "public"
    (public / "notes.txt").symlink_to("../finance/salaries.txt")
    (public / "users.txt").symlink_to(tree.parent / "users.toml")
    (public / "www").symlink_to(tree / "finance", target_is_directory=True)
    r = ingest([public], settings, embedder=embedder, groups=["everyone"])
    assert r.ok and r.added == 1  # welcome.md only
    with open_store(settings) as s:
        assert list(s.documents()) == [str(public / "welcome.md")]
    texts = " ".join(_everyone_texts(settings).values())
    assert "Dana" not in texts and "argon2" not in texts
    skipped = _skipped(r)
    for name in ("notes.txt", "users.txt", "www"):
        reason = skipped[str(public / name)]
        assert "symbolic link" in reason and "outside" in reason and str(public) in reason, reason


@pytest.mark.attack(1, "link loops, and links that expose hidden files or the access policy")
def test_link_loops_and_links_to_hidden_or_policy_files_are_not_followed(tree, settings, embedder):
    """Attack: a link back up the tree (an endless walk), and links that make a hidden file or the access policy
    itself a public document."""
    public = tree / "public"
    (public / "loop").symlink_to("..", target_is_directory=True)
    (public / "self.txt").symlink_to("self.txt")
    (tree / ".git").mkdir()
    (tree / ".git" / "config.txt").write_text("token = ghp_secret_token_of_the_repo\n")
    (public / "config.txt").symlink_to("../.git/config.txt")
    (public / "policy.txt").symlink_to(f"../{POLICY_FILE}")
    r = ingest([tree], settings, embedder=embedder)
    assert r.ok
    with open_store(settings) as s:
        assert sorted(s.documents()) == [str(tree / "finance" / "salaries.txt"), str(public / "welcome.md")]
    assert {str(public / n) for n in ("loop", "self.txt", "config.txt", "policy.txt")} <= set(_skipped(r))


@pytest.mark.attack(1, "an indexed file swapped for a link keeps its old groups at the next ingest")
def test_file_swapped_for_a_link_after_ingest_is_dropped_at_the_next_ingest(tree, settings, embedder):
    """Attack: a public document is ingested, then replaced by a link to the salaries (inside the tree) and to the
    users file (outside it); the next ingest must not index what the link points at under the public name."""
    notes, users = tree / "public" / "notes.txt", tree / "public" / "team.txt"
    notes.write_text("Team notes: the offsite is in May.\n")
    users.write_text("The team roster is on the intranet.\n")
    ingest([tree], settings, embedder=embedder)
    notes.unlink()
    notes.symlink_to("../finance/salaries.txt")
    users.unlink()
    users.symlink_to(tree.parent / "users.toml")
    r = ingest([tree], settings, embedder=embedder)
    assert r.ok and r.removed == 2
    with open_store(settings) as s:
        assert str(notes) not in s.documents() and str(users) not in s.documents()
        assert s.count_chunks(str(notes)) == 0 and s.count_chunks(str(users)) == 0
    texts = " ".join(_everyone_texts(settings).values())
    assert "Dana" not in texts and "argon2" not in texts


@pytest.mark.attack(1, "a file named on the command line is a link to a private file")
def test_a_file_given_by_name_that_is_a_link_is_ingested_as_its_target(tree, settings, embedder):
    """Attack: ``rag ingest public/notes.txt`` where notes.txt is a link; the operator's policy for the target's
    folder decides, not public/'s."""
    link = tree / "public" / "notes.txt"
    link.symlink_to("../finance/salaries.txt")
    (tree / "finance" / POLICY_FILE).write_text('default = ["finance"]\n')
    r = ingest([link], settings, embedder=embedder, groups=["everyone"])
    assert r.ok and r.added == 1
    with open_store(settings) as s:
        assert list(s.documents()) == [str(tree / "finance" / "salaries.txt")]
        assert s.get_document(str(tree / "finance" / "salaries.txt")).groups == ["finance"]
    assert "Dana" not in " ".join(_everyone_texts(settings).values())


@pytest.fixture
def rag(tree, settings, embedder):
    """The public notes ingested; a RAG over the store for downloads (no question, so no LLM is called)."""
    (tree / "public" / "notes.txt").write_text("Team notes: the offsite is in May.\n")
    assert ingest([tree], settings, embedder=embedder).ok
    settings = settings.model_copy(update={"llm_base_url": "http://127.0.0.1:9/v1"})
    store = open_store(settings)
    r = RAG(settings, store=store, embedder=embedder, endpoint=OpenAICompatibleEndpoint.from_settings(settings))
    yield r
    r.close()
    store.close()


@pytest.mark.attack(1, "download of a file swapped for a link after ingest serves the link's target")
def test_download_of_a_file_swapped_for_a_link_after_ingest_is_refused(rag, tree):
    """Attack: after ingest, ``public/notes.txt`` is replaced by a link to the salaries, then to the users file;
    the download button of an ``everyone`` user must not serve either."""
    notes = tree / "public" / "notes.txt"
    assert rag.read_source(str(notes), groups=["everyone"]) == notes.read_bytes()
    for target in (tree / "finance" / "salaries.txt", tree.parent / "users.toml"):
        notes.unlink()
        notes.symlink_to(target)
        with pytest.raises(RagError, match="changed since it was indexed; ingest it again") as ei:
            rag.read_source(str(notes), groups=["everyone"])
        assert "Dana" not in str(ei.value) and "argon2" not in str(ei.value)


@pytest.mark.attack(1, "download of a file rewritten after ingest serves bytes nobody checked")
def test_download_of_a_file_whose_bytes_changed_after_ingest_is_refused(rag, tree):
    """Attack: the same file rewritten in place (or hard-linked over) with other bytes after its groups were
    decided: only the bytes that were indexed, and so reviewed under the policy, are served."""
    notes = tree / "public" / "notes.txt"
    notes.write_text(SALARY + "\n")
    with pytest.raises(RagError, match="changed since it was indexed; ingest it again"):
        rag.read_source(str(notes), groups=["everyone"])
    notes.unlink()
    os.link(tree / "finance" / "salaries.txt", notes)
    with pytest.raises(RagError, match="changed since it was indexed; ingest it again"):
        rag.read_source(str(notes), groups=["everyone"])
    # Unindexed and unreadable paths keep the words that do not tell which of the two it is.
    with pytest.raises(AccessDenied, match="no such document, or you may not read it"):
        rag.read_source(str(tree / "finance" / "salaries.txt"), groups=["everyone"])
    with pytest.raises(AccessDenied, match="no such document, or you may not read it"):
        rag.read_source(str(tree.parent / "users.toml"), groups=["everyone"])

"""Hole 1 of the hardening issue: symbolic links. Each test performs the attack with real files in tmp_path, real
ingestion into the real embedded store and the packaged embedding model, and checks that nothing leaks.

The tree: ``docs/.rag-access.toml`` gives ``public/**`` to ``everyone`` and ``finance/**`` to ``finance``; a
``users.toml`` (as the data dir holds one) sits outside ``docs``. Whoever may write into ``public/`` plants links.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import ingest
from rag.index.store import SearchFilter, open_store
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

"""Access at ingest: .rag-access.toml files decide each document's groups, stored on every chunk and filtered
inside Qdrant; a policy change is applied without re-embedding; a broken policy stops the run before any write.
Real files, real embedded Qdrant, the packaged embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest import ingest
from ingest.pipeline import walk
from ingest.uploads import ingest_uploads
from rag.security.access import POLICY_FILE
from rag.errors import AccessPolicyError
from rag.index.sparse import get_sparse_encoder
from rag.index.store import SearchFilter, open_store

from conftest import rag_cmd

ROOT_POLICY = """\
# everything here is for staff, unless a rule says otherwise
default = ["staff"]

[[rule]]
match = "finance/**"
groups = ["finance"]

[[rule]]
match = "**/*salary*"
groups = ["hr"]
"""

#: relative path -> (groups, what decided them)
EXPECTED = {
    "public.md": (["staff"], "default"),
    "finance/q1.md": (["finance"], "rule"),
    "finance/salary-bands.md": (["hr"], "rule"),       # the last matching rule wins
    "finance/board/minutes.md": (["board"], "rule"),   # the nearest file with an answer wins
    "finance/board/notes.txt": (["finance"], "rule"),  # board's file has no answer: the root's decides
    "legal/contract.md": ([], "default"),              # default = []: no one at all
}


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    write(root, POLICY_FILE, ROOT_POLICY)
    write(root, f"finance/board/{POLICY_FILE}", '[[rule]]\nmatch = "*.md"\ngroups = ["board"]\n')
    write(root, f"legal/{POLICY_FILE}", "default = []\n")
    for rel in EXPECTED:
        topic = rel.rsplit("/", 1)[-1].split(".")[0].replace("-", " ")
        write(root, rel, f"# {topic}\n\nThe quarterly budget report for {topic}: spending, travel costs and the "
                         f"budget plan for the coming quarter, as agreed in {topic}.\n")
    return root


class CountingEmbedder:
    """The real embedder, counting the passages it embeds (to prove an access change re-embeds nothing)."""

    def __init__(self, inner) -> None:
        self._inner, self.embedded = inner, 0

    def embed_documents(self, texts):
        self.embedded += len(texts)
        return self._inner.embed_documents(texts)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _groups_in_store(store, root: Path) -> dict[str, list[list[str]]]:
    return {rel: [h.payload["groups"] for h in store.chunks_of(str(root / rel))] for rel in EXPECTED}


def test_policy_files_decide_groups_of_every_chunk_and_search_filters_in_every_mode(tree, settings, embedder):
    r = ingest([tree], settings, embedder=embedder)
    assert r.ok and r.added == len(EXPECTED) and r.access_updated == 0
    # Policy files are read, never ingested nor reported as skipped documents.
    assert not r.skipped and not r.warnings
    with open_store(settings) as s:
        assert not any(p.endswith(POLICY_FILE) for p in s.documents())
        for rel, (groups, decided_by) in EXPECTED.items():
            payload_groups = [h.payload["groups"] for h in s.chunks_of(str(tree / rel))]
            assert payload_groups and all(g == groups for g in payload_groups), rel
            rec = s.get_document(str(tree / rel))
            assert rec.groups == groups and rec.access["decided_by"] == decided_by
            assert rec.access["root"] == str(tree) and rec.access["signature"]
        why = s.get_document(str(tree / "finance/salary-bands.md")).access
        assert why["policy_file"] == str(tree / POLICY_FILE) and why["line"] == 8 and why["rule"] == ["**/*salary*"]
        assert f"{tree / POLICY_FILE}:8" in why["reason"]

        query = "quarterly budget report travel costs"
        vec = embedder.embed_query(query)
        sv = get_sparse_encoder(settings).embed_query(query)
        everything = {h.payload["path"] for h in s.query(vec, 50, None, sparse=sv, mode="hybrid")}
        assert everything == {str(tree / rel) for rel in EXPECTED}  # unfiltered, all documents match
        for user_groups in [("finance",), ("hr", "staff"), ("board",), ("admins",), ("legal",), ("everyone",)]:
            allowed = {str(tree / rel) for rel, (g, _) in EXPECTED.items() if set(g) & set(user_groups)}
            flt = SearchFilter(groups_any=user_groups)
            for mode in ("dense", "sparse", "hybrid"):
                hits = s.query(vec, 50, flt, sparse=sv, mode=mode)
                assert {h.payload["path"] for h in hits} == allowed, (user_groups, mode)
                assert all(set(h.payload["groups"]) & set(user_groups) for h in hits)
            for rel in EXPECTED:
                readable = s.chunks_of(str(tree / rel), groups_any=user_groups)
                assert bool(readable) == (str(tree / rel) in allowed)


def test_policy_change_updates_groups_without_reembedding(tree, settings, embedder):
    ingest([tree], settings, embedder=embedder)
    counting = CountingEmbedder(embedder)
    (tree / POLICY_FILE).write_text(ROOT_POLICY.replace('groups = ["finance"]', 'groups = ["finance", "audit"]'))
    r = ingest([tree], settings, embedder=counting)
    # q1.md and board/notes.txt are decided by the edited rule; nothing else changes.
    assert (r.unchanged, r.added, r.updated, r.access_updated, r.chunks) == (len(EXPECTED), 0, 0, 2, 0)
    assert counting.embedded == 0
    with open_store(settings) as s:
        got = _groups_in_store(s, tree)
        for rel in ("finance/q1.md", "finance/board/notes.txt"):
            assert got[rel] and all(g == ["audit", "finance"] for g in got[rel])
            assert s.get_document(str(tree / rel)).access["groups"] == ["audit", "finance"]
        assert all(g == ["hr"] for g in got["finance/salary-bands.md"])
        hits = s.query(embedder.embed_query("quarterly budget"), 50, SearchFilter(groups_any=("audit",)))
        assert {h.payload["path"] for h in hits} == {str(tree / "finance/q1.md"), str(tree / "finance/board/notes.txt")}
        before = s.get_document(str(tree / "public.md")).access["signature"]
    # A change that decides nothing differently (a comment) only refreshes the stored explanation.
    (tree / POLICY_FILE).write_text("# reviewed\n" + (tree / POLICY_FILE).read_text())
    r = ingest([tree], settings, embedder=counting)
    assert (r.access_updated, r.chunks, counting.embedded) == (0, 0, 0)
    with open_store(settings) as s:
        rec = s.get_document(str(tree / "finance/salary-bands.md"))
        assert rec.access["line"] == 9 and rec.access["signature"] != before
    # Removing the board's file hands its documents to the root's rules.
    (tree / "finance/board" / POLICY_FILE).unlink()
    r = ingest([tree], settings, embedder=counting)
    assert (r.access_updated, r.chunks, counting.embedded) == (1, 0, 0)
    with open_store(settings) as s:
        assert s.get_document(str(tree / "finance/board/minutes.md")).groups == ["audit", "finance"]


def test_groups_option_is_the_fallback_and_the_default_is_admins(tmp_path, settings, embedder):
    plain = tmp_path / "plain"
    write(plain, "a.md", "# A\n\nThe canteen opens at noon.\n")
    write(plain, "covered/b.md", "# B\n\nThe car park closes at ten.\n")
    write(plain, f"covered/{POLICY_FILE}", 'default = ["facilities"]\n')
    r = ingest([plain], settings, embedder=embedder)
    with open_store(settings) as s:
        a = s.get_document(str(plain / "a.md"))
        assert a.groups == ["admins"] and a.access["decided_by"] == "settings-default"
        assert "RAG_DEFAULT_GROUPS" in a.access["reason"]
    r = ingest([plain], settings, embedder=embedder, groups=["sales", "ops"])
    assert r.access_updated == 1 and r.chunks == 0  # --groups never overrides the policy file's decision
    with open_store(settings) as s:
        a, b = s.get_document(str(plain / "a.md")), s.get_document(str(plain / "covered/b.md"))
        assert a.groups == ["ops", "sales"] and a.access["decided_by"] == "groups-option"
        assert [h.payload["groups"] for h in s.chunks_of(str(plain / "a.md"))] == [["ops", "sales"]]
        assert b.groups == ["facilities"] and b.access["decided_by"] == "default"


def test_broken_policy_aborts_before_anything_is_written(tree, settings, embedder):
    ingest([tree], settings, embedder=embedder)
    with open_store(settings) as s:
        before = {p: (rec.sha256, rec.groups) for p, rec in s.documents().items()}
        n = s.count_chunks()
    (tree / "public.md").write_text("# public\n\nChanged text.\n")
    write(tree, "new.md", "# new\n\nA new document.\n")
    (tree / "finance/q1.md").unlink()
    # A broken file that governs no document at all still stops the run.
    write(tree, f"empty/{POLICY_FILE}", '[[rule]]\nmatch = "x"\ngroups = ["a"]\n\n[[rule]]\nmatch = "y"\n')
    with pytest.raises(AccessPolicyError) as ei:
        ingest([tree], settings, embedder=embedder)
    assert f"{tree / 'empty' / POLICY_FILE}:5:" in str(ei.value)
    with open_store(settings) as s:
        assert {p: (rec.sha256, rec.groups) for p, rec in s.documents().items()} == before
        assert s.count_chunks() == n
    # Into an empty store: not even the store is created.
    fresh = settings.model_copy(update={"data_dir": settings.data_dir.parent / "fresh"})
    with pytest.raises(AccessPolicyError):
        ingest([tree], fresh, embedder=embedder)
    assert not fresh.store_dir.exists()


def test_roots_of_files_given_directly_and_twice(tree):
    d = walk([tree / "finance/q1.md", tree, tree / POLICY_FILE])
    # Reached through the file and through the folder: the outermost root, whatever the order.
    assert d.file_roots[tree / "finance/q1.md"] == tree
    assert len(d.files) == len(EXPECTED)
    # Named explicitly, a policy file is skipped with a reason, not failed as an unsupported type.
    assert [f.path for f in d.skipped] == [str(tree / POLICY_FILE)] and not d.failed
    assert sorted(p.relative_to(tree).as_posix() for p in d.policy_files) == sorted(
        [POLICY_FILE, f"finance/board/{POLICY_FILE}", f"legal/{POLICY_FILE}", POLICY_FILE])


def test_file_given_on_its_own_reads_only_its_folders_policy(tree, settings, embedder):
    r = ingest([tree / "finance/board/minutes.md", tree / "finance/q1.md"], settings, embedder=embedder)
    with open_store(settings) as s:
        assert s.get_document(str(tree / "finance/board/minutes.md")).groups == ["board"]
        # finance/ has no policy file and the root's is above what was given: the fallback applies...
        assert s.get_document(str(tree / "finance/q1.md")).groups == ["admins"]
    # ... and the run says which policy file it did not apply.
    assert {w.path for w in r.warnings} == {str(tree / POLICY_FILE)}
    assert all("not applied" in w.reason for w in r.warnings)


def test_a_file_in_a_hidden_folder_gets_advice_that_works(tree, settings, embedder):
    """"Ingest the tree to apply it" cannot work for a document in a hidden folder: the tree's walk skips it."""
    notes = write(tree, ".drafts/plan.md", "# Plan\n\nThe offsite is in May.\n")
    r = ingest([notes], settings, embedder=embedder)
    assert r.added == 1
    assert [w.path for w in r.warnings] == [str(tree / POLICY_FILE)]
    reason = r.warnings[0].reason
    assert f"ingest {tree / '.drafts'} itself" in reason and f"ingest {tree} to apply it" not in reason
    assert notes not in walk([tree]).files and notes in walk([tree / ".drafts"]).files


def test_uploads_get_exactly_the_given_groups(settings, embedder):
    write(settings.uploads_dir, POLICY_FILE, 'default = ["someone-else"]\n')
    r = ingest_uploads([("memo.md", b"# Memo\n\nThe printer on floor 2 is fixed.\n")], settings,
                       embedder=embedder, groups=["user:ana"])
    assert r.added == 1 and r.ok
    path = str(settings.uploads_dir / "memo.md")
    with open_store(settings) as s:
        rec = s.get_document(path)
        assert rec.groups == ["user:ana"] and rec.access["decided_by"] == "given"
        assert all(h.payload["groups"] == ["user:ana"] for h in s.chunks_of(path))


def test_cli_reports_access_updates_explains_and_refuses_broken_policy(tree, tmp_path):
    env = {"RAG_DATA_DIR": str(tmp_path / "cli")}
    res = rag_cmd("ingest", str(tree), "--json", env=env)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["added"] == len(EXPECTED) and d["access_updated"] == 0 and d["skipped"] == []

    (tree / POLICY_FILE).write_text(ROOT_POLICY.replace('groups = ["hr"]', 'groups = ["hr", "payroll"]'))
    res = rag_cmd("access", str(tree / "finance"), "--json", env=env)
    assert res.returncode == 0, res.stderr
    docs = {Path(r["path"]).relative_to(tree).as_posix(): r for r in json.loads(res.stdout)["documents"]}
    assert set(docs) == {rel for rel in EXPECTED if rel.startswith("finance/")}
    salary = docs["finance/salary-bands.md"]
    assert salary["groups"] == ["hr"] and salary["stale"] and salary["current"]["groups"] == ["hr", "payroll"]
    assert f"{tree / POLICY_FILE}:8" in salary["access"]["reason"]

    res = rag_cmd("ingest", str(tree), env=env)
    assert res.returncode == 0, res.stderr
    assert "1 access updated" in res.stdout and "0 chunks written" in res.stdout
    res = rag_cmd("access", str(tree / "finance/salary-bands.md"), env=env)
    assert res.returncode == 0 and "hr, payroll" in res.stdout and "changed since" not in res.stdout

    (tree / "legal" / POLICY_FILE).write_text('default = ["legal"\n')
    res = rag_cmd("ingest", str(tree), "--json", env=env)
    assert res.returncode == 2 and f"{tree / 'legal' / POLICY_FILE}:1" in res.stderr and not res.stdout.strip()
    assert "Traceback" not in res.stderr


@pytest.mark.attack(7, "a .rag-access.toml others can write republishes a folder")
@pytest.mark.parametrize("how", ["world-writable", "group-writable", "another user's"])
def test_policy_file_others_could_write_refuses_the_run(tree, settings, embedder, how):
    import os

    ingest([tree], settings, embedder=embedder)
    with open_store(settings) as s:
        before = _groups_in_store(s, tree)
    # The attack: anyone who can write a policy file grants themselves every document under it.
    board = tree / "finance/board" / POLICY_FILE
    board.write_text('[[rule]]\nmatch = "*"\ngroups = ["everyone"]\n')
    if how == "another user's":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(board, 65534, 65534)
    else:
        os.chmod(board, 0o666 if how == "world-writable" else 0o664)
    with pytest.raises(AccessPolicyError) as ei:
        ingest([tree], settings, embedder=embedder)
    assert str(board) in str(ei.value)
    assert ("chown" if how == "another user's" else "chmod go-w") in str(ei.value)
    with open_store(settings) as s:
        assert _groups_in_store(s, tree) == before
        assert all(g != ["everyone"] for gs in before.values() for g in gs)


@pytest.mark.attack(7, "a .rag-access.toml that is a link borrows another policy the ingest user owns")
def test_policy_file_that_is_a_link_refuses_the_run(tree, settings, embedder, tmp_path):
    ingest([tree], settings, embedder=embedder)
    with open_store(settings) as s:
        before = _groups_in_store(s, tree)
    # The attack: someone who may write finance/board/ (not its policy file) cannot plant a policy of their own
    # (they would own it) but can link to any TOML file the ingest user owns, such as a policy granting everyone.
    granting = tmp_path / "elsewhere" / POLICY_FILE
    write(tmp_path / "elsewhere", POLICY_FILE, '[[rule]]\nmatch = "*"\ngroups = ["everyone"]\n')
    board = tree / "finance/board" / POLICY_FILE
    board.unlink()
    board.symlink_to(granting)
    with pytest.raises(AccessPolicyError) as ei:
        ingest([tree], settings, embedder=embedder)
    assert str(board) in str(ei.value) and "symbolic link" in str(ei.value)
    with open_store(settings) as s:
        assert _groups_in_store(s, tree) == before
    # A link that points nowhere is no way around it either.
    board.unlink()
    board.symlink_to(tmp_path / "missing.toml")
    with pytest.raises(AccessPolicyError, match="symbolic link"):
        ingest([tree], settings, embedder=embedder)

"""Incremental ingestion end to end: real files, real embedded Qdrant, the packaged embedding model."""

from __future__ import annotations

import json
import shutil


from ingest import forget, ingest
from rag.index.store import open_store
from rag.index.store.edge import EdgeStore
from rag.index.store.server import QdrantServerStore

from conftest import rag_cmd


def _count(settings):
    with open_store(settings) as s:
        return s.count_chunks(), sorted(s.documents())


def test_add_then_unchanged_is_idempotent(docs, settings, embedder):
    r1 = ingest([docs], settings, embedder=embedder)
    assert (r1.added, r1.updated, r1.unchanged, r1.removed, r1.failed) == (5, 0, 0, 0, [])
    assert r1.chunks > 20 and r1.pages == 7
    n1, paths = _count(settings)
    assert n1 == r1.chunks and len(paths) == 5
    r2 = ingest([docs], settings, embedder=embedder)
    assert (r2.added, r2.updated, r2.unchanged, r2.chunks) == (0, 0, 5, 0)
    assert _count(settings)[0] == n1


def test_update_add_delete(docs, settings, embedder):
    ingest([docs], settings, embedder=embedder)
    md = docs / "it-security.md"
    md.write_text(md.read_text() + "\n\n## Printers\n\nColour printing needs a cost centre code.\n")
    (docs / "new.txt").write_text("The rooftop terrace opens in May.\n")
    faq_chunks = None
    with open_store(settings) as s:
        faq_chunks = s.count_chunks(str(docs / "office-faq.txt"))
    (docs / "office-faq.txt").unlink()
    r = ingest([docs], settings, embedder=embedder)
    assert (r.added, r.updated, r.unchanged, r.removed) == (1, 1, 3, 1)
    assert r.chunks_removed == faq_chunks
    with open_store(settings) as s:
        assert s.count_chunks(str(docs / "office-faq.txt")) == 0
        texts = " ".join(h.payload["text"] for h in s.chunks_of(str(md)))
        assert "cost centre code" in texts
        assert s.get_document(str(md)).sha256 != ""
        # No stale chunk of an old version anywhere: the store holds exactly what the registry says.
        assert s.count_chunks() == sum(rec.chunks for rec in s.documents().values())
        assert s.chunk_paths() == {p: rec.chunks for p, rec in s.documents().items()}
    # A folder that is gone as a whole is a failure and keeps its documents (an unmounted share looks the same);
    # taking them out is `rag forget`'s job.
    shutil.rmtree(docs)
    r = ingest([docs], settings, embedder=embedder)
    assert r.removed == 0 and [f.path for f in r.failed] == [str(docs)]
    assert r.failed[0].reason.startswith("no such file or directory: its 5 documents stay")
    assert f"rag forget {docs}" in r.failed[0].reason
    assert len(_count(settings)[1]) == 5
    assert forget([docs], settings).removed == 5
    assert _count(settings) == (0, [])


def test_an_emptied_folder_keeps_its_documents(docs, settings, embedder):
    """A scheduled ingest of a share that is not mounted sees an empty mount point: it must not empty the index.
    A folder that still holds something (here only an unsupported file) follows its files as usual."""
    ingest([docs], settings, embedder=embedder)
    for f in docs.iterdir():
        f.unlink()
    (docs / ".sync-state").write_text("hidden files are never walked, so they do not make the folder non-empty")
    r = ingest([docs], settings, embedder=embedder)
    assert r.removed == 0 and [f.reason.split(":")[0] for f in r.failed] == ["the folder is empty"]
    assert len(_count(settings)[1]) == 5
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    r = ingest([docs], settings, embedder=embedder)
    assert r.removed == 5 and not r.failed
    assert _count(settings) == (0, [])


def test_a_named_file_that_is_gone_stays_until_forgotten(docs, settings, embedder):
    pdf = docs / "employee-handbook.pdf"
    ingest([pdf, docs / "benefits.docx"], settings, embedder=embedder)
    pdf.unlink()
    r = ingest([pdf, docs / "benefits.docx"], settings, embedder=embedder)
    assert r.removed == 0 and r.unchanged == 1 and r.failed[0].path == str(pdf)
    assert "its document stays" in r.failed[0].reason and f"rag forget {pdf}" in r.failed[0].reason
    assert len(_count(settings)[1]) == 2


def _notes(folder, n, first=0):
    """``n`` small text documents in ``folder``, each with its own text."""
    folder.mkdir(exist_ok=True)
    for i in range(first, first + n):
        (folder / f"note-{i:03}.txt").write_text(f"Meeting note {i}: room {i * 7 % 50} is booked for team {i}.\n")
    return [folder / f"note-{i:03}.txt" for i in range(first, first + n)]


def test_a_partial_loss_over_the_limit_keeps_its_documents(docs, settings, embedder):
    """A half-mounted share (a subfolder's mount missing, a failed rsync) lost most of an ingested folder's
    documents at once, with exit 0: now more than RAG_INGEST_MAX_REMOVE (50 % past 20 documents) stay, the folder
    is a failure that says how to remove them on purpose, and the rest of the run goes on."""
    archive = docs / "archive"
    _notes(archive, 25)
    assert ingest([docs], settings, embedder=embedder).added == 30
    shutil.rmtree(archive)
    md = docs / "it-security.md"
    md.write_text(md.read_text() + "\n\n## Printers\n\nColour printing needs a cost centre code.\n")
    (docs / "new.txt").write_text("The rooftop terrace opens in May.\n")
    r = ingest([docs], settings, embedder=embedder)
    assert (r.added, r.updated, r.unchanged, r.removed) == (1, 1, 4, 0)
    assert [f.path for f in r.failed] == [str(docs)]
    reason = r.failed[0].reason
    assert reason.startswith("25 of its 30 documents (83%) are gone, over the limit of 50% of its documents")
    assert "they stay in the index" in reason and "RAG_INGEST_MAX_REMOVE" in reason
    assert f"`rag ingest {docs} --max-remove 100%` removes them" in reason
    assert f"`rag forget {archive}` takes out just them" in reason  # the folder holds exactly what went
    assert len(_count(settings)[1]) == 31
    # The same run again says the same: nothing was lost in between.
    r = ingest([docs], settings, embedder=embedder)
    assert r.removed == 0 and r.failed[0].reason == reason.replace("30 documents (83%)", "31 documents (80%)")
    assert forget([archive], settings).removed == 25
    assert len(_count(settings)[1]) == 6
    assert ingest([docs], settings, embedder=embedder).ok


def test_removals_within_the_limit_go_as_before(docs, settings, embedder):
    """Up to 20 documents of a folder go whatever its size; above that, up to the percentage; a count is a
    count; 100 % is no limit."""
    notes = _notes(docs / "notes", 45)
    assert ingest([docs], settings, embedder=embedder).added == 50
    for f in notes[:20]:  # 40 % of the folder, but only 20 documents
        f.unlink()
    r = ingest([docs], settings, embedder=embedder)
    assert r.ok and r.removed == 20 and len(_count(settings)[1]) == 30
    for f in notes[20:35]:  # 15 of 30 documents: exactly half
        f.unlink()
    strict = settings.model_copy(update={"ingest_max_remove": "10"})
    r = ingest([docs], strict, embedder=embedder)
    assert r.removed == 0 and [f.path for f in r.failed] == [str(docs)]
    assert r.failed[0].reason.startswith("15 of its 30 documents (50%) are gone, over the limit of 10 documents")
    # Scattered through a folder that keeps others: the hint names one of them, not the folder.
    assert f"`rag forget PATH` takes out a file or folder that went (one: {notes[20]})" in r.failed[0].reason
    r = ingest([docs], settings, embedder=embedder)
    assert r.ok and r.removed == 15 and len(_count(settings)[1]) == 15
    for f in notes[35:]:
        f.unlink()
    r = ingest([docs], settings.model_copy(update={"ingest_max_remove": "0"}), embedder=embedder)
    assert r.removed == 0 and "over the limit of 0 documents" in r.failed[0].reason
    r = ingest([docs], settings.model_copy(update={"ingest_max_remove": "100%"}), embedder=embedder)
    assert r.ok and r.removed == 10 and len(_count(settings)[1]) == 5


def test_cli_max_remove_lets_an_intended_removal_through(docs, tmp_path, settings, embedder):
    """`rag ingest` refuses the partial loss with exit 1 and the way out; --max-remove 100% is that way out;
    a limit that means nothing is an error saying what is accepted, before anything is done."""
    notes = _notes(docs / "notes", 25)
    assert ingest([docs], settings, embedder=embedder).added == 30
    for f in notes[:22]:
        f.unlink()
    env = {"RAG_DATA_DIR": str(settings.data_dir)}
    res = rag_cmd("ingest", str(docs), "--json", env=env)
    assert res.returncode == 1, res.stderr
    d = json.loads(res.stdout)
    assert d["removed"] == 0 and [f["path"] for f in d["failed"]] == [str(docs)]
    assert d["failed"][0]["reason"].startswith("22 of its 30 documents (73%) are gone")
    assert f"rag ingest {docs} --max-remove 100%" in d["failed"][0]["reason"]
    res = rag_cmd("ingest", str(docs), env=env)  # the human-readable report says it too
    assert res.returncode == 1 and "22 of its 30 documents" in res.stderr and "--max-remove 100%" in res.stderr
    for bad in (["--max-remove", "lots"], ["--max-remove", "150%"]):
        res = rag_cmd("ingest", str(docs), *bad, env=env)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "--max-remove is a percentage of a folder's documents" in res.stderr and "number of documents" in res.stderr
    res = rag_cmd("ingest", str(docs), env=env | {"RAG_INGEST_MAX_REMOVE": "half"})
    assert res.returncode == 2 and "RAG_INGEST_MAX_REMOVE is a percentage" in res.stderr
    assert len(_count(settings)[1]) == 30
    res = rag_cmd("ingest", str(docs), "--max-remove", "100%", "--json", env=env)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["removed"] == 22 and d["failed"] == [] and d["unchanged"] == 8
    assert len(_count(settings)[1]) == 8


def test_changed_chunking_settings_reingest(docs, settings, embedder):
    ingest([docs], settings, embedder=embedder)
    smaller = settings.model_copy(update={"chunk_tokens": 64})
    r = ingest([docs], smaller, embedder=embedder)
    assert r.updated == 5 and r.unchanged == 0
    with open_store(settings) as s:
        assert max(h.payload["token_count"] for p in s.chunk_paths() for h in s.chunks_of(p)) <= 64



def test_changed_bm25_parameters_reingest(docs, settings, embedder):
    """The BM25 weights are stored per chunk: a new length normalisation must re-encode every document."""
    ingest([docs], settings, embedder=embedder)
    stronger = settings.model_copy(update={"bm25_b": 0.75})
    r = ingest([docs], stronger, embedder=embedder)
    assert r.updated == 5 and r.unchanged == 0
    assert ingest([docs], stronger, embedder=embedder).unchanged == 5

def test_payload_metadata(docs, settings, embedder):
    ingest([docs / "employee-handbook.pdf"], settings, embedder=embedder)
    with open_store(settings) as s:
        hits = s.chunks_of(str(docs / "employee-handbook.pdf"))
    import hashlib

    sha = hashlib.sha256((docs / "employee-handbook.pdf").read_bytes()).hexdigest()
    table = next(h for h in hits if "Lisbon 140 36" in h.payload["text"])
    p = table.payload
    assert p["page_start"] == 5 and p["section"] == "4.3 Per-Diem Rates" and p["doc_sha256"] == sha
    assert p["source"] == "employee-handbook.pdf" and p["groups"] == ["admins"]
    assert {"char_start", "char_end", "chunk_index", "chunk_count", "token_count", "title"} <= set(p)


def test_bad_and_tricky_files(bad_files, settings, embedder):
    r = ingest([bad_files], settings, embedder=embedder)
    failed = {f.path.rsplit("/", 1)[-1]: f.reason for f in r.failed}
    bad = sorted(p.name for p in (bad_files / "bad").iterdir())
    assert sorted(failed) == bad and all(failed.values())
    assert r.added == len(list((bad_files / "tricky").iterdir()))
    assert not r.ok


def test_groups_change_without_reembedding(docs, settings, embedder):
    ingest([docs], settings, embedder=embedder, groups=["hr"])
    r = ingest([docs], settings, embedder=embedder, groups=["hr", "staff"])
    assert r.access_updated == 5 and r.chunks == 0
    with open_store(settings) as s:
        assert all(h.payload["groups"] == ["hr", "staff"] for p in s.chunk_paths() for h in s.chunks_of(p))


def test_forget(docs, settings, embedder):
    ingest([docs], settings, embedder=embedder)
    r = forget([docs / "benefits.docx"], settings)
    assert r.removed == 1 and r.chunks_removed > 0
    assert len(_count(settings)[1]) == 4
    assert forget([docs / "nope.pdf"], settings).failed


def test_missing_path_is_reported(tmp_path, settings, embedder):
    r = ingest([tmp_path / "does-not-exist"], settings, embedder=embedder)
    assert [f.reason for f in r.failed] == ["no such file or directory"]


def test_unsupported_in_folder_is_skipped_not_failed(docs, settings, embedder):
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (docs / ".hidden.md").write_text("# hidden")
    r = ingest([docs], settings, embedder=embedder)
    assert r.ok and [s.path.rsplit("/", 1)[-1] for s in r.skipped] == ["logo.png"] and r.added == 5


def test_server_backend_gives_the_same_index(docs, settings, embedder, tmp_path):
    ingest([docs], settings, embedder=embedder)
    edge_n, _ = _count(settings)
    store = QdrantServerStore("documents", path=str(tmp_path / "qc"))
    r = ingest([docs], settings, embedder=embedder, store=store)
    assert r.added == 5 and store.count_chunks() == edge_n
    r = ingest([docs], settings, embedder=embedder, store=store)
    assert r.unchanged == 5
    store.close()


def test_cli_json_exit_codes_and_status(docs, tmp_path, bad_files):
    env = {"RAG_DATA_DIR": str(tmp_path / "cli")}
    res = rag_cmd("ingest", str(docs), "--json", env=env)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert (d["added"], d["updated"], d["unchanged"], d["removed"], d["failed"]) == (5, 0, 0, 0, [])
    assert d["chunks"] > 0
    st = json.loads(rag_cmd("status", "--json", env=env).stdout)
    assert st["documents"] == 5 and st["chunks"] == d["chunks"] and st["backend"] == "qdrant-edge"
    assert st["retrieval_mode"] == "hybrid" and st["fusion"].startswith("score (cosine + 0.5 x BM25")
    assert st["fusion"].endswith("feedback from the best 5 dense hits x 0.25)")
    off = json.loads(rag_cmd("status", "--json", env=env | {"RAG_HYBRID_FEEDBACK_HITS": "0"}).stdout)
    assert off["fusion"] == "score (cosine + 0.5 x BM25 / best BM25, 100 candidates a side)"
    rrf = json.loads(rag_cmd("status", "--json", env=env | {"RAG_HYBRID_FUSION": "rrf"}).stdout)
    assert rrf["fusion"] == "rrf (k=5, 100 candidates a side)"
    res = rag_cmd("ingest", str(bad_files / "bad"), "--json", env=env)
    assert res.returncode == 1
    failed = json.loads(res.stdout)["failed"]
    assert failed and all(set(f) == {"path", "reason"} for f in failed)
    res = rag_cmd("ingest", str(bad_files / "bad" / "empty.pdf"), env=env)
    assert res.returncode == 1 and "empty.pdf" in res.stderr and "empty file" in res.stderr


def test_cli_reports_locked_store(docs, tmp_path):
    from rag.settings import Settings

    settings = Settings(data_dir=tmp_path / "locked")
    holder = EdgeStore(settings.store_dir)
    try:
        res = rag_cmd("ingest", str(docs), env={"RAG_DATA_DIR": str(settings.data_dir)})
        assert res.returncode == 2
        assert "open in another process" in res.stderr and "Traceback" not in res.stderr
    finally:
        holder.close()


def test_cli_invalid_settings(tmp_path):
    res = rag_cmd("status", env={"RAG_DATA_DIR": str(tmp_path), "RAG_CHUNK_TOKENS": "many"})
    assert res.returncode == 2 and "RAG_" in res.stderr and "Traceback" not in res.stderr


def test_an_unreadable_folder_keeps_its_documents_and_is_reported(docs, settings, embedder):
    """A permission glitch (or an NFS hiccup) on a subfolder removed everything ingested from it, with exit 0
    and no word; now the folder is a failure (exit 1) and its documents stay."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    sub = docs / "archive"
    sub.mkdir()
    (sub / "zeta.txt").write_text("The Zeta archive is kept in building 9.\n")
    assert ingest([docs], settings, embedder=embedder).added == 6
    cmd = [str(Path(sys.executable).parent / "rag"), "ingest", str(docs), "--json"]
    if os.geteuid() == 0:  # root reads any folder: run without the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("needs util-linux's setpriv to drop root's read-anything capabilities")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    sub.chmod(0)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "RAG_DATA_DIR": str(settings.data_dir)})
    finally:
        sub.chmod(0o755)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["removed"] == 0 and [f["path"] for f in out["failed"]] == [str(sub)]
    assert "cannot read folder" in out["failed"][0]["reason"] and "stays in the index" in out["failed"][0]["reason"]
    assert str(sub / "zeta.txt") in _count(settings)[1]


def test_a_path_is_one_document_however_it_is_written(docs, settings, embedder, monkeypatch):
    monkeypatch.chdir(docs)
    assert ingest([docs], settings, embedder=embedder).added == 5
    r = ingest([f"../{docs.name}", f"{docs}/../{docs.name}/"], settings, embedder=embedder)
    assert (r.added, r.unchanged) == (0, 5)
    assert len(_count(settings)[1]) == 5
    assert forget([f"../{docs.name}/office-faq.txt"], settings).removed == 1


def test_a_folder_swapped_for_a_link_takes_its_documents_out(docs, settings, embedder, tmp_path):
    sub = docs / "archive"
    sub.mkdir()
    (sub / "zeta.txt").write_text("The Zeta archive is kept in building 9.\n")
    assert ingest([docs], settings, embedder=embedder).added == 6
    sub.rename(tmp_path / "moved")
    sub.symlink_to(tmp_path / "moved")  # links are never followed inside a walk: the document left the folder
    r = ingest([docs], settings, embedder=embedder)
    assert r.removed == 1 and str(sub / "zeta.txt") not in _count(settings)[1]


def test_a_document_that_turns_bad_is_counted_as_removed(docs, settings, embedder):
    ingest([docs], settings, embedder=embedder)
    (docs / "employee-handbook.pdf").write_bytes(b"%PDF-1.7\n garbage")
    r = ingest([docs], settings, embedder=embedder)
    assert r.removed == 1 and len(r.failed) == 1
    assert "earlier version is taken out of the index" in r.failed[0].reason


def test_ingest_json_reports_what_was_done_when_interrupted(tmp_path):
    """Ctrl-C used to leave `rag ingest --json` with an empty stdout: its "interrupted" field could never be true."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(400):
        (docs / f"note-{i:03}.md").write_text(f"# Note {i}\n\nMeeting room {i} is on floor {i % 7}.\n")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "ingest", str(docs), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAG_DATA_DIR": str(tmp_path / "data")})
    time.sleep(8)  # the model loads, then files are parsed one by one: 400 take far longer than this
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["files_seen"] == 400 and report["added"] < 400


def test_search_refuses_what_it_cannot_answer(tmp_path):
    """An empty query returned ranked results, and -k 0 on a full index said "the index is empty"."""
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    r = rag_cmd("search", "  ", env=env)
    assert r.returncode == 2 and "the query is empty" in r.stderr
    r = rag_cmd("search", "vacation", "-k", "0", env=env)
    assert r.returncode == 2 and "--top-k" in r.stderr


def test_status_of_a_new_index_shows_the_mode_it_will_use(tmp_path):
    """A store not created yet said "retrieval mode dense" though the setting (hybrid) applies from its first ingest."""
    r = rag_cmd("status", "--json", env={"RAG_DATA_DIR": str(tmp_path / "data")})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["retrieval_mode"] == "hybrid"

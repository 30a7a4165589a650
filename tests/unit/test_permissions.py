"""Document-level permissions on every read path, both store backends (property-based with hypothesis).

A corpus of documents that all match the same questions is ingested once per backend; each example then gives
the documents random groups (``set_groups``: no re-embedding) and asks as a random user. Whatever path the
user reads through — retrieval in every mode, the LangChain retriever, a document's chunks, the source
viewer/download guard, the chain's citations — nothing outside their groups may come back, and the filter must
not hide what they may read.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rag.security.access import EVERYONE
from rag.security.auth import Identity, identity_of, local_identity
from rag.generation.chain import RAG, Citation
from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.errors import AccessDenied
from rag.retrieval.retriever import Retriever, StoreRetriever
from rag.security.users import User

GROUPS = ["hr", "it", "finance", "legal", EVERYONE]
TEAMS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
QUESTIONS = ["What is the budget code of the project?", "project budget approval", "Who approves the budget?",
             "budget code"]


def _doc(team: str, i: int) -> str:
    return (f"# Project {team.title()}\n\nThe {team} project budget is approved by the steering board. "
            f"Its budget code is {team.upper()}-{4000 + i} and only its members may know it.\n\n"
            f"Questions about the {team} project budget go to the project office.\n")


@pytest.fixture(scope="module", params=["edge", "edge-hnsw", "qdrant-client-local"])
def corpus(request, tmp_path_factory, embedder):
    from ingest import ingest
    from rag.settings import Settings
    from rag.index.store import IndexOptions
    from rag.index.store.edge import EdgeStore
    from rag.index.store.server import QdrantServerStore

    root = tmp_path_factory.mktemp(f"perm-{request.param}")
    docs = root / "docs"
    docs.mkdir()
    paths = []
    for i, team in enumerate(TEAMS):
        f = docs / f"{team}.md"
        f.write_text(_doc(team, i))
        paths.append(str(f.resolve()))
    settings = Settings(data_dir=root / "data", min_score=0.0, top_k=50,
                        llm_base_url="http://127.0.0.1:9/v1")  # never called: no question reaches an LLM here
    if request.param == "edge":
        store = EdgeStore(settings.store_dir)
    elif request.param == "edge-hnsw":  # a graph over even these few chunks, searched through with the filter
        store = EdgeStore(settings.store_dir, IndexOptions(kind="hnsw-int8", threshold_kb=1))
    else:
        store = QdrantServerStore("perm", path=str(root / "qc"))
    report = ingest([docs], settings, store=store, embedder=embedder)
    assert report.added == len(TEAMS) and not report.failed
    if request.param == "edge-hnsw":
        assert report.index["indexed"] == report.index["points"] > 0  # ingest built the graph
    rag = RAG(settings, store=store, embedder=embedder, endpoint=OpenAICompatibleEndpoint.from_settings(settings))
    yield rag, paths
    rag.close()
    store.close()


def _user(groups: set[str]) -> Identity:
    return identity_of(User(name="u", groups=tuple(sorted(groups))), "password")


def _readable(doc_groups: dict[str, set[str]], user: Identity) -> set[str]:
    return {p for p, g in doc_groups.items() if g & set(user.groups)}


assignments = st.lists(st.sets(st.sampled_from(GROUPS), max_size=2), min_size=len(TEAMS), max_size=len(TEAMS))


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(assign=assignments, user_groups=st.sets(st.sampled_from(GROUPS[:-1]), max_size=3),
       question=st.sampled_from(QUESTIONS), mode=st.sampled_from(["dense", "sparse", "hybrid"]))
def test_a_user_reads_only_their_groups_documents(corpus, assign, user_groups, question, mode):
    rag, paths = corpus
    doc_groups = dict(zip(paths, assign, strict=True))
    for p, g in doc_groups.items():
        rag.store.set_groups(p, sorted(g))
    user = _user(user_groups)
    allowed = _readable(doc_groups, user)

    # Retrieval, in the mode drawn, through our retriever and the chain's entry point.
    retriever = Retriever.from_settings(rag.settings.model_copy(update={"retrieval_mode": mode}), rag.store,
                                        rag.embedder, top_k=50, min_score=float("-inf"))
    got = retriever.retrieve(question, groups=user.groups_any).passages
    assert {p.path for p in got} <= allowed
    if mode == "dense":
        # Exact search: the filtered result is exactly the unfiltered ranking with unreadable chunks removed,
        # so the filter hides nothing the user may read.
        everything = retriever.retrieve(question).passages
        assert [p.id for p in got] == [p.id for p in everything if p.path in allowed][:50]
    else:
        # Every document here matches the question's keywords, so the fused result holds all readable ones.
        assert {p.path for p in got} == allowed
    via_chain = rag.retrieve(question, user=user).passages
    assert {p.path for p in via_chain} <= allowed

    # The LangChain retriever a developer would plug into their own chain.
    lc = StoreRetriever(retriever=retriever, groups=list(user.groups)).invoke(question)
    assert {d.metadata["path"] for d in lc} <= allowed

    # A document's chunks (source viewer), the download guard and the file itself.
    for p in paths:
        chunks = rag.store.chunks_of(p, groups_any=user.groups_any)
        assert bool(chunks) == (p in allowed)
        assert rag.readable(p, user=user) == (p in allowed)
        if p in allowed:
            assert rag.read_source(p, user=user).startswith(b"# Project")
        else:
            with pytest.raises(AccessDenied):
                rag.read_source(p, user=user)

    # Citations: what the chain packs into the prompt and numbers as sources comes only from that retrieval.
    if via_chain:
        packing = rag.pack(via_chain, question, context_window=4096)
        assert {s.path for s in packing.sources} <= allowed
        for s in packing.sources:
            assert all(p.path in allowed for p in s.passages)


def test_local_mode_sees_everything_and_unknown_files_are_refused(corpus, tmp_path):
    rag, paths = corpus
    for p in paths:
        rag.store.set_groups(p, ["legal"])
    local = local_identity()
    assert {p.path for p in rag.retrieve("budget code", user=local).passages} == set(paths)
    # Only indexed documents can be read, whoever asks: not an arbitrary file on the server.
    secret = tmp_path / "not-indexed.txt"
    secret.write_text("x")
    for who in (local, _user({"legal"})):
        with pytest.raises(AccessDenied, match="no such document, or you may not read it"):
            rag.read_source(str(secret), user=who)
    with pytest.raises(ValueError):
        rag.retrieve("x", user=local, groups=["legal"])


def test_citation_objects_carry_only_the_paths_given(corpus):
    # The UI renders Citation objects; they are built from packed sources only (no second lookup).
    rag, paths = corpus
    for p in paths:
        rag.store.set_groups(p, ["hr"] if "alpha" in p else ["it"])
    user = _user({"hr"})
    packing = rag.pack(rag.retrieve("budget code", user=user).passages, "budget code", context_window=4096)
    from rag.generation.generate import citation as _citation

    cites = [_citation(s, False) for s in packing.sources]
    assert cites and all(isinstance(c, Citation) and "alpha" in c.path for c in cites)

"""The conversations store (rag/conversations) against both databases it supports: SQLite in the data dir and a
real PostgreSQL server (started by the postgres_server fixture). Every test runs on both."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from conftest import rag_cmd
from rag.conversations import ConversationNotFound, ConversationStore
from rag.conversations.store import DAY_S, make_engine, migrate
from rag.ops import metrics
from rag.settings import Settings

T0 = 1_800_000_000.0  # a fixed "now": retention is tested by moving this clock, never by sleeping


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """Settings pointing at an empty database of each kind; ``opened(clock)`` opens the store on it (a second
    call is what a restarted UI does)."""
    settings = Settings(data_dir=tmp_path / "data")
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server")()
        settings = settings.model_copy(update={"database_url": SecretStr(url)})
    opened: list[ConversationStore] = []

    def open_(clock=None, **update) -> ConversationStore:
        s = settings.model_copy(update=update)
        store = ConversationStore.open(s, clock=clock or Clock())
        opened.append(store)
        return store

    open_.settings = settings
    open_.kind = request.param
    yield open_
    for store in opened:
        store.close()


def _answer(store: ConversationStore, owner: str, conv: str, q: str, path: str = "handbook.pdf"):
    return store.append_turn(owner, conv, question=q, answer=f"Answer to {q} [1]",
                             sources=[{"n": 1, "path": path, "page": 3, "snippet": "30 days", "cited": True}],
                             model="smollm2", timings={"total": 1.5, "ttft": 0.2}, details={"refused": False})


def test_conversations_are_kept_listed_renamed_and_deleted_across_a_restart(backend):
    clock = Clock()
    store = backend(clock)
    first = store.create("alice", "  How many   vacation days do I get?  ")
    assert first.title == "How many vacation days do I get?"
    _answer(store, "alice", first.id, "How many vacation days do I get?")
    clock.now += 60
    second = store.create("alice", "x" * 500)
    assert len(second.title) <= 80 and second.title.endswith("…")
    clock.now += 60
    _answer(store, "alice", first.id, "And carried over?")  # using the first again moves it to the top
    store.close()

    store = backend(clock)  # a restart: a new process opens the same database
    listed = store.conversations("alice")
    assert [(c.id, c.turns) for c in listed] == [(first.id, 2), (second.id, 0)]
    turns = store.turns("alice", first.id)
    assert [t.question for t in turns] == ["How many vacation days do I get?", "And carried over?"]
    assert turns[0].sources[0]["path"] == "handbook.pdf" and turns[0].model == "smollm2"
    assert turns[0].timings == {"total": 1.5, "ttft": 0.2} and turns[0].details == {"refused": False}

    store.rename("alice", second.id, "Parking")
    assert [c.title for c in store.conversations("alice")][0] == "Parking"  # renaming counts as use
    store.delete("alice", first.id)
    assert [c.id for c in store.conversations("alice")] == [second.id]
    with pytest.raises(ConversationNotFound):
        store.turns("alice", first.id)


@pytest.mark.attack("evidence", "user B lists, opens, renames, deletes, continues and rates user A's "
                                "conversation by its id")
def test_another_user_never_reaches_a_conversation_by_its_id(backend):
    store = backend()
    conv = store.create("alice", "Salary review")
    turn = _answer(store, "alice", conv.id, "What is my salary band?", path="hr/salaries.xlsx")

    assert store.conversations("bob") == []
    attempts = [lambda: store.turns("bob", conv.id),
                lambda: store.rename("bob", conv.id, "pwned"),
                lambda: store.delete("bob", conv.id),
                lambda: store.append_turn("bob", conv.id, question="planted", answer="planted"),
                lambda: store.add_feedback("bob", turn.id, -1, "spam")]
    for attempt in attempts:
        with pytest.raises(ConversationNotFound) as caught:
            attempt()
        # The same words as for an id that does not exist: nothing tells bob the id is real.
        assert "not yours" in str(caught.value)
    with pytest.raises(ConversationNotFound) as missing:
        store.turns("bob", "00000000-0000-0000-0000-000000000000")
    assert str(missing.value) == str(ConversationNotFound("No such conversation: it was deleted, or it is not "
                                                          "yours."))

    (kept,) = store.conversations("alice")
    assert kept.title == "Salary review" and kept.turns == 1
    (t,) = store.turns("alice", conv.id)
    assert t.question == "What is my salary band?" and t.rating is None
    assert store.export() == []


def test_feedback_is_stored_with_what_was_rated_exported_counted_and_listed_worst_first(backend):
    clock = Clock()
    store = backend(clock)
    conv = store.create("alice", "Vacation")
    good = _answer(store, "alice", conv.id, "How many vacation days?")
    bad = _answer(store, "alice", conv.id, "Who approves travel?", path="travel-policy.md")
    other = store.create("bob", "VPN")
    bobs = _answer(store, "bob", other.id, "How do I reach the VPN?", path="it-security.md")

    down = metrics.FEEDBACK.labels("down")._value.get()
    store.add_feedback("alice", good.id, 1)
    clock.now += 1
    store.add_feedback("alice", bad.id, 1, "")
    clock.now += 1
    store.add_feedback("alice", bad.id, -1, "  It names the wrong manager.  ")  # a second rating replaces it
    clock.now += 1
    store.add_feedback("bob", bobs.id, -1)
    assert metrics.FEEDBACK.labels("down")._value.get() == down + 2
    with pytest.raises(ValueError):
        store.add_feedback("alice", good.id, 5)

    assert [(t.rating, t.comment) for t in store.turns("alice", conv.id)] == [(1, ""),
                                                                              (-1, "It names the wrong manager.")]
    records = store.export()
    assert [(r.user, r.rating) for r in records] == [("alice", 1), ("alice", -1), ("bob", -1)]
    rated = records[1].to_dict()
    assert rated["question"] == "Who approves travel?" and rated["model"] == "smollm2"
    assert rated["sources"][0]["path"] == "travel-policy.md" and rated["comment"] == "It names the wrong manager."
    assert [r.question for r in store.worst_rated()] == ["How do I reach the VPN?", "Who approves travel?"]

    # Deleting the conversation keeps the feedback: it holds its own copy of what was rated.
    store.delete("alice", conv.id)
    assert len(store.export()) == 3 and store.export()[1].turn_id is None


def test_retention_deletes_old_conversations_and_feedback_at_open_and_daily(backend):
    clock = Clock()
    store = backend(clock, chat_retention_days=30)
    old = store.create("alice", "Old")
    rated = _answer(store, "alice", old.id, "old question")
    store.add_feedback("alice", rated.id, -1)
    clock.now += 20 * DAY_S
    young = store.create("alice", "Young")

    clock.now += 11 * DAY_S  # "old" is 31 days untouched, "young" 11: a restart purges at open
    store = backend(clock, chat_retention_days=30)
    assert [c.id for c in store.conversations("alice")] == [young.id]
    assert store.export() == []

    clock.now += 19 * DAY_S + 60  # the same open store, a day later than its last purge: "young" is 30 days old
    assert store.conversations("alice") == []

    keep = backend(clock, chat_retention_days=0)  # 0 = forever
    kept = keep.create("alice", "Forever")
    clock.now += 10_000 * DAY_S
    assert [c.id for c in keep.conversations("alice")] == [kept.id]


def test_an_upgrade_from_the_first_schema_keeps_the_history(backend):
    from rag.conversations.store import database_url

    engine = make_engine(database_url(backend.settings) if backend.kind == "postgresql"
                         else _sqlite_url(backend.settings))
    migrate(engine, "0001")  # the schema as the first release created it, with a conversation in it
    with engine.begin() as c:
        c.execute(text("INSERT INTO conversations (id, owner, title, created_at, updated_at) "
                       "VALUES ('c-1', 'alice', 'From 0001', :t, :t)"), {"t": T0})
        c.execute(text("INSERT INTO turns (conversation_id, position, question, answer, sources, model, timings, "
                       "details, created_at) VALUES ('c-1', 0, 'Kept?', 'Yes [1]', :src, 'm', '{}', '{}', :t)"),
                  {"src": json.dumps([{"n": 1, "path": "a.md"}]), "t": T0})
        tables = set(_tables(c))
    assert "conversations" in tables and "feedback" not in tables
    engine.dispose()

    store = backend(Clock(T0 + 60))  # opening upgrades to head
    (conv,) = store.conversations("alice")
    assert (conv.id, conv.title, conv.turns) == ("c-1", "From 0001", 1)
    (turn,) = store.turns("alice", "c-1")
    assert turn.answer == "Yes [1]" and turn.sources == [{"n": 1, "path": "a.md"}]
    store.add_feedback("alice", turn.id, -1, "feedback needs the 0002 table")
    assert store.export()[0].question == "Kept?"


def _sqlite_url(settings: Settings) -> str:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from rag.conversations.store import database_url

    return database_url(settings)


def _tables(connection) -> list[str]:
    from sqlalchemy import inspect

    return inspect(connection).get_table_names()


def test_feedback_export_command_prints_a_json_list(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    store = ConversationStore.open(settings)
    conv = store.create("alice", "Vacation")
    turn = _answer(store, "alice", conv.id, "How many vacation days?")
    store.add_feedback("alice", turn.id, -1, "too vague")
    store.close()

    done = rag_cmd("feedback", "export", "--json", env={"RAG_DATA_DIR": str(settings.data_dir)})
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)
    assert record["rating"] == -1 and record["comment"] == "too vague" and record["user"] == "alice"
    assert record["question"] == "How many vacation days?" and record["sources"][0]["path"] == "handbook.pdf"
    assert record["model"] == "smollm2" and record["created_at"].endswith("Z")

    worst = rag_cmd("feedback", "worst", env={"RAG_DATA_DIR": str(settings.data_dir)})
    assert worst.returncode == 0 and "How many vacation days?" in worst.stdout and "handbook.pdf" in worst.stdout

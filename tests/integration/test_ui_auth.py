"""Several users in the chat page: sign-in (password, proxy headers), per-session chats, group-filtered sources,
private uploads, the audit log. AppTest runs the real app script over a real store whose sample documents belong
to different groups (conftest.group_index: alice is in hr, bob in it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import streamlit as st
from streamlit.runtime.context import ContextProxy, StreamlitHeaders

from conftest import SAMPLE_GROUPS, USERS, readable_by
from test_ui import _assistant, app_env  # noqa: F401 - app_env is a fixture
from ui import signin

QUESTION = "How do I contact the IT Service Desk?"  # retrieves from every group's documents (hr, it, everyone)


@pytest.fixture
def data(group_index, tmp_path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(group_index.data_dir, d)  # the app holds its store's lock and may add uploads: a private copy
    return d


@pytest.fixture
def headers(monkeypatch):
    """Request headers for st.context.headers: AppTest has no browser connection to carry any."""

    def use(pairs: list[tuple[str, str]]) -> None:
        monkeypatch.setattr(ContextProxy, "headers", property(lambda self: StreamlitHeaders(pairs)))

    return use


def _text(at) -> str:
    """Everything the page shows as text (sidebar included)."""
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success")
             for e in getattr(at, kind)]
    return "\n".join([*parts, *(e.label for e in at.expander), *(b.label for b in at.download_button)])


def _sign_in(at, name: str, password: str):
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    return next(b for b in at.button if b.label == "Sign in").click().run()


def _button(at, label: str):
    return next(b for b in at.sidebar.button if b.label == label)


def _audit(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "audit.jsonl").read_text().splitlines()]


def _only_own_sources(at, name: str) -> set[str]:
    """The file names of every source the user's answers carry and the page shows; fails on any other."""
    allowed = readable_by(name)
    turns = at.session_state.turns
    got = {Path(c.path).name for t in turns if t.answer for c in t.answer.sources}
    packed = {Path(s.path).name for t in turns if t.answer and t.answer.packing for s in t.answer.packing.sources}
    assert got and got <= allowed and packed <= allowed, (name, got, packed)
    text = _text(at)
    for other in set(SAMPLE_GROUPS) - allowed:
        assert other not in text, f"{name} was shown {other}"
    return got


def test_password_login_then_each_user_sees_only_their_groups(app_env, data, llm_server):  # noqa: F811
    at = app_env(data, llm_server, RAG_AUTH="password")
    # Nobody signed in: the form and nothing else (no chat, no index or model details).
    assert not at.chat_input and at.text_input(key="login_password")
    assert "documents" not in _text(at) and signin.NONE_MODE_NOTE not in _text(at)

    _sign_in(at, "alice", "not-her-password")
    assert [e.value for e in at.error] == [signin.WRONG_CREDENTIALS] and not at.chat_input
    _sign_in(at, "mallory", "whatever-123")  # an unknown name: the same words, no hint who exists
    assert [e.value for e in at.error] == [signin.WRONG_CREDENTIALS] and not at.chat_input
    assert "login_password" not in at.session_state  # the server forgets the password after each attempt

    _sign_in(at, "alice", USERS["alice"][1])
    assert not at.exception and not at.error and at.chat_input
    side = " ".join(m.value for m in at.sidebar.markdown)
    assert "Signed in as **alice**" in side and "**3** documents" in side  # handbook, benefits, FAQ
    assert any("Groups: everyone, hr, user:alice" in c.value for c in at.sidebar.caption)
    assert any("3 documents are searchable" in c.value for c in at.caption)
    assert not any("search index:" in c.value for c in at.sidebar.caption)  # the operator's view only

    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception and not at.error
    assert "employee-handbook.pdf" in _only_own_sources(at, "alice")
    assert at.download_button and len(at.session_state.turns) == 2

    # Signing out drops the chat with the identity; bob starts with an empty one in the same browser session.
    _button(at, "Sign out").click().run()
    assert not at.chat_input and not _assistant(at) and "turns" not in at.session_state
    _sign_in(at, "bob", USERS["bob"][1])
    assert at.chat_input and not _assistant(at) and not at.session_state.turns
    assert "**2** documents" in " ".join(m.value for m in at.sidebar.markdown)
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception and not at.error
    assert "it-security.md" in _only_own_sources(at, "bob")
    assert len(_assistant(at)) == 1  # alice's answer is not in bob's chat

    log = _audit(data)
    events = [(e["event"], e["user"]) for e in log]
    assert events == [("login_failed", "alice"), ("login_failed", "mallory"), ("login_ok", "alice"),
                      ("ask", "alice"), ("logout", "alice"), ("login_ok", "bob"), ("ask", "bob")], events
    for e in log:
        if e["event"] == "ask":
            assert e["question"] == QUESTION and e["latency_ms"] > 0 and e["endpoint"].startswith("http://")
            assert {Path(p).name for p in e["cited"]} <= readable_by(e["user"])
    raw = (data / "audit.jsonl").read_text()
    for secret in ("not-her-password", "whatever-123", USERS["alice"][1], USERS["bob"][1], "argon2"):
        assert secret not in raw


def test_proxy_headers_give_the_identity_only_in_proxy_mode(app_env, data, headers, monkeypatch):  # noqa: F811
    # Proxy mode without the proxy's headers: a stop message, never a login form.
    at = app_env(data, None, RAG_AUTH="proxy")
    assert [e.value for e in at.error] == [signin.PROXY_REQUIRED]
    assert not at.chat_input and not at.text_input

    headers([("X-Forwarded-User", "bob"), ("X-Forwarded-Groups", "hr")])
    at.run()
    assert not at.error and at.chat_input
    side = " ".join(m.value for m in at.sidebar.markdown)
    # The groups come from the users file (RAG_AUTH_PROXY_GROUPS=users): the groups header is not trusted.
    assert "Signed in as **bob** (through the sign-in proxy)" in side and "**2** documents" in side
    assert not any(b.label == "Sign out" for b in at.sidebar.button)  # signing out is the proxy's business

    # The same headers in password mode are ignored: the login form, no identity.
    st.cache_resource.clear()  # as a restart with other settings would (the store admits one opener)
    at = app_env(data, None, RAG_AUTH="password")
    assert at.text_input(key="login_password") and not at.chat_input and not at.error

    # With a proxy secret configured, headers without it are refused too.
    st.cache_resource.clear()
    at = app_env(data, None, RAG_AUTH="proxy", RAG_AUTH_PROXY_SECRET="s3cret-from-the-proxy")
    assert [e.value for e in at.error] == [signin.PROXY_REQUIRED] and not at.chat_input
    headers([("X-Forwarded-User", "bob"), ("X-Rag-Proxy-Secret", "s3cret-from-the-proxy")])
    at.run()
    assert not at.error and at.chat_input, [e.value for e in at.error]

    assert [(e["event"], e["user"], e["extra"]["via"]) for e in _audit(data)] == [
        ("login_failed", None, "proxy"), ("login_ok", "bob", "proxy"), ("login_failed", None, "proxy"),
        ("login_ok", "bob", "proxy")]
    assert "s3cret" not in (data / "audit.jsonl").read_text()


def test_uploads_are_private_unless_shared_with_own_groups(app_env, data):  # noqa: F811
    at = app_env(data, None, RAG_AUTH="password")
    _sign_in(at, "alice", USERS["alice"][1])
    # Only alice's own groups can be added; her personal group is always there.
    assert at.sidebar.multiselect(key="upload-groups-0").options == ["everyone", "hr"]
    text = b"# Parking\n\nThe code of the parking garage gate is 4711.\n"
    at.sidebar.file_uploader[0].set_value(("parking.md", text, "text/markdown"))
    at.run()
    _button(at, "Add to the index").click().run()
    assert not at.exception and at.sidebar.success[0].value.startswith("1 added")
    saved = data / "uploads" / "users" / "alice" / "parking.md"
    assert saved.read_bytes() == text
    assert "**4** documents" in " ".join(m.value for m in at.sidebar.markdown)

    # bob does not see it, and his upload of the same name cannot replace alice's file.
    _button(at, "Sign out").click().run()
    _sign_in(at, "bob", USERS["bob"][1])
    assert "**2** documents" in " ".join(m.value for m in at.sidebar.markdown)
    at.sidebar.file_uploader[0].set_value(("parking.md", b"# Parking\n\nBikes only.\n", "text/markdown"))
    at.sidebar.multiselect(key="upload-groups-0").set_value(["it"])
    at.run()
    _button(at, "Add to the index").click().run()
    assert at.sidebar.success[0].value.startswith("1 added")
    assert saved.read_bytes() == text and (data / "uploads" / "users" / "bob" / "parking.md").exists()
    assert "**3** documents" in " ".join(m.value for m in at.sidebar.markdown)

    uploads = [e for e in _audit(data) if e["event"] == "upload"]
    assert [(e["user"], e["extra"]["groups"], e["cited"]) for e in uploads] == [
        ("alice", ["user:alice"], [str(saved)]),
        ("bob", ["user:bob", "it"], [str(data / "uploads" / "users" / "bob" / "parking.md")])]


def test_read_source_refuses_documents_outside_the_users_groups(data):
    """What the download buttons call (Grant.read -> RAG.read_source), against the real store."""
    from rag.security.auth import identity_of
    from rag.generation.chain import RAG
    from rag.errors import AccessDenied
    from rag.settings import Settings
    from rag.security.users import UserDirectory

    settings = Settings(data_dir=data, llm_base_url="http://127.0.0.1:9/v1")
    users = UserDirectory.from_settings(settings)
    alice, bob = (identity_of(users.get(n), "password") for n in ("alice", "bob"))
    with RAG.from_settings(settings) as rag:
        handbook = next(p for p in rag.store.documents() if p.endswith("employee-handbook.pdf"))
        assert signin.Grant(alice).read(rag, handbook) == Path(handbook).read_bytes()
        with pytest.raises(AccessDenied, match="no such document, or you may not read it"):
            signin.Grant(bob).read(rag, handbook)
        with pytest.raises(AccessDenied, match="no such document"):  # not indexed: the same words
            signin.Grant(alice).read(rag, str(data / "users.toml"))
        grant = signin.Grant(alice)
        grant.revoked = True  # what sign-out does to the buttons the previous user left behind
        with pytest.raises(AccessDenied, match="signed out"):
            grant.read(rag, handbook)
    downloads = [(e["user"], Path(e["cited"][0]).name) for e in _audit(data) if e["event"] == "download"]
    assert downloads == [("alice", "employee-handbook.pdf")]


def test_session_binding_and_upload_groups(tmp_path):
    """ui/signin.py without Streamlit: what each mode reads, and what a change of identity drops."""
    from argon2 import PasswordHasher

    from rag.settings import Settings
    from rag.security.users import UserDirectory

    users = UserDirectory(tmp_path / "users.toml", hasher=PasswordHasher(time_cost=1, memory_cost=1024,
                                                                          parallelism=1))
    users.add("alice", ["hr"], "alice-secret-1")
    spoof = {"X-Forwarded-User": "alice"}
    none, pw, proxy = (Settings(data_dir=tmp_path, auth=m) for m in ("none", "password", "proxy"))

    state: dict = {}
    assert signin.current_identity(none, state, spoof, users).unrestricted
    assert signin.current_identity(pw, state, spoof, users) is None  # headers mean nothing here
    assert signin.current_identity(proxy, state, spoof, users).name == "alice"
    assert signin.current_identity(proxy, state, {}, users) is None

    signin.sign_in(state, users.get("alice"))
    me = signin.current_identity(pw, state, {}, users)
    assert me.name == "alice" and "hr" in me.groups
    assert signin.bind_session(state, me) and not signin.bind_session(state, me)
    state["turns"] = ["alice's chat"]
    grant = state[signin.GRANT]
    users.add("alice", ["hr", "finance"], update=True)  # new groups: the old chat goes
    me2 = signin.current_identity(pw, state, {}, users)
    assert signin.bind_session(state, me2) and "turns" not in state and grant.revoked
    users.set_password("alice", "a-new-secret-9")  # a reset password ends the session
    assert signin.current_identity(pw, state, {}, users) is None and signin.SIGNED_IN not in state

    assert signin.upload_groups(me, ["hr", "it", "admins", "user:bob"]) == ["user:alice", "hr"]
    assert signin.upload_groups(signin.current_identity(none, {}, None, users), ["x"]) is None
    assert signin.upload_settings(pw, me).uploads_dir == pw.uploads_dir / "users" / "alice"


def test_login_throttle():
    now = [1000.0]
    t = signin.LoginThrottle(free=3, base=2, max_wait=10, window=60, clock=lambda: now[0])
    keys = t.keys("Alice", "s1", "10.0.0.7")
    for _ in range(3):
        assert t.wait(keys) == 0
        t.failed(keys)
    assert t.wait(keys) == 2 and t.wait(t.keys("alice", "other", "10.0.0.7")) == 2  # per name and address
    assert t.wait(t.keys("bob", "s1", "10.0.0.7")) == 2  # and per session, whatever the name
    now[0] += 2
    assert t.wait(keys) == 0
    for _ in range(5):
        t.failed(keys)
    assert t.wait(keys) == 10  # doubling, capped
    now[0] += 61
    assert t.wait(keys) == 0  # the window passed
    t.failed(keys)
    t.succeeded(keys)
    assert t.wait(keys) == 0


@pytest.mark.attack(7, "failing logins on purpose lock a named user out")
def test_failing_on_purpose_for_a_name_does_not_lock_its_owner_out():
    """The attack: from one address, a fresh session per attempt, fail alice's password again and again."""
    now = [1000.0]
    t = signin.LoginThrottle(free=5, ceiling=50, base=2, max_wait=300, window=900, clock=lambda: now[0])
    attempts = 0
    for i in range(200):  # every attempt the throttle lets through, for a simulated half hour
        keys = t.keys("alice", f"attacker-{i}", "203.0.113.9")
        if t.wait(keys) == 0:
            t.failed(keys)
            attempts += 1
        now[0] += 10
    assert t.wait(t.keys("alice", "attacker-new", "203.0.113.9")) > 0  # the attacker is slowed down...
    assert attempts < 50  # ... below the name's ceiling
    assert t.wait(t.keys("alice", "alice-laptop", "198.51.100.4")) == 0  # alice signs in from her own machine
    # Many addresses guessing one name hit its ceiling: then the name itself is slowed, wherever it is tried.
    for i in range(50):
        t.failed(t.keys("alice", f"bot-{i}", f"192.0.2.{i}"))
    assert t.wait(t.keys("alice", "alice-laptop", "198.51.100.4")) > 0


@pytest.mark.attack(7, "a session left open on an unattended machine stays signed in")
def test_an_idle_session_is_signed_out_with_its_download_links(tmp_path):
    """The attack: a chat tab left signed in on a shared machine, used hours later by whoever sits down."""
    from argon2 import PasswordHasher

    from rag.errors import AccessDenied
    from rag.settings import Settings
    from rag.security.users import UserDirectory

    users = UserDirectory(tmp_path / "users.toml", hasher=PasswordHasher(time_cost=1, memory_cost=1024,
                                                                          parallelism=1))
    users.add("alice", ["hr"], "alice-secret-1")
    pw = Settings(data_dir=tmp_path, auth="password", ui_session_idle_minutes=60)
    state: dict = {}
    t0 = 1_000_000.0
    signin.sign_in(state, users.get("alice"), now=t0)
    me = signin.current_identity(pw, state, {}, users, now=t0 + 1)
    assert me is not None and signin.bind_session(state, me)
    state["turns"] = ["alice's chat"]
    grant = state[signin.GRANT]
    # Active: each run moves the deadline.
    for minutes in (50, 100, 150):
        assert signin.current_identity(pw, state, {}, users, now=t0 + minutes * 60) is not None
    # Then 61 minutes without a click: signed out, the chat and the download links gone.
    assert signin.current_identity(pw, state, {}, users, now=t0 + 211 * 60) is None
    assert signin.SIGNED_IN not in state and "turns" not in state and grant.revoked and state[signin.IDLE_OUT]
    signin.sign_in(state, users.get("alice"))
    assert signin.IDLE_OUT not in state

    # A download link clicked after the timeout, before any run noticed it, serves nothing.
    me = signin.current_identity(pw, state, {}, users)
    signin.bind_session(state, me)
    signin.current_identity(pw, state, {}, users)
    late = state[signin.GRANT]
    late.seen -= 61 * 60
    with pytest.raises(AccessDenied, match="signed out"):
        late.read(object(), "/docs/handbook.pdf")

    # 0 = never.
    never = pw.model_copy(update={"ui_session_idle_minutes": 0.0})
    signin.sign_in(state, users.get("alice"), now=t0)
    assert signin.current_identity(never, state, {}, users, now=t0 + 10 * 24 * 3600) is not None

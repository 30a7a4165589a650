"""Staying signed in across a reload (ui/remember.py, ui/signin.py): what a browser's token resumes, and every way
it stops resuming (sign-out in any tab, the idle timeout, a password reset, a disabled or removed user, a token
that was never issued). The browser test of the same is tests/e2e/test_ui_browser.py."""

from __future__ import annotations

import pytest

from ui import remember, signin


@pytest.fixture
def users(tmp_path):
    from argon2 import PasswordHasher

    from rag.security.users import UserDirectory

    d = UserDirectory(tmp_path / "users.toml", hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    d.add("alice", ["hr"], "alice-secret-1")
    d.add("bob", ["it"], "bob-secret-22")
    return d


@pytest.fixture
def clock():
    return [1_000.0]


@pytest.fixture
def sign_ins(clock):
    return remember.SignIns(3600, timer=lambda: clock[0])


def _signed_in_tab(users, sign_ins, name="alice") -> tuple[dict, str]:
    tab: dict = {}
    signin.sign_in(tab, users.get(name), sign_ins=sign_ins)
    token = signin.token_of(tab)
    assert token and tab[signin.COOKIE_TO_SET] == token  # the next run writes it to the browser
    return tab, token


def test_a_reload_resumes_the_sign_in(users, sign_ins, tmp_path):
    from rag.settings import Settings

    _, token = _signed_in_tab(users, sign_ins)
    reloaded: dict = {}  # a reload is a new session: nothing in it
    assert signin.resume(reloaded, token, sign_ins, users)
    me = signin.current_identity(Settings(data_dir=tmp_path, auth="password"), reloaded, {}, users)
    assert me is not None and me.name == "alice" and "hr" in me.groups
    assert signin.token_of(reloaded) == token and signin.COOKIE_TO_SET not in reloaded  # nothing to write again


def test_sign_out_in_one_tab_ends_it_for_every_tab_of_the_browser(users, sign_ins):
    tab, token = _signed_in_tab(users, sign_ins)
    other: dict = {}
    assert signin.resume(other, token, sign_ins, users)
    signin.sign_out(tab, sign_ins)
    assert tab[signin.COOKIE_TO_SET] == ""  # the next run deletes the cookie
    # A copy of the cookie taken before the sign-out (a shared computer, a stolen cookie) opens nothing.
    assert not signin.resume({}, token, sign_ins, users)


def test_the_idle_timeout_counts_activity_in_any_tab(users, sign_ins, clock):
    _, token = _signed_in_tab(users, sign_ins)
    for _ in range(3):  # 50 minutes apart, each time active: the deadline moves
        clock[0] += 50 * 60
        sign_ins.touch(token)
    clock[0] += 59 * 60
    assert signin.resume({}, token, sign_ins, users)
    clock[0] += 61 * 60  # then an hour without a click
    assert not signin.resume({}, token, sign_ins, users)


def test_a_password_reset_or_a_disabled_user_ends_it(users, sign_ins):
    _, token = _signed_in_tab(users, sign_ins)
    users.set_password("alice", "a-new-secret-9")
    assert not signin.resume({}, token, sign_ins, users)
    users.set_password("alice", "alice-secret-1")  # the same password again: the token stays revoked
    assert not signin.resume({}, token, sign_ins, users)

    _, token = _signed_in_tab(users, sign_ins, "bob")
    users.set_disabled("bob", True)
    assert not signin.resume({}, token, sign_ins, users)
    users.set_disabled("bob", False)
    assert not signin.resume({}, token, sign_ins, users)


def test_a_token_nobody_issued_resumes_nothing(users, sign_ins):
    _signed_in_tab(users, sign_ins)
    for forged in (None, "", "alice", "x" * 43, remember.SignIns(3600).issue("alice", "whatever")):
        assert not signin.resume({}, forged, sign_ins, users)
    # Cookies that cannot be a token are not even looked up.
    assert remember.token_from({remember.COOKIE: "short"}) is None
    assert remember.token_from({remember.COOKIE: "y" * 500}) is None
    assert remember.token_from({"other": "z" * 43}) is None


def test_the_cookie_script_is_built_from_escaped_text():
    script = remember.cookie_script('a";alert(1);"')
    assert 'document.cookie = "rag_ui_session=a\\";alert(1);\\"; Path=/; SameSite=Strict"' in script
    assert "</script>" not in remember.cookie_script("</script><script>alert(1)").removesuffix("</script>")
    assert "Max-Age=0" in remember.cookie_script(None)

"""Who is asking, settled at the top of every run before anything about the index or the model is shown: the
sign-in form (RAG_AUTH=password), the proxy's headers (proxy), or the local user (none). The decisions themselves
are in ui/signin.py, testable without a browser; this renders them."""

from __future__ import annotations

import math
import secrets

import streamlit as st

from rag.errors import RagError
from rag.security.auth import Identity, authenticate_password
from rag.security.exposure import allowed_hosts, host_allowed
from rag.settings import Settings
from ui import remember, signin
from ui.state import Auth


def refuse_foreign_host(settings: Settings) -> None:
    """Stop the page before it shows anything when the browser reached it under a name it does not answer.
    Streamlit checks no Host header, and its origin check compares Origin with Host, which a DNS-rebinding page
    passes; the Host of the page's websocket (st.context.headers) is what tells."""
    bound = st.get_option("server.address")
    # Unset (Streamlit's own default, or AppTest): no interface we know of, nothing to compare with.
    allowed = allowed_hosts(settings, bound) if bound else None
    hosts = st.context.headers.get_all("Host")
    if not host_allowed(hosts[0] if len(hosts) == 1 else None, allowed):
        st.error(signin.FOREIGN_HOST, icon=":material/lock:")
        st.stop()


def settle_identity(settings: Settings, auth: Auth) -> Identity:
    """The identity of this run; without one the page stops here, showing the form or the proxy's refusal."""
    _write_cookie()
    try:
        headers = st.context.headers if settings.auth == "proxy" else None  # never read in other modes
        identity = signin.current_identity(settings, st.session_state, headers, auth.directory)
        if identity is None and auth.sign_ins is not None and _resumed(auth):
            identity = signin.current_identity(settings, st.session_state, None, auth.directory)
        elif identity is not None and auth.sign_ins is not None and (token := signin.token_of(st.session_state)):
            auth.sign_ins.touch(token)  # this browser's other tabs, and its next reload, count this activity
    except RagError as exc:  # an unreadable or broken users file
        st.error(f"Sign-in is unavailable: {exc}", icon=":material/lock:")
        st.stop()
    if signin.bind_session(st.session_state, identity) and identity is not None and identity.via == "proxy":
        auth.record("login_ok", identity.name, extra={"via": "proxy", "groups": list(identity.groups)})
    if identity is None:
        if settings.auth == "proxy":
            if not st.session_state.get("_proxy_refused"):  # once per session, not on every rerun
                st.session_state["_proxy_refused"] = True
                auth.record("login_failed", None, extra={"via": "proxy"})
            st.error(signin.PROXY_REQUIRED, icon=":material/lock:")
        else:
            login_page(settings, auth)
        st.stop()
    return identity


def _resumed(auth: Auth) -> bool:
    """A reload, or another tab, of a browser that signed in (ui/remember.py): its cookie resumes that sign-in."""
    assert auth.sign_ins is not None
    token = remember.token_from(st.context.cookies)
    if not signin.resume(st.session_state, token, auth.sign_ins, auth.directory):
        return False
    auth.record("login_ok", st.session_state[signin.SIGNED_IN]["name"], extra={"via": "password", "resumed": True})
    return True


def _write_cookie() -> None:
    """Set (or delete) the browser's stay-signed-in cookie, as the last sign-in or sign-out asked."""
    if signin.COOKIE_TO_SET in st.session_state:
        token = st.session_state.pop(signin.COOKIE_TO_SET)
        st.html(remember.cookie_script(token or None), unsafe_allow_javascript=True)


def login_page(settings: Settings, auth: Auth) -> None:
    """RAG_AUTH=password and nobody signed in: only the form, nothing about the index or the model."""
    st.header("Sign in")
    if st.session_state.get(signin.IDLE_OUT):
        st.info(f"Signed out after {settings.ui_session_idle_minutes:g} minutes without activity.",
                icon=":material/timer:")
    st.caption("Ask your administrator for an account (`rag users add`).")
    session = st.session_state.setdefault(signin.SESSION_ID, secrets.token_hex(16))
    with st.form("login", clear_on_submit=True):  # the password leaves the widget state after every attempt
        name = st.text_input("Name", key="login_name", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password",
                                 autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    # The browser clears the form (clear_on_submit); the server's copy of the password goes now, too.
    st.session_state.pop("login_password", None)
    name = name.strip()
    keys = auth.throttle.keys(name, session, st.context.ip_address)
    wait = auth.throttle.wait(keys)
    if wait > 0:
        auth.record("login_failed", name, extra={"via": "password", "throttled": True})
        st.error(f"Too many failed sign-ins. Try again in {math.ceil(wait)} s.", icon=":material/timer:")
        return
    with auth.throttle.verifying:
        user = authenticate_password(auth.directory, name, password) if name and password else None
    if user is None:
        auth.throttle.failed(keys)
        auth.record("login_failed", name, extra={"via": "password"})
        st.error(signin.WRONG_CREDENTIALS, icon=":material/lock:")
        return
    auth.throttle.succeeded(keys)
    # Re-read: a successful login may have upgraded the stored hash (argon2 parameters), which changes it.
    signin.sign_in(st.session_state, auth.directory.get(user.name) or user, sign_ins=auth.sign_ins)
    auth.record("login_ok", user.name, extra={"via": "password"})
    st.rerun()

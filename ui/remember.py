"""Staying signed in across a reload (RAG_AUTH=password, RAG_UI_STAY_SIGNED_IN). A Streamlit session lives as long
as its websocket, so reloading the page, or opening a second tab, starts an empty session: the user had to sign in
again. Now sign-in also hands the browser a random token in a cookie, and a new session that presents it resumes
that sign-in.

The token is only a key into this process's table; the table holds the name and the password's fingerprint, so a
resumed session is checked exactly as every run checks one (user still there and enabled, same password). It dies
with sign-out (in any tab), the idle timeout (activity in any tab counts), a password reset, or a restart of
`rag ui`. Only a hash of it is kept, so the table itself is no list of live tokens.

The cookie is written by a script in the page (Streamlit offers no way to set one from the server), so it cannot be
HttpOnly: a script injected into the page could read it. Nothing a document or an answer holds is ever rendered
as HTML or Markdown that runs (tests/e2e/test_ui_audit.py), and the cookie is SameSite=Strict, Secure on https,
and a session cookie (gone when the browser is closed, unless the browser restores sessions: the idle timeout then
still applies). Cookies are per host, not per port: another web app on the same host name can read it, which is one
more reason to give the UI its own name behind a proxy. An operator who wants none of it sets
RAG_UI_STAY_SIGNED_IN=false: every tab signs in on its own again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

COOKIE = "rag_ui_session"
#: Live sign-ins kept at most; the least recently used beyond it is forgotten (its tab then signs in again).
MAX_SIGN_INS = 10_000


@dataclass(frozen=True)
class SignIn:
    name: str
    password: str  # signin.password_fingerprint of the password signed in with


class SignIns:
    """The sign-ins a browser may resume, by a hash of their token. ``idle_s``: forgotten after this long without a
    touch (0 = only by sign-out, or when MAX_SIGN_INS is reached)."""

    def __init__(self, idle_s: float, *, timer: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._table: LRUCache[str, SignIn] = (TTLCache(MAX_SIGN_INS, ttl=idle_s, timer=timer) if idle_s
                                              else LRUCache(MAX_SIGN_INS))

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def issue(self, name: str, password: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._table[self._key(token)] = SignIn(name, password)
        return token

    def resume(self, token: str | None) -> SignIn | None:
        """The live sign-in ``token`` names, or None; resuming counts as activity."""
        if not token:
            return None
        with self._lock:
            entry = self._table.get(self._key(token))
            if entry is not None:
                self._table[self._key(token)] = entry  # a TTLCache's time starts again when it is set
            return entry

    def touch(self, token: str) -> None:
        """Activity in a session that holds ``token``: its idle time starts again, for every tab."""
        self.resume(token)

    def revoke(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._table.pop(self._key(token), None)


def token_from(cookies: Mapping[str, str] | None) -> str | None:
    token = (cookies or {}).get(COOKIE)
    return token if isinstance(token, str) and 20 <= len(token) <= 100 else None


def cookie_script(token: str | None) -> str:
    """The script that sets the cookie to ``token``, or deletes it (None). The token is URL-safe base64, and is
    passed through json.dumps anyway, so the script is never built from unescaped text."""
    value = json.dumps(f"{COOKIE}={token or ''}; Path=/; SameSite=Strict"
                       + ("" if token else "; Max-Age=0")).replace("<", "\\u003c")  # no </script> inside
    return ("<script>document.cookie = " + value
            + " + (location.protocol === 'https:' ? '; Secure' : '');</script>")

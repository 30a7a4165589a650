"""Who is using this browser session, as plain functions over ``st.session_state`` (any mutable mapping), so they
can be tested without a browser. ui/login.py calls them at the top of every run.

- ``RAG_AUTH=none``: the local user, unrestricted; nothing to sign in to.
- ``password``: the session holds the signed-in *name* only. Every run looks the user up again in the users file
  (cached until the file changes), so removing or disabling a user, changing their groups or resetting their
  password takes effect at the next click, without a restart.
- ``proxy``: the identity is read from the request headers on every run (``st.context.headers`` are the headers
  of the request that opened the session's websocket). Headers are never read in the other modes.

Everything a user produced in a session (chat turns, upload results, download grants) is bound to the identity
that produced it: when the identity changes (sign-out, another proxy user, new groups) it is all dropped before
anything is shown.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from rag.security.access import USER_GROUP_PREFIX
from rag.security.auth import Identity, identity_from_headers, identity_of, local_identity
from rag.errors import AccessDenied
from rag.settings import Settings
from rag.security.users import User, UserDirectory
from ui.remember import SignIns

NONE_MODE_NOTE = ("Single-user local mode: no sign-in, every indexed document is visible. Set RAG_AUTH=password "
                  "or proxy for several users.")
PROXY_REQUIRED = ("This app expects to be reached through the sign-in proxy, and this request carries no signed-in "
                  "user the app accepts. Open the address your administrator gave you (the proxy's, not this "
                  "server's port), or ask them to check the proxy's headers.")
FOREIGN_HOST = ("This chat answers only at this machine's own address (http://localhost:PORT). It was opened under "
                "another name, which is how a web page that rebinds its name to 127.0.0.1 would reach it. An "
                "administrator who put it behind such a name adds the name to RAG_ALLOWED_HOSTS.")
WRONG_CREDENTIALS = "Wrong name or password"

#: session_state keys. SIGNED_IN and SESSION_ID survive a change of identity; everything else in the session
#: belongs to one identity.
SIGNED_IN = "_signed_in"
OWNER = "_owner"
GRANT = "_grant"
SESSION_ID = "_session_id"
IDLE_OUT = "_idle_out"  # the login form then says why the user has to sign in again
COOKIE_TO_SET = "_cookie_to_set"  # the stay-signed-in token the next run writes to the browser ("" deletes it)
_KEEP_ON_UNBIND = (SIGNED_IN, SESSION_ID, IDLE_OUT, COOKIE_TO_SET)


def password_fingerprint(user: User) -> str:
    """Identifies the password a session signed in with, without keeping the hash in session state: a reset
    password (a new hash) ends every session opened with the old one."""
    return hashlib.sha256((user.password_hash or "").encode()).hexdigest()


class Grant:
    """What a session's download buttons read files with. Download callables run after the script run that made
    them (when the browser asks), so they hold this object, not the identity: sign-out revokes it, and a button
    left over from the previous user then serves nothing."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.revoked = False
        # Set by current_identity at every run: a download link clicked after the idle timeout, before any run
        # has noticed it, must not serve the file either.
        self.seen = time.time()
        self.idle_s = 0.0

    def read(self, rag: Any, path: str) -> bytes:
        self._check(path)
        return rag.read_source(path, user=self.identity)

    def page(self, rag: Any, path: str, page: int, highlight: str | None) -> Any:
        """A page of a PDF with the passage highlighted (RAG.source_page), under this grant."""
        self._check(path)
        return rag.source_page(path, page, highlight=highlight, user=self.identity)

    def text(self, rag: Any, path: str, char_start: int, char_end: int) -> Any:
        """The text around a passage (RAG.source_text), under this grant."""
        self._check(path)
        return rag.source_text(path, char_start, char_end, user=self.identity)

    def active(self) -> bool:
        """Not signed out, by hand or by the idle timeout (a page rendered earlier may then be shown again)."""
        if self.idle_s and time.time() - self.seen > self.idle_s:
            self.revoked = True
        return not self.revoked

    def _check(self, path: str) -> None:
        if not self.active():
            raise AccessDenied(f"{Path(path).name}: this session has signed out")


def current_identity(settings: Settings, state: MutableMapping[str, Any], headers: Mapping[str, Any] | None,
                     directory: UserDirectory, *, now: float | None = None) -> Identity | None:
    """The identity this run acts for, or None: show the login form (password) or the proxy message (proxy).
    Every run counts as activity; a password session idle for longer than RAG_UI_SESSION_IDLE_MINUTES is signed
    out (a proxy's sessions are the proxy's to expire)."""
    if settings.auth == "none":
        return local_identity()
    if settings.auth == "proxy":
        return identity_from_headers(settings, headers or {}, directory)
    signed = state.get(SIGNED_IN)
    if signed is None:
        return None
    now = time.time() if now is None else now
    idle_s = settings.ui_session_idle_minutes * 60
    if idle_s and now - signed.get("seen", now) > idle_s:  # a browser tab left open on a shared machine
        sign_out(state)
        state[IDLE_OUT] = True
        return None
    user = directory.get(signed["name"])
    if not _still_valid(user, signed["password"]):
        state.pop(SIGNED_IN, None)
        return None
    signed["seen"] = now
    grant = state.get(GRANT)
    if isinstance(grant, Grant):
        grant.seen, grant.idle_s = now, idle_s
    return identity_of(user, "password")


def _still_valid(user: User | None, fingerprint: str) -> bool:
    """Whether a sign-in made with the password of ``fingerprint`` still holds: the user is there, enabled, and
    has that password still."""
    return (user is not None and not user.disabled and user.password_hash is not None
            and hmac.compare_digest(password_fingerprint(user), fingerprint))


def _signed_in(state: MutableMapping[str, Any], user: User, now: float | None, token: str | None) -> None:
    state[SIGNED_IN] = {"name": user.name, "password": password_fingerprint(user),
                        "seen": time.time() if now is None else now,
                        **({"token": token} if token is not None else {})}
    state.pop(IDLE_OUT, None)


def sign_in(state: MutableMapping[str, Any], user: User, *, now: float | None = None,
            sign_ins: SignIns | None = None) -> None:
    """``sign_ins``: also issue the token a reload of this browser resumes with (ui/remember.py)."""
    token = None if sign_ins is None else sign_ins.issue(user.name, password_fingerprint(user))
    _signed_in(state, user, now, token)
    if token is not None:
        state[COOKIE_TO_SET] = token


def resume(state: MutableMapping[str, Any], token: str | None, sign_ins: SignIns, directory: UserDirectory, *,
           now: float | None = None) -> bool:
    """Sign this (new) session in with the browser's stay-signed-in token, if it names a live sign-in of a user
    who is still enabled and has the same password; a token that fails those checks is revoked."""
    entry = sign_ins.resume(token)
    if entry is None:
        return False
    user = directory.get(entry.name)
    if not _still_valid(user, entry.password):
        sign_ins.revoke(token)
        return False
    _signed_in(state, user, now, token)
    return True


def token_of(state: Mapping[str, Any]) -> str | None:
    """The stay-signed-in token of this session's sign-in, if it has one."""
    signed = state.get(SIGNED_IN)
    return signed.get("token") if isinstance(signed, dict) else None


def bind_session(state: MutableMapping[str, Any], identity: Identity | None) -> bool:
    """Make the session belong to ``identity`` (None: to nobody). If it belonged to someone else, or to the same
    user with other groups, everything they left in it is dropped first. True if the owner changed."""
    key = None if identity is None else [identity.name, list(identity.groups), identity.via]
    if state.get(OWNER) == key:
        return False
    _drop(state)
    state[OWNER] = key
    if identity is not None:
        state[GRANT] = Grant(identity)
    return True


def sign_out(state: MutableMapping[str, Any], sign_ins: SignIns | None = None) -> None:
    """Forget the signed-in user and everything of theirs in this session (chat, results, widget values); with
    ``sign_ins``, the browser's stay-signed-in token too, for every tab of it."""
    if sign_ins is not None and (token := token_of(state)):
        sign_ins.revoke(token)
        state[COOKIE_TO_SET] = ""
    state.pop(SIGNED_IN, None)
    _drop(state)


def _drop(state: MutableMapping[str, Any]) -> None:
    grant = state.get(GRANT)
    if isinstance(grant, Grant):
        grant.revoked = True
    for k in list(state.keys()):
        if k not in _KEEP_ON_UNBIND:
            del state[k]


def grant_of(state: Mapping[str, Any]) -> Grant:
    return state[GRANT]


def upload_groups(identity: Identity, chosen: Iterable[str]) -> list[str] | None:
    """The groups an upload gets. Local mode: None (the ingest defaults, as for `rag ingest`). Otherwise the
    uploader's personal group plus those chosen among the uploader's *own* groups; anything else is dropped, so
    nobody can grant a group they do not have, whatever the browser sends."""
    if identity.unrestricted:
        return None
    own = set(identity.groups)
    personal = USER_GROUP_PREFIX + identity.name
    return [personal, *sorted({g for g in chosen if g in own and g != personal})]


def shareable_groups(identity: Identity) -> list[str]:
    """What the upload box offers besides the always-included personal group."""
    return [g for g in identity.groups if g != USER_GROUP_PREFIX + identity.name]


def upload_settings(settings: Settings, identity: Identity) -> Settings:
    """Where uploads are saved. Signed-in users each get their own folder (``uploads/users/NAME``): files are
    stored by name, and a shared folder would let one user's upload replace another user's document."""
    if identity.unrestricted:
        return settings
    return settings.model_copy(update={"uploads_dir_override": settings.uploads_dir / "users" / identity.name})


class LoginThrottle:
    """Slows down password guessing without letting one source lock a user out.

    Failures are counted over ``window`` seconds per browser session and per (name, client address), where the
    first ``free`` failures cost nothing extra (argon2 already takes ~0.2 s); and per name and per client address
    alone, where ``ceiling`` failures are free: a ceiling against guessing one name from many addresses or many
    names from one, high enough that a single source stays throttled long before it reaches it (its own
    (name, client) count makes it wait). A counter past its free failures makes each further attempt wait
    ``base * 2**(n - free)`` seconds (at most ``max_wait``) after the last failure, refused unverified until
    then. So someone failing on purpose for alice slows down themselves, not alice signing in from elsewhere.
    Behind a reverse proxy every client has the proxy's address and that separation is lost. Names that do not
    exist are counted like real ones, so the throttle does not reveal who exists. At most ``concurrent``
    verifications run at once: each takes 64 MiB and a core."""

    def __init__(self, *, free: int = 5, ceiling: int = 50, base: float = 2.0, max_wait: float = 300.0,
                 window: float = 900.0, concurrent: int = 2, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.base, self.max_wait, self.window, self.max_keys = free, base, max_wait, window, max_keys
        self.ceiling = ceiling
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, time of the last one)
        self._lock = threading.Lock()
        self.verifying = threading.BoundedSemaphore(concurrent)

    @staticmethod
    def keys(name: str, session: str, client: str | None) -> tuple[str, ...]:
        name = name.strip().lower()[:256]
        client = client or "unknown"
        return "session:" + session, f"name@client:{name}\0{client}", "name:" + name, "client:" + client

    def wait(self, keys: Sequence[str]) -> float:
        """Seconds until an attempt for these keys is verified again (0: go ahead)."""
        now = self.clock()
        with self._lock:
            return max((self._wait(k, now) for k in keys), default=0.0)

    def _wait(self, key: str, now: float) -> float:
        n, last = self._failures.get(key, (0, 0.0))
        free = self.ceiling if key.startswith(("name:", "client:")) else self.free
        if n < free or now - last > self.window:
            return 0.0
        return max(0.0, last + min(self.base * 2 ** (n - free), self.max_wait) - now)

    def failed(self, keys: Sequence[str]) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                n, last = self._failures.get(k, (0, 0.0))
                self._failures[k] = (1 if now - last > self.window else n + 1, now)
            if len(self._failures) > self.max_keys:  # a name-spraying client must not grow this without end
                fresh = {k: v for k, v in self._failures.items() if now - v[1] <= self.window}
                self._failures = dict(sorted(fresh.items(), key=lambda kv: kv[1][1])[-self.max_keys:])

    def succeeded(self, keys: Sequence[str]) -> None:
        with self._lock:
            for k in keys:
                # The ceilings count other sources too: one right password must not wipe their failures.
                if not k.startswith(("name:", "client:")):
                    self._failures.pop(k, None)

"""Who is asking: the ``Identity`` that the UI, the CLI's ``--as`` and (later) the API hand to retrieval.

Modes (``RAG_AUTH``):

- ``none`` — single-user local mode: nobody signs in and there is **no group filter at all**; the local user
  sees every document (``Identity.groups_any`` is None). Meant for one person on their own machine, with the UI
  on 127.0.0.1.
- ``password`` — names, groups and argon2 password hashes from ``RAG_USERS_FILE`` (``rag users add``).
- ``proxy`` — a reverse proxy that already authenticated the user (oauth2-proxy, Authelia, nginx auth_request…)
  passes the name in ``RAG_AUTH_PROXY_USER_HEADER`` and optionally groups in ``RAG_AUTH_PROXY_GROUPS_HEADER``.
  Headers are ignored in every other mode. Anyone who can reach the app *without* the proxy can send these
  headers, and Streamlit does not reliably tell us the client's address, so enable proxy mode only when the app
  listens on 127.0.0.1 (or a socket only the proxy reaches), and set ``RAG_AUTH_PROXY_SECRET``: the servers
  refuse to start in proxy mode without it unless told --insecure (rag.security.exposure).

Every signed-in identity also has the groups ``everyone`` and ``user:NAME`` (rag.security.access), so the store filter
is always "chunk groups ∩ identity groups ≠ ∅" and never needs a wildcard.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rag.security.access import EVERYONE, USER_GROUP_PREFIX, normalize_groups, split_groups
from rag.types import check_group
from rag.errors import UsersFileError
from rag.security.users import User, UserDirectory, check_user_name

if TYPE_CHECKING:
    from rag.settings import Settings

log = logging.getLogger(__name__)

AuthMode = Literal["none", "password", "proxy"]
Via = Literal["local", "password", "proxy", "api_key", "cli"]


@dataclass(frozen=True)
class Identity:
    name: str
    groups: tuple[str, ...]  # sorted, implicit ones included
    via: Via
    unrestricted: bool = False  # only the local user of RAG_AUTH=none

    @property
    def groups_any(self) -> tuple[str, ...] | None:
        """What goes into ``SearchFilter.groups_any``: None = no filter (local mode only)."""
        return None if self.unrestricted else self.groups

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "groups": list(self.groups), "via": self.via, "unrestricted": self.unrestricted}


def implicit_groups(name: str) -> tuple[str, str]:
    return EVERYONE, USER_GROUP_PREFIX + name


def local_identity() -> Identity:
    """RAG_AUTH=none: the one local user, who sees everything."""
    return Identity("local", (), "local", unrestricted=True)


def identity_of(user: User, via: Via) -> Identity:
    return Identity(user.name, normalize_groups([*user.groups, *implicit_groups(user.name)]), via)


def is_admin(identity: Identity, admin_group: str) -> bool:
    """Whether ``identity`` gets the operator's view (model, retrieval controls, the worst-rated answers): the
    local user of RAG_AUTH=none, or a member of RAG_ADMIN_GROUP."""
    return identity.unrestricted or admin_group in identity.groups


def authenticate_password(directory: UserDirectory, name: str, password: str) -> User | None:
    """The user if name and password are right and the user is enabled; None otherwise, in about the same time
    whether or not the name exists."""
    if not isinstance(name, str) or not isinstance(password, str):
        return None
    return directory.verify_password(name.strip(), password)


def authenticate_api_key(directory: UserDirectory, key: str) -> Identity | None:
    """For the API the ops issue adds: ``Authorization: Bearer rag_…`` → the key owner's identity."""
    user = directory.user_for_api_key(key)
    return identity_of(user, "api_key") if user is not None else None


def identity_as(directory: UserDirectory, name: str) -> Identity:
    """``rag ask --as NAME``: an admin on the server acts as a user from the users file (no password: whoever
    runs the CLI can read the index files anyway)."""
    user = directory.get(name)
    if user is None:
        raise UsersFileError(f"no user {name!r} in {directory.path}; `rag users list` shows who exists")
    if user.disabled:
        raise UsersFileError(f"user {name!r} is disabled in {directory.path}")
    return identity_of(user, "cli")


def _header_lists(headers: Any) -> dict[str, list[str]]:
    """Header name (lower-case) -> all its values, from whatever a framework hands over: Streamlit's
    ``st.context.headers`` (``get_all``), Starlette (``getlist``), httpx (``get_list``), a plain mapping or
    (name, value) pairs. All values matter: a repeated identity header is how a spoofing attempt shows."""
    out: dict[str, list[str]] = {}

    def add(k: str, v: Any) -> None:
        vals = v if isinstance(v, (list, tuple)) else [v]
        out.setdefault(str(k).lower(), []).extend(str(x) for x in vals)

    getter = next((getattr(headers, a) for a in ("get_all", "getlist", "get_list") if hasattr(headers, a)), None)
    if getter is not None and isinstance(headers, Mapping):
        for k in {str(k) for k in headers}:
            add(k, list(getter(k)))
    elif isinstance(headers, Mapping):
        for k, v in headers.items():
            add(k, v)
    else:
        for k, v in headers:
            add(k, v)
    return out


def identity_from_headers(settings: Settings, headers: Mapping[str, Any] | Iterable[tuple[str, str]],
                          directory: UserDirectory | None = None) -> Identity | None:
    """The proxy-authenticated identity, or None: proxy mode off (headers are then ignored entirely), the shared
    secret missing or wrong, no user header, a repeated or invalid one, or a user disabled in the users file.
    Header names are case-insensitive."""
    if settings.auth != "proxy":
        return None
    h = _header_lists(headers)
    if not _proxy_secret_ok(settings, h):
        return None
    name = _proxy_user_name(settings, h)
    if name is None:
        return None
    directory = directory or UserDirectory.from_settings(settings)
    user = directory.get(name)
    if user is not None and user.disabled:
        return None
    groups: list[str] = []
    if settings.auth_proxy_groups in ("header", "both"):
        groups += _proxy_header_groups(settings, h)
    if settings.auth_proxy_groups in ("users", "both") and user is not None:
        groups += user.groups
    return Identity(name, normalize_groups([*groups, *implicit_groups(name)]), "proxy")


def _proxy_secret_ok(settings: Settings, h: dict[str, list[str]]) -> bool:
    """True when no shared secret is configured, or the request carries it exactly once."""
    if settings.auth_proxy_secret is None:
        return True
    expected = settings.auth_proxy_secret.get_secret_value().encode()
    got = h.get(settings.auth_proxy_secret_header.lower(), [])
    if len(got) != 1 or not hmac.compare_digest(got[0].strip().encode(), expected):
        log.warning("proxy headers without the right %s: ignored", settings.auth_proxy_secret_header)
        return False
    return True


def _proxy_user_name(settings: Settings, h: dict[str, list[str]]) -> str | None:
    """The one valid user name in the user header, or None (missing, two different ones, or invalid)."""
    names = [v.strip() for v in h.get(settings.auth_proxy_user_header.lower(), []) if v.strip()]
    if len(set(names)) != 1:
        # Two different names: a client sent its own header and the proxy appended instead of replacing it.
        if names:
            log.warning("%d different %s values: request refused", len(set(names)),
                        settings.auth_proxy_user_header)
        return None
    name = names[0]
    try:
        check_user_name(name)
    except UsersFileError:
        log.warning("%s value %r is not a valid user name: request refused", settings.auth_proxy_user_header, name)
        return None
    return name


def _proxy_header_groups(settings: Settings, h: dict[str, list[str]]) -> list[str]:
    """The valid groups of the groups header, without user:NAME ones."""
    groups: list[str] = []
    for raw in h.get(settings.auth_proxy_groups_header.lower(), []):
        for g in split_groups(raw):
            # user:NAME is granted here, never taken from the IdP: in some IdPs (GitLab, GitHub) users create
            # groups themselves, and one named "user:bob" must not open bob's personal documents.
            if g.startswith(USER_GROUP_PREFIX):
                continue
            try:
                groups.append(check_group(g))
            except ValueError:
                log.info("ignoring invalid group %r from %s", g, settings.auth_proxy_groups_header)
    return groups

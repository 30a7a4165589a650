"""Users, their groups and their credentials, in one TOML file (``RAG_USERS_FILE``, default
``<data_dir>/users.toml``) that an admin can read and, carefully, edit by hand::

    [users."alice"]
    groups = ["finance", "staff"]
    password_hash = "$argon2id$v=19$m=65536,t=3,p=4$..."
    disabled = false
    created = "2025-01-31T09:00:00Z"
    api_keys = [
      { id = "3f9c0e1a7b2d", sha256 = "…64 hex digits…", created = "2025-02-01T10:00:00Z" },
    ]

Secrets are never stored: passwords as argon2id hashes (argon2-cffi's RFC 9106 defaults), API keys as SHA-256
digests. Every change re-reads the file under a lock, then replaces it atomically with mode 0600, so two
``rag users add`` at once both land and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from filelock import FileLock, Timeout

from rag.security.access import normalize_groups
from rag.errors import UsersFileError

if TYPE_CHECKING:
    from rag.settings import Settings

log = logging.getLogger(__name__)

#: Letters (any script), digits and ``. _ @ + -``: covers logins and e-mail addresses that proxies send, and
#: nothing that could break a header, a log line or the ``user:NAME`` group.
_NAME = re.compile(r"^\w[\w.@+-]{0,254}$")
MIN_PASSWORD = 8
_MAX_PASSWORD = 4096  # argon2 time does not grow with length, but nobody needs more and it bounds the input
API_KEY_PREFIX = "rag_"

_HEADER = ("# onprem-rag users: managed with `rag users add|remove|passwd|key` (RAG_USERS_FILE).\n"
           "# Passwords are argon2id hashes and API keys SHA-256 digests; the secrets themselves are never stored.\n"
           "# Hand edits are fine (groups, disabled = true); keep the file mode 0600.\n")


def check_user_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsersFileError(f"invalid user name {name!r}: use letters, digits and . _ @ + - (at most 255 "
                             "characters, starting with a letter or digit)")
    return name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ApiKey:
    id: str  # the digest's first 12 hex digits: names a key in listings without revealing anything usable
    sha256: str
    created: str


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    password_hash: str | None = None
    api_keys: tuple[ApiKey, ...] = ()
    disabled: bool = False
    created: str | None = None

    def to_public_dict(self) -> dict[str, Any]:
        """What `rag users list --json` shows: never a hash."""
        return {"name": self.name, "groups": list(self.groups), "password": self.password_hash is not None,
                "api_keys": [{"id": k.id, "created": k.created} for k in self.api_keys],
                "disabled": self.disabled, "created": self.created}


def api_key_digest(key: str) -> str:
    # A key is 256 random bits: no guessing attack exists for a slow hash to slow down, so plain SHA-256 is as
    # safe as argon2 here, and it costs microseconds per API request instead of ~0.2 s and 64 MiB (which would
    # also hand anyone able to send requests a cheap way to exhaust the server).
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class UserDirectory:
    """The users file. Reads are cached until the file changes; every write re-reads under the lock first."""

    def __init__(self, path: str | Path, hasher: PasswordHasher | None = None, lock_timeout: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, 64 MiB, p=4)
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)
        self._cache: tuple[tuple[int, int, int], dict[str, User]] | None = None
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> UserDirectory:
        return cls(settings.users_file)

    # --- reading ------------------------------------------------------------------------------------------

    def _load(self) -> dict[str, User]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsersFileError(f"cannot read the users file {self.path}: {exc.strerror}; check its permissions "
                                 "or RAG_USERS_FILE") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsersFileError(f"cannot read the users file {self.path}: {exc.strerror}; check its permissions "
                                 "or RAG_USERS_FILE") from None
        users = parse_users(text, self.path)
        self._cache = (stamp, users)
        return users

    def users(self) -> list[User]:
        return [u for _, u in sorted(self._load().items())]

    def get(self, name: str) -> User | None:
        return self._load().get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._load()

    def require(self, name: str) -> User:
        """The user, or an error that says how to find or add them."""
        return self._require(self._load(), name)

    # --- changing -----------------------------------------------------------------------------------------

    def _change(self, fn) -> Any:
        """Read the current file, apply ``fn(users) -> result``, write it back: all under the lock, so
        concurrent changes from other processes are never lost."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._cache = None
                users = dict(self._load())
                result = fn(users)
                self._write(users)
                return result
        except Timeout:
            raise UsersFileError(f"another process holds {self._lock.lock_file}; wait for it (another `rag users` "
                                 "command?) and try again") from None
        except OSError as exc:  # the folder or the lock file: a read-only mount, wrong owner
            raise UsersFileError(f"cannot change the users file {self.path}: {exc.strerror or exc}; run as its "
                                 "owner or check the folder's permissions") from None

    def _write(self, users: dict[str, User]) -> None:
        text = dump_users(users)
        parse_users(text, self.path)  # never replace a good file with one we cannot read back
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # password hashes can be attacked offline: owner only, whatever the umask
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise UsersFileError(f"cannot write the users file {self.path}: {exc.strerror}; check the folder's "
                                 "permissions and free space") from None
        try:  # make the rename itself durable
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
        self._cache = None

    def _hash_password(self, password: str) -> str:
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise UsersFileError(f"password too short: use at least {MIN_PASSWORD} characters")
        if len(password) > _MAX_PASSWORD:
            raise UsersFileError(f"password too long: at most {_MAX_PASSWORD} characters")
        return self.hasher.hash(password)

    def add(self, name: str, groups: Sequence[str], password: str | None = None, *, update: bool = False) -> User:
        """Add a user, or with ``update`` also change an existing one's groups (and password if given; API keys
        are kept)."""
        check_user_name(name)
        try:
            groups_t = normalize_groups(list(groups))
        except ValueError as exc:
            raise UsersFileError(str(exc)) from None
        pw_hash = self._hash_password(password) if password is not None else None  # outside the lock: ~0.2 s

        def change(users: dict[str, User]) -> User:
            old = users.get(name)
            if old is not None and not update:
                raise UsersFileError(f"user {name!r} already exists in {self.path}; use `rag users add {name} "
                                     "--update --groups ...` to change their groups or `rag users passwd` for "
                                     "the password")
            if old is None:
                users[name] = User(name, groups_t, pw_hash, created=_now())
            else:
                users[name] = replace(old, groups=groups_t, password_hash=pw_hash or old.password_hash)
            return users[name]

        return self._change(change)

    def remove(self, name: str) -> None:
        def change(users: dict[str, User]) -> None:
            self._require(users, name)
            del users[name]

        self._change(change)

    def set_password(self, name: str, password: str) -> None:
        pw_hash = self._hash_password(password)

        def change(users: dict[str, User]) -> None:
            users[name] = replace(self._require(users, name), password_hash=pw_hash)

        self._change(change)

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        def change(users: dict[str, User]) -> None:
            users[name] = replace(self._require(users, name), disabled=disabled)

        self._change(change)

    def issue_api_key(self, name: str) -> str:
        """A new API key for ``name``: returned once, only its digest is stored."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        digest = api_key_digest(key)

        def change(users: dict[str, User]) -> None:
            u = self._require(users, name)
            users[name] = replace(u, api_keys=(*u.api_keys, ApiKey(digest[:12], digest, _now())))

        self._change(change)
        return key

    def revoke_api_keys(self, name: str, key_id: str | None = None) -> int:
        """Remove one key (by the id `rag users list` shows) or all of them; returns how many went."""

        def change(users: dict[str, User]) -> int:
            u = self._require(users, name)
            kept = tuple(k for k in u.api_keys if key_id is not None and k.id != key_id)
            users[name] = replace(u, api_keys=kept)
            return len(u.api_keys) - len(kept)

        return self._change(change)

    def _require(self, users: dict[str, User], name: str) -> User:
        if name not in users:
            raise UsersFileError(f"no user {name!r} in {self.path}; `rag users list` shows who exists, "
                                 f"`rag users add {name} --groups ...` adds them")
        return users[name]

    # --- credentials --------------------------------------------------------------------------------------

    def verify_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs and they are not disabled, else None. Unknown users, users without
        a password and disabled users cost the same argon2 verification, so timing does not reveal who exists."""
        user = self._load().get(name)
        target = user.password_hash if user is not None and user.password_hash else None
        ok: bool
        try:
            ok = self.hasher.verify(target or self._dummy(), password)  # argon2's comparison is constant-time
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or target is None or user is None or user.disabled:
            return None
        if self.hasher.check_needs_rehash(target):  # hashed with older parameters: upgrade while we know it
            try:
                self.set_password(name, password)
            except UsersFileError as exc:
                log.warning("could not upgrade the password hash of %s: %s", name, exc)
        return user

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def user_for_api_key(self, key: str) -> User | None:
        """The enabled user owning ``key``, or None. Compares against every stored digest in constant time."""
        if not isinstance(key, str) or not key:
            return None
        digest = api_key_digest(key)
        found = None
        for user in self._load().values():
            for k in user.api_keys:
                if hmac.compare_digest(k.sha256, digest):  # no early exit either
                    found = user
        return found if found is not None and not found.disabled else None


# --- the file format --------------------------------------------------------------------------------------


def dump_users(users: dict[str, User]) -> str:
    """The users file's text: the explanatory header, then one ``[users."name"]`` table per user (tomli-w)."""
    import tomli_w

    table: dict[str, dict] = {}
    for name in sorted(users):
        u = users[name]
        entry: dict = {"groups": list(u.groups)}
        if u.password_hash is not None:
            entry["password_hash"] = u.password_hash
        entry["disabled"] = u.disabled
        if u.created is not None:
            entry["created"] = u.created
        if u.api_keys:
            entry["api_keys"] = [{"id": k.id, "sha256": k.sha256, "created": k.created} for k in u.api_keys]
        table[name] = entry
    return _HEADER + "\n" + tomli_w.dumps({"users": table})


_USER_KEYS = {"groups", "password_hash", "disabled", "created", "api_keys"}


def parse_users(text: str, path: Path | str = "users file") -> dict[str, User]:
    def fail(msg: str) -> UsersFileError:
        return UsersFileError(f"{path}: {msg}; fix the file (or restore it from a backup) and try again")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise UsersFileError(f"{path}{':' + m.group(1) if m else ''}: invalid TOML ({exc}); fix the file (or "
                             "restore it from a backup) and try again") from None
    if set(data) - {"users"}:
        raise fail(f"unknown top-level key(s) {sorted(set(data) - {'users'})}: users go under [users.\"NAME\"]")
    table = data.get("users", {})
    if not isinstance(table, dict):
        raise fail("'users' must be a table of [users.\"NAME\"] sections")
    users: dict[str, User] = {}
    for name, d in table.items():
        try:
            users[name] = _parse_user(name, d)
        except (UsersFileError, ValueError) as exc:
            raise fail(str(exc)) from None
    return users


def _parse_user(name: str, d: object) -> User:
    """One [users."NAME"] section; raises ValueError saying what is wrong with it."""
    check_user_name(name)
    if not isinstance(d, dict):
        raise ValueError(f"user {name!r} must be a table")
    extra = sorted(set(d) - _USER_KEYS)
    if extra:
        raise ValueError(f"user {name!r}: unknown key(s) {extra} (known: {', '.join(sorted(_USER_KEYS))})")
    try:
        if not isinstance(d.get("groups", []), list):
            raise ValueError('groups must be a list, e.g. groups = ["finance"]')
        groups = normalize_groups(d.get("groups", []))
    except ValueError as exc:
        raise ValueError(f"user {name!r}: {exc}") from None
    pw = d.get("password_hash")
    if pw is not None and not (isinstance(pw, str) and pw.startswith("$argon2")):
        raise ValueError(f"user {name!r}: password_hash must be an argon2 hash; set a password with "
                         f"`rag users passwd {name}` instead of writing one")
    disabled = d.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ValueError(f"user {name!r}: disabled must be true or false")
    created = d.get("created")
    if created is not None and not isinstance(created, str):
        raise ValueError(f"user {name!r}: created must be a string")
    return User(name, groups, pw, _parse_keys(name, d.get("api_keys", [])), disabled, created)


def _parse_keys(name: str, raw_keys: object) -> tuple[ApiKey, ...]:
    keys = []
    for k in raw_keys if isinstance(raw_keys, list) else [None]:
        if not (isinstance(k, dict) and set(k) == {"id", "sha256", "created"}
                and all(isinstance(v, str) for v in k.values())
                and re.fullmatch(r"[0-9a-f]{64}", k["sha256"])):
            raise ValueError(f"user {name!r}: api_keys entries are {{ id, sha256 (64 hex digits), created }}; "
                             f"issue keys with `rag users key {name}`")
        keys.append(ApiKey(k["id"], k["sha256"], k["created"]))
    return tuple(keys)

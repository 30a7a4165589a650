"""URLs that may carry credentials: ``http://alice:s3cret@gpu1:8000/v1``, ``https://qdrant:6333/?api-key=…``.

They are scrubbed once, where a setting is read (:class:`SecretUrl` is the type of every URL-valued setting): the
string everyone prints — errors, ``/healthz``, ``/metrics`` labels, the UI, the CLI, logs, ``repr(settings)`` —
is the display form ``http://***@gpu1:8000/v1?api-key=***``. Only the code that builds an HTTP client asks for
the credentials (:meth:`SecretUrl.auth`, :meth:`SecretUrl.params`), and sends requests to the bare URL.
:func:`scrub` masks the same parts in any text: the second line of defence where a library's exception message
(httpx, openai, qdrant-client) may quote the URL it was given.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

MASK = "***"


class _Hidden:
    """Credentials that do not show in ``repr``/``vars`` of the URL holding them."""

    __slots__ = ("auth", "params", "raw")

    def __init__(self, raw: str, auth: tuple[str, str] | None, params: list[tuple[str, str]]) -> None:
        self.raw, self.auth, self.params = raw, auth, params

    def __repr__(self) -> str:
        return MASK


class SecretUrl(str):
    """A URL whose ``str`` is its display form: user info and every query value replaced by ``***``, fragment
    dropped. String operations on it (``rstrip``, f-strings, ``+``) give plain strings of that display form, so a
    credential cannot travel by accident; ``bare`` (scheme, host, port, path) is where requests go, with
    ``auth`` (HTTP Basic) and ``params`` (the query) added by the client."""

    _hidden: _Hidden
    bare: str

    def __new__(cls, url: str) -> SecretUrl:
        if isinstance(url, SecretUrl):
            return url
        raw = str(url).strip()
        parts = urlsplit(raw)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        auth = None
        if at and userinfo != MASK:  # a display form read back has no credentials left
            user, _, password = userinfo.partition(":")
            auth = (unquote(user), unquote(password))
        params = parse_qsl(parts.query, keep_blank_values=True)
        query = "&".join(f"{k}={MASK}" if v else MASK for k, v in params) if parts.query else ""
        display = urlunsplit((parts.scheme, (MASK + "@" if at else "") + hostport, parts.path, query, ""))
        self = super().__new__(cls, display)
        self.bare = urlunsplit((parts.scheme, hostport, parts.path, "", ""))
        self._hidden = _Hidden(raw, auth, params)
        return self

    def __eq__(self, other: object) -> bool:
        # Two passwords for one host are two configurations (caches of clients are keyed by settings).
        if isinstance(other, SecretUrl):
            return self._hidden.raw == other._hidden.raw
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    @property
    def auth(self) -> tuple[str, str] | None:
        """(user, password) from the URL, for HTTP Basic; None when it has none."""
        return self._hidden.auth

    @property
    def params(self) -> list[tuple[str, str]]:
        """The query (where ``?api_key=…`` tokens live), to send with every request to the bare URL."""
        return list(self._hidden.params)

    def reveal(self) -> str:
        """The URL as configured, credentials included: only for a client that takes nothing else."""
        return self._hidden.raw

    def client_kwargs(self) -> dict[str, Any]:
        """``auth`` and ``params`` for an ``httpx.Client`` whose requests go to :attr:`bare`."""
        return {**({"auth": self.auth} if self.auth else {}), **({"params": self.params} if self.params else {})}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._validate, core_schema.union_schema([core_schema.is_instance_schema(cls), core_schema.str_schema()]),
            serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="json"),
        )

    @classmethod
    def _validate(cls, value: str) -> SecretUrl:
        return cls(value)


def secret_url(url: str) -> SecretUrl:
    """``url`` scrubbed (a :class:`SecretUrl` is returned as it is)."""
    return SecretUrl(url)


# user:password@ in any URL, and the value of a query parameter whose name suggests a credential.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"<>]*@")  # to the last @: p@ss
_SECRET_PARAM = re.compile(r"(?i)(?P<name>[?&;][^=&\s'\"<>]*(?:key|token|secret|passw|pwd|auth|sig|credential)"
                           r"[^=&\s'\"<>]*=)[^&\s'\"<>#]*")


def scrub(text: str) -> str:
    """``text`` with the user info of every URL in it, and secret-looking query values, replaced by ``***``."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    return _SECRET_PARAM.sub(lambda m: m.group("name") + MASK, text)


class ScrubFilter(logging.Filter):
    """Scrubs a record's message: httpx logs every request's URL at INFO (``HTTP Request: GET …?api_key=…``),
    with the query the client added."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# The libraries that see the URLs with their credentials, whoever configures logging (the CLI, uvicorn, Streamlit).
for _name in ("httpx", "httpcore", "openai", "qdrant_client", "langchain_openai", "ollama"):
    logging.getLogger(_name).addFilter(ScrubFilter())

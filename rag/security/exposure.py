"""Whether a server may start with this sign-in mode on this interface, and which Host headers it answers.

The one place that decides it: `rag serve`, `rag mcp --http` and `rag ui` all ask :func:`exposure_problem`
before they bind, and the API and the UI ask :func:`allowed_hosts` per request.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.settings import Settings

#: The names a browser uses for this machine. A page from another name that resolves to 127.0.0.1 (DNS
#: rebinding) is same-origin with itself, so the browser lets it read our answers: only the Host header tells.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; anything else (0.0.0.0, ::, a name, an address) may face a network."""
    h = host.strip().strip("[]").lower().rstrip(".")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings, host: str) -> str | None:
    """One line saying why serving ``settings`` on ``host`` hands documents to whoever asks, and what to do;
    None when it is safe. The shells refuse to start on a problem unless the operator passed --insecure (or
    RAG_ALLOW_INSECURE=true)."""
    if settings.auth == "none" and not is_loopback(host):
        return (f"RAG_AUTH=none on {host} lets anyone who reaches this port read every document without signing "
                "in: set RAG_AUTH=password and add users (rag users add NAME), or listen on 127.0.0.1, or pass "
                "--insecure (RAG_ALLOW_INSECURE=true) if only trusted people can reach it")
    # Refused on loopback too: there the proxy's headers are trusted from every local process and every other
    # account on the machine (and, through the API, from any page a local browser opens), so whoever can open
    # a socket to 127.0.0.1 can send X-Forwarded-User: admin. Only the shared secret tells the proxy apart.
    if settings.auth == "proxy" and settings.auth_proxy_secret is None:
        return (f"RAG_AUTH=proxy without RAG_AUTH_PROXY_SECRET believes {settings.auth_proxy_user_header} from "
                "any client that reaches this port, not only from the proxy: set RAG_AUTH_PROXY_SECRET and have "
                f"the proxy send it in {settings.auth_proxy_secret_header}, or pass --insecure "
                "(RAG_ALLOW_INSECURE=true) if nothing but the proxy can connect")
    return None


def allowed_hosts(settings: Settings, bound: str) -> list[str] | None:
    """The Host header values a server bound to ``bound`` answers; None = any. On loopback: this machine's
    names plus RAG_ALLOWED_HOSTS (against DNS rebinding); elsewhere RAG_ALLOWED_HOSTS when set, since clients
    there use names the code cannot guess."""
    extra = [h.strip().lower() for h in settings.allowed_hosts if h.strip()]
    if is_loopback(bound):
        return [*LOOPBACK_HOSTS, "[::1]", *extra]
    return extra or None


def host_allowed(host_header: str | None, allowed: list[str] | None) -> bool:
    """Whether a Host header (with or without a port) names one of ``allowed``; a pattern "*.example.com"
    matches its subdomains, as Starlette's TrustedHostMiddleware does."""
    if allowed is None:
        return True
    if not host_header:
        return False
    h = host_header.strip().lower()
    # "[::1]:8501" or "name:8501"; a bare IPv6 address is not a valid Host header and matches nothing.
    name = h.split("]")[0] + "]" if h.startswith("[") else h.split(":")[0]
    return any(name == p or name.strip("[]") == p or (p.startswith("*.") and name.endswith(p[1:])) for p in allowed)

"""Several LLM endpoints as one: a choice per request, a circuit breaker per endpoint, failover, counters.

``RAG_LLM_ENDPOINTS`` lists replicas of one model or a primary and fallbacks (``priority``: 0 first; a higher
number only while every endpoint of a lower one is down or open-circuited). Within one priority a request goes
to the endpoint with the fewest requests in flight from this process, ties in turn (``least_busy``), or simply
in turn (``round_robin``). Each endpoint keeps its own discovery: model, context window, tokenizer.

Circuit breaker per endpoint: *closed* -> *open* after ``failure_threshold`` consecutive failures (unreachable,
HTTP 5xx, a failed health check), or at once after a timeout (each further request would wait as long) ->
*half-open* after ``cooldown_s``: one trial request, preceded by a health check (``GET /v1/models``); its
success closes the circuit, its failure opens it for another cooldown.
An idle endpoint not heard from for ``health_interval_s`` is pinged before use, so a dead one costs a few
seconds, not a request's whole timeout. No background thread: checks happen when a request needs them.

One endpoint (``RAG_LLM_BASE_URL``) is a pool of one and behaves as before: it is always tried (there is nothing
to fail over to) and its own error is raised as it is.

The chain (rag/generation/chain.py) takes a :class:`Lease` per attempt, packs for that endpoint's window, and on a
failure before the first streamed token reports it (:meth:`Lease.failed`) and asks for the next endpoint.
:meth:`EndpointPool.stats` gives per-endpoint counters and state for metrics.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rag.llm.breaker import CircuitBreaker
from rag.llm.endpoints import OpenAICompatibleEndpoint
from rag.llm.failures import EndpointError
from rag.settings import Routing, Settings

log = logging.getLogger(__name__)

#: Seconds a health check (``GET /v1/models``) may take before the endpoint counts as down.
PING_TIMEOUT = 5.0


@dataclass(eq=False)
class Member:
    """One endpoint of a pool with its breaker and counters (read them through :meth:`EndpointPool.stats`)."""

    endpoint: OpenAICompatibleEndpoint
    priority: int
    breaker: CircuitBreaker
    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    last_ok_at: float | None = None  # wall clock
    last_contact: float = -math.inf  # monotonic: last success or passed health check
    picked: int = 0  # when it was last chosen (a sequence number): round-robin order and tie-break

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url


class Lease:
    """One attempt on one endpoint: counts as in flight until :meth:`release` (or the ``with`` block) ends it.
    Report the outcome with :meth:`ok` (the server answered) or :meth:`failed` (a reason to fail over)."""

    def __init__(self, pool: EndpointPool, member: Member, trial: bool) -> None:
        self.pool = pool
        self.member = member
        self.trial = trial
        self.skipped: list[str] = []  # endpoints that failed their checks while this one was being chosen
        self._verdict = False
        self._released = False

    @property
    def endpoint(self) -> OpenAICompatibleEndpoint:
        return self.member.endpoint

    def ok(self) -> None:
        self._verdict = True
        self.pool._succeeded(self.member)

    def failed(self, reason: str, *, trip: bool = False) -> None:
        """``trip``: open the circuit at once (see :meth:`CircuitBreaker.failure`)."""
        self._verdict = True
        self.pool._failed(self.member, reason, trip=trip)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool._release(self.member, abandoned_trial=self.trial and not self._verdict)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class EndpointPool:
    """Endpoints in priority order (stable within one priority), each with a :class:`CircuitBreaker`."""

    def __init__(self, endpoints: Sequence[OpenAICompatibleEndpoint], *, priorities: Sequence[int] | None = None,
                 routing: Routing = "least_busy", failure_threshold: int = 3, cooldown_s: float = 30.0,
                 health_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        prios = list(priorities) if priorities is not None else [0] * len(endpoints)
        if len(prios) != len(endpoints):
            raise ValueError("one priority per endpoint")
        members = [Member(ep, p, CircuitBreaker(failure_threshold, cooldown_s, clock)) for ep, p in zip(endpoints, prios, strict=True)]
        self._members = sorted(members, key=lambda m: m.priority)
        self._tiers = [[m for m in self._members if m.priority == p] for p in sorted(set(prios))]
        self.routing = routing
        self.health_interval_s = health_interval_s
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._seq = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, endpoints: Sequence[OpenAICompatibleEndpoint] | None = None,
                      **endpoint_overrides: Any) -> EndpointPool:
        """The pool of ``RAG_LLM_ENDPOINTS`` (or of ``RAG_LLM_BASE_URL`` alone). ``endpoints``: use these instead
        (priority 0 each); ``endpoint_overrides`` go to each :class:`OpenAICompatibleEndpoint` (timeouts)."""
        if endpoints is None:
            entries = settings.llm_endpoint_list()
            endpoints = [OpenAICompatibleEndpoint(
                e.base_url, **{"api_key": e.api_key.get_secret_value() if e.api_key else None, "model": e.model,
                               "context_window": e.context_window, "timeout": settings.llm_timeout,
                               **endpoint_overrides}) for e in entries]
            priorities = [e.priority for e in entries]
        else:
            priorities = None
        return cls(endpoints, priorities=priorities, routing=settings.llm_routing,
                   failure_threshold=settings.llm_failure_threshold, cooldown_s=settings.llm_cooldown_s,
                   health_interval_s=settings.llm_health_interval_s)

    # --- what it holds -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._members)

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members)

    @property
    def endpoints(self) -> list[OpenAICompatibleEndpoint]:
        return [m.endpoint for m in self._members]

    @property
    def primary(self) -> OpenAICompatibleEndpoint:
        """The first endpoint of the best priority (with one endpoint: that one)."""
        return self._members[0].endpoint

    @property
    def multi(self) -> bool:
        """Whether a failed request can go to another endpoint."""
        return len(self._members) > 1

    def member(self, base_url: str) -> Member:
        base_url = base_url.rstrip("/")
        return next(m for m in self._members if m.base_url == base_url)

    # --- choosing ------------------------------------------------------------------------------
    def acquire(self, exclude: Collection[Member] = ()) -> Lease | None:
        """An attempt on the best endpoint not in ``exclude``, or None when none can take a request now.
        Health checks and discovery happen here; an endpoint failing them is counted and skipped."""
        skip = set(exclude)
        skipped: list[str] = []
        while True:
            with self._lock:
                member = self._choose(skip)
                if member is None:
                    return None
                trial = member.breaker.start()
                member.in_flight += 1
                self._seq += 1
                member.picked = self._seq
                idle = member.in_flight == 1
            lease = Lease(self, member, trial)
            try:
                problem = self._vet(member, trial, idle)
            except BaseException:
                lease.release()
                raise
            if problem is None:
                with self._lock:
                    member.requests += 1
                lease.skipped = skipped
                return lease
            why, trip = problem
            skipped.append(why if member.base_url in why else f"{member.base_url}: {why}")
            lease.failed(why, trip=trip)
            lease.release()
            skip.add(member)

    def _choose(self, skip: set[Member]) -> Member | None:
        for tier in self._tiers:
            ready = [m for m in tier if m not in skip and (not self.multi or m.breaker.allows())]
            if ready:
                if self.routing == "round_robin":
                    return min(ready, key=lambda m: m.picked)
                return min(ready, key=lambda m: (m.in_flight, m.picked))
        return None

    def _vet(self, member: Member, trial: bool, idle: bool) -> tuple[str, bool] | None:
        """Why this endpoint cannot take the request now (and whether that opens its circuit at once), or None.
        With several endpoints, a half-open trial and an idle endpoint not heard from for a while get a health
        check first (only idle ones: a request to llama-cpp-python's server interrupts the answer it is
        streaming); failing it opens the circuit."""
        ep = member.endpoint
        known = ep.cached_info
        due = self.health_interval_s > 0 and self.clock() - member.last_contact >= self.health_interval_s
        if self.multi and known is not None and (trial or (idle and due)):
            problem = ep.ping(PING_TIMEOUT)
            if problem is not None:
                return problem, True
            with self._lock:
                member.last_contact = self.clock()
            if not known.healthy:  # it answers again: discover now rather than wait for the cached verdict
                ep.refresh()
        info = ep.info
        if not info.healthy:
            return info.error or f"the LLM endpoint {ep.base_url} is not usable", False
        return None

    def attempts(self) -> Iterator[Lease]:
        """Leases on one endpoint after another (each endpoint at most once) until the caller stops; when none is
        left, raises :meth:`unavailable`. The caller releases each lease."""
        tried: list[Member] = []
        while True:
            lease = self.acquire(exclude=tried)
            if lease is None:
                raise self.unavailable()
            tried.append(lease.member)
            yield lease

    def check_usable(self) -> None:
        """Raise at once if no endpoint can take a request (before retrieval is spent on a question). One
        endpoint: its discovery must have succeeded; several: some circuit must let a request through."""
        if not self.multi:
            ep = self.primary
            info = ep.info
            if not info.healthy:
                raise EndpointError(info.error or f"the LLM endpoint {ep.base_url} is not usable")
            return
        with self._lock:
            if any(m.breaker.allows() for m in self._members):
                return
        raise self.unavailable()

    def unavailable(self) -> EndpointError:
        """The error when no endpoint could answer: each endpoint and why."""
        if not self.multi:
            m = self._members[0]
            info = m.endpoint.cached_info
            return EndpointError(m.last_error or (info.error if info else None)
                                 or f"the LLM endpoint {m.base_url} is not usable")
        with self._lock:
            reasons = [self._why(m) for m in self._members]
        return EndpointError(f"none of the {len(self._members)} LLM endpoints could answer: " + "; ".join(reasons)
                             + ". Check the servers, or RAG_LLM_ENDPOINTS")

    def _why(self, m: Member) -> str:
        state = m.breaker.state
        last = m.last_error or "no error recorded"
        if state == "open":
            until = time.strftime("%H:%M:%S", time.localtime(self.wall() + m.breaker.retry_in))
            return (f"{m.base_url}: circuit open until {until} after {m.breaker.consecutive_failures} "
                    f"failure{'s' if m.breaker.consecutive_failures != 1 else ''} (last: {last})")
        if state == "half-open" and m.breaker.trial:
            return f"{m.base_url}: a trial request is under way after failures (last: {last})"
        return last if m.base_url in last else f"{m.base_url}: {last}"

    # --- outcomes ------------------------------------------------------------------------------
    def _succeeded(self, member: Member) -> None:
        with self._lock:
            reopened = member.breaker.state != "closed"
            member.breaker.success()
            member.last_ok_at = self.wall()
            member.last_contact = self.clock()
        if reopened and self.multi:
            log.info("LLM endpoint %s answers again: circuit closed", member.base_url)

    def _failed(self, member: Member, reason: str, *, trip: bool = False) -> None:
        with self._lock:
            member.failures += 1
            member.last_error = reason
            member.last_error_at = self.wall()
            opened = member.breaker.failure(trip=trip)
            n = member.breaker.consecutive_failures
        if self.multi:
            if opened:
                log.warning("LLM endpoint %s: circuit open for %g s after %d consecutive failure(s): %s",
                            member.base_url, member.breaker.cooldown_s, n, reason)
            else:
                log.warning("LLM endpoint %s failed (%s); trying another", member.base_url, reason)

    def _release(self, member: Member, *, abandoned_trial: bool) -> None:
        with self._lock:
            member.in_flight -= 1
            if abandoned_trial:
                member.breaker.abandon()

    # --- introspection -------------------------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        """Per endpoint, in priority order: counters, breaker state and what discovery found (nothing is asked
        of the servers: cheap enough for a metrics scrape). Times are wall-clock epoch seconds."""
        with self._lock:
            out = []
            for m in self._members:
                info = m.endpoint.cached_info
                state = m.breaker.state
                out.append({
                    "base_url": m.base_url, "priority": m.priority, "state": state,
                    "requests": m.requests, "failures": m.failures, "in_flight": m.in_flight,
                    "consecutive_failures": m.breaker.consecutive_failures, "times_opened": m.breaker.times_opened,
                    "open_until": self.wall() + m.breaker.retry_in if state == "open" else None,
                    "last_error": m.last_error, "last_error_at": m.last_error_at, "last_ok_at": m.last_ok_at,
                    "healthy": info.healthy if info else None, "model": info.model if info else None,
                    "kind": info.kind if info else None,
                    "context_window": info.context_window if info else m.endpoint.configured_window,
                })
            return out

    def describe(self) -> list[dict[str, Any]]:
        """:meth:`stats` plus discovery (``EndpointInfo``) of every endpoint whose circuit is not open: for
        ``rag status`` and the UI. Never includes API keys."""
        with self._lock:
            closed = [m.breaker.state != "open" for m in self._members]
        infos = [m.endpoint.info if ask else m.endpoint.cached_info for m, ask in zip(self._members, closed, strict=True)]
        return [{**(info.to_dict() if info else {}), **s} for info, s in zip(infos, self.stats(), strict=True)]

    def close(self) -> None:
        for m in self._members:
            m.endpoint.close()

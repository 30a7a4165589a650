"""The endpoint pool's logic without servers: the circuit breaker on a fake clock, the choice of endpoint
(round robin, least busy, priorities), health checks before use, and the error when nothing is left.
Endpoints here are stand-ins that answer discovery and health checks from memory; tests/test_failover.py runs
the same pool against real servers."""

from __future__ import annotations

import pytest

from rag.llm.breaker import CircuitBreaker
from rag.llm.endpoints import EndpointError, EndpointInfo
from rag.llm.failures import is_failover_error
from rag.llm.pool import EndpointPool


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class StandIn:
    """What the pool asks of an endpoint: discovery (info / cached_info / refresh), a health check, close."""

    def __init__(self, name: str, *, up: bool = True, window: int = 2048) -> None:
        self.base_url = f"http://{name}:8000/v1"
        self.configured_window = window
        self.up = up
        self.pings = 0
        self._info: EndpointInfo | None = None

    def _discover(self) -> EndpointInfo:
        if self.up:
            return EndpointInfo(self.base_url, model="m", context_window=self.configured_window, healthy=True)
        return EndpointInfo(self.base_url, error=f"cannot reach the LLM endpoint at {self.base_url} (refused)")

    @property
    def info(self) -> EndpointInfo:
        if self._info is None:
            self._info = self._discover()
        return self._info

    @property
    def cached_info(self) -> EndpointInfo | None:
        return self._info

    def refresh(self) -> EndpointInfo:
        self._info = self._discover()
        return self._info

    def ping(self, timeout: float = 5.0) -> str | None:
        self.pings += 1
        return None if self.up else f"cannot reach {self.base_url} (refused)"

    def close(self) -> None:
        pass


def pool_of(*eps, clock=None, **kw) -> EndpointPool:
    clock = clock or Clock()
    kw.setdefault("health_interval_s", 0)
    return EndpointPool(list(eps), clock=clock, wall=lambda: 1_700_000_000.0 + clock.t, **kw)


def take(pool: EndpointPool, n: int) -> list[str]:
    """Endpoints of ``n`` successive one-at-a-time requests."""
    out = []
    for _ in range(n):
        lease = pool.acquire()
        assert lease is not None
        out.append(lease.endpoint.base_url.split("/")[2].split(":")[0])
        lease.ok()
        lease.release()
    return out


# --- the breaker ---------------------------------------------------------------------------------
def test_breaker_opens_after_threshold_consecutive_failures():
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown_s=30, clock=clock)
    assert b.state == "closed" and b.allows()
    assert not b.failure() and not b.failure()
    b.success()  # a success in between starts the count again
    assert not b.failure() and not b.failure() and b.state == "closed"
    assert b.failure() and b.state == "open" and not b.allows()
    assert b.retry_in == 30 and b.times_opened == 1
    clock.t += 29.9
    assert b.state == "open" and not b.allows()


def test_breaker_half_open_lets_one_trial_through():
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    b.failure()
    clock.t += 10
    assert b.state == "half-open" and b.allows()
    assert b.start() is True  # the trial
    assert not b.allows()  # nobody else while it runs
    b.abandon()  # the caller went away without a verdict: the next may try
    assert b.allows() and b.start()
    b.success()
    assert b.state == "closed" and b.consecutive_failures == 0 and not b.start()


def test_breaker_failed_trial_opens_again_for_a_full_cooldown():
    clock = Clock()
    b = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    b.failure(), b.failure()
    clock.t += 15
    assert b.start()
    assert b.failure() is True and b.state == "open" and b.retry_in == 10 and b.times_opened == 2
    clock.t += 10
    assert b.state == "half-open"


def test_breaker_late_failure_of_an_old_request_does_not_extend_the_cooldown():
    clock = Clock()
    b = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    b.failure()
    clock.t += 5
    assert b.failure() is False and b.retry_in == 5


def test_breaker_trips_at_once_on_a_timeout():
    b = CircuitBreaker(threshold=3, cooldown_s=10, clock=Clock())
    assert b.failure(trip=True) and b.state == "open"


# --- choosing ------------------------------------------------------------------------------------
def test_round_robin_and_least_busy():
    a, b, c = StandIn("a"), StandIn("b"), StandIn("c")
    assert take(pool_of(a, b, c, routing="round_robin"), 6) == ["a", "b", "c", "a", "b", "c"]
    pool = pool_of(a, b, c, routing="least_busy")
    assert take(pool, 3) == ["a", "b", "c"]  # ties go in turn
    held = [pool.acquire(), pool.acquire()]  # a and b busy
    assert [h.endpoint is x for h, x in zip(held, (a, b), strict=True)] == [True, True]
    assert take(pool, 3) == ["c", "c", "c"]
    held[0].release()
    assert take(pool, 2) == ["a", "c"]  # a is free again and the least recently chosen
    stats = {s["base_url"].split("/")[2].split(":")[0]: s for s in pool.stats()}
    assert stats["b"]["in_flight"] == 1 and stats["a"]["in_flight"] == 0
    held[1].release()
    assert all(s["in_flight"] == 0 for s in pool.stats())


def test_priority_uses_fallbacks_only_while_primaries_are_out():
    clock = Clock()
    p1, p2, fb = StandIn("p1"), StandIn("p2"), StandIn("fb")
    pool = pool_of(p1, p2, fb, clock=clock, priorities=[0, 0, 1], failure_threshold=1, cooldown_s=60)
    assert pool.primary is p1
    assert sorted(take(pool, 4)) == ["p1", "p1", "p2", "p2"]
    for ep in (p1, p2):
        lease = pool.acquire(exclude=[m for m in pool.members if m.endpoint is not ep])
        lease.failed("HTTP 503")
        lease.release()
    assert take(pool, 2) == ["fb", "fb"]
    clock.t += 60  # both primaries half-open: the next request is a trial on one of them, after a health check
    assert take(pool, 1)[0] in ("p1", "p2") and p1.pings + p2.pings == 1
    assert [s["state"] for s in pool.stats()].count("closed") == 2


def test_a_down_endpoint_is_skipped_and_its_circuit_opens():
    clock = Clock()
    up, down = StandIn("up"), StandIn("down", up=False)
    pool = pool_of(down, up, clock=clock, failure_threshold=2, cooldown_s=30)
    assert take(pool, 3) == ["up", "up", "up"]  # discovery of "down" fails: counted and skipped
    s = pool.stats()[0]
    assert s["state"] == "open" and s["failures"] == 2 and s["requests"] == 0 and "cannot reach" in s["last_error"]
    assert s["open_until"] == pytest.approx(1_700_000_000.0 + clock.t + 30)
    clock.t += 30
    down.up = True  # recovered: the half-open health check passes, discovery runs again, the trial succeeds
    assert "down" in take(pool, 2)
    assert pool.stats()[0]["state"] == "closed" and down.pings == 1 and pool.stats()[0]["healthy"]


def test_idle_endpoints_are_pinged_after_the_health_interval():
    clock = Clock()
    a, b = StandIn("a"), StandIn("b")
    pool = pool_of(a, b, clock=clock, health_interval_s=30)
    take(pool, 2)  # first use: discovery, no ping
    assert a.pings == b.pings == 0
    clock.t += 10
    take(pool, 2)
    assert a.pings == b.pings == 0
    clock.t += 31
    b.up = False
    assert take(pool, 2) == ["a", "a"]  # b failed its health check: never got the request, and is out
    assert a.pings == 1 and b.pings == 1 and pool.stats()[1]["failures"] == 1 and pool.stats()[1]["state"] == "open"


def test_all_down_names_each_endpoint_and_why():
    clock = Clock()
    a, b = StandIn("a", up=False), StandIn("b", up=False)
    pool = pool_of(a, b, clock=clock, failure_threshold=1, cooldown_s=60)
    assert pool.acquire() is None
    with pytest.raises(EndpointError) as e:
        pool.check_usable()
    msg = str(e.value)
    assert "none of the 2 LLM endpoints" in msg
    for ep in (a, b):
        assert f"{ep.base_url}: circuit open until " in msg
    assert "after 1 failure (last: cannot reach the LLM endpoint at http://a:8000/v1" in msg
    with pytest.raises(EndpointError, match="none of the 2"):
        list(pool.attempts())


def test_single_endpoint_is_always_tried_and_its_own_error_raised():
    clock = Clock()
    only = StandIn("only", up=False)
    pool = pool_of(only, clock=clock, failure_threshold=1)
    for _ in range(3):  # no circuit keeps the one endpoint from being tried again
        assert pool.acquire() is None
    assert pool.stats()[0]["failures"] == 3
    with pytest.raises(EndpointError, match=r"^cannot reach the LLM endpoint at http://only:8000/v1 \(refused\)$"):
        pool.check_usable()
    only.up = True
    only.refresh()
    assert take(pool, 1) == ["only"] and only.pings == 0  # no health checks with nothing to fail over to


def test_failover_errors():
    import httpx
    import openai

    req = httpx.Request("POST", "http://gpu1:8000/v1/chat/completions")

    def err(cls, status):
        return cls("x", response=httpx.Response(status, request=req), body=None)

    assert is_failover_error(openai.APIConnectionError(request=req))
    assert is_failover_error(openai.APITimeoutError(request=req))
    assert is_failover_error(httpx.ConnectError("refused")) and is_failover_error(httpx.ReadTimeout("slow"))
    assert is_failover_error(err(openai.InternalServerError, 503))
    for cls, status in ((openai.BadRequestError, 400), (openai.AuthenticationError, 401),
                        (openai.NotFoundError, 404)):
        assert not is_failover_error(err(cls, status))
    assert not is_failover_error(ValueError("No generation chunks were returned"))


def test_settings_accept_a_list_of_endpoints(tmp_path, monkeypatch):
    from rag.settings import Settings

    monkeypatch.setenv("RAG_LLM_ENDPOINTS", '["http://a:8000/v1", {"base_url": "http://b:8000/v1", '
                                            '"context_window": 4096, "priority": 1}]')
    monkeypatch.setenv("RAG_LLM_API_KEY", "sk-shared")
    monkeypatch.setenv("RAG_LLM_CONTEXT_WINDOW", "8192")
    eps = Settings().llm_endpoint_list()
    assert [(e.base_url, e.context_window, e.priority) for e in eps] == [
        ("http://a:8000/v1", 8192, 0), ("http://b:8000/v1", 4096, 1)]
    assert all(e.api_key.get_secret_value() == "sk-shared" for e in eps)
    monkeypatch.delenv("RAG_LLM_ENDPOINTS")
    toml = tmp_path / "rag.toml"
    toml.write_text('llm_routing = "round_robin"\nllm_cooldown_s = 5\n\n[[llm_endpoints]]\nbase_url = "http://a/v1"\n'
                    'model = "qwen"\n\n[[llm_endpoints]]\nbase_url = "http://b/v1"\npriority = 1\n')
    monkeypatch.setenv("RAG_CONFIG", str(toml))
    s = Settings()
    assert s.llm_routing == "round_robin" and s.llm_cooldown_s == 5
    pool = EndpointPool.from_settings(s)
    assert [m.base_url for m in pool.members] == ["http://a/v1", "http://b/v1"]
    assert [m.priority for m in pool.members] == [0, 1] and pool.members[0].endpoint.configured_model == "qwen"
    assert pool.members[1].endpoint.api_key == "sk-shared" and pool.routing == "round_robin"
    pool.close()
    monkeypatch.delenv("RAG_CONFIG")
    single = Settings(llm_base_url="http://only:8080/v1").llm_endpoint_list()
    assert [e.base_url for e in single] == ["http://only:8080/v1"]

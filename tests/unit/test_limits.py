"""rag.api.limits: the concurrency slots (waiting for one, giving up) and the conversation caps. The HTTP side,
attacks included, is in tests/security/test_api_limits.py."""

from __future__ import annotations

import anyio

from rag.api.limits import Slots, ToolWork, conversation_error
from rag.settings import Settings


def test_slots_refuse_per_user_then_overall_and_count_back():
    async def main() -> None:
        slots = Slots(overall=3, per_user=2)
        assert await slots.acquire("alice", 0) is None
        assert await slots.acquire("alice", 0) is None
        assert await slots.acquire("alice", 0) == "busy_user"
        assert await slots.acquire("bob", 0) is None
        assert await slots.acquire("bob", 0) == "busy_overall"
        slots.release("alice")
        assert await slots.acquire("bob", 0) is None
        for user in ("alice", "bob", "bob"):
            slots.release(user)
        assert slots.total == 0 and not slots.busy

    anyio.run(main)


def test_a_queued_request_gets_the_slot_freed_while_it_waits_and_gives_up_after_its_time():
    async def main() -> None:
        slots = Slots(overall=1, per_user=1)
        assert await slots.acquire("alice", 0) is None
        got: list[str | None] = []
        async with anyio.create_task_group() as tg:
            async def wait() -> None:
                got.append(await slots.acquire("bob", 5))

            tg.start_soon(wait)
            await anyio.sleep(0.2)
            assert not got  # still waiting
            slots.release("alice")
        assert got == [None] and slots.busy == {"bob": 1}
        t = anyio.current_time()
        assert await slots.acquire("carol", 0.3) == "busy_overall"
        assert 0.25 < anyio.current_time() - t < 2
        assert not slots._waiters  # a waiter that gave up leaves nothing behind

    anyio.run(main)


def test_abandoned_tool_work_is_cancelled_and_waited_for():
    """What an MCP tool call still runs when its request ends is cancelled, and the request waits for it to stop
    (the attack on a live server is in tests/security/test_api_disconnects.py)."""
    async def main() -> None:
        work = ToolWork()
        cancelled: list[str] = []
        stopped_at: list[str] = []
        release = anyio.Event()

        async def answer() -> None:
            with work.running(cancel=lambda: (cancelled.append("answer"), release.set())):
                await release.wait()
                await anyio.sleep(0.2)  # a cancelled answer takes a moment to close its LLM request
            stopped_at.append("answer")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            await anyio.sleep(0.1)
            work.abandon()
            assert cancelled == ["answer"] and not stopped_at
            await work.stopped()
            assert stopped_at == ["answer"]
        # Work that starts after the request ended is cancelled at once; the request has nothing to wait for.
        with work.running(cancel=lambda: cancelled.append("late")):
            assert cancelled == ["answer", "late"]
        with anyio.fail_after(1):
            await work.stopped()

    anyio.run(main)


def test_conversation_caps_name_their_setting(tmp_path):
    s = Settings(data_dir=tmp_path, api_max_messages=3, api_max_chars=10)
    assert conversation_error(s, ["a", "b", "c"]) is None
    assert "RAG_API_MAX_MESSAGES=3" in (conversation_error(s, ["a"] * 4) or "")
    assert "RAG_API_MAX_CHARS=10" in (conversation_error(s, ["12345", "123456"]) or "")

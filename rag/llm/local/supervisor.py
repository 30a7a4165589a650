"""Keep the demo LLM serving: restart it when it dies (bounded, logged), and say so where the UI can read it.

A crash of the model server must not take the chat down with it: ``rag llm serve`` runs under this
supervisor, which restarts the server up to ``max_restarts`` times within ``window_s`` (with a growing pause),
and writes its state to a small JSON file (``<data_dir>/llm-status.json``). The UI reads that file when the
model does not answer, to tell the user "the model is restarting" instead of a bare connection error.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.llm.local.process import LocalLLMError, ServerProcess, describe_exit

Say = Callable[[str], None]


@dataclass
class SupervisorStatus:
    """What the supervisor last did; ``state`` is starting | ready | restarting | failed | stopped."""

    state: str
    engine: str
    base_url: str
    restarts: int = 0
    max_restarts: int = 0
    last_exit: str | None = None
    message: str = ""
    #: The engine's server process (its process group holds the engine's workers); None between servers.
    server_pid: int | None = None
    pid: int = field(default_factory=os.getpid)
    updated: float = field(default_factory=time.time)

    def write(self, path: Path) -> None:
        self.updated = time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".llm-status-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, path)  # readers never see half a file

    @classmethod
    def read(cls, path: Path) -> SupervisorStatus | None:
        """The status, or None when there is none or its supervisor is gone (a stale file says nothing)."""
        try:
            data = json.loads(path.read_text())
            status = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        if status.state not in ("stopped", "failed") and not _alive(status.pid):
            return None
        return status

    def notice(self) -> str | None:
        """One sentence for a user whose question could not be answered, or None when the state explains
        nothing (the model is ready, so the failure is something else)."""
        if self.state == "restarting":
            return (f"The language model stopped with {self.last_exit} and is restarting (attempt {self.restarts} "
                    f"of {self.max_restarts}); ask again in a moment.")
        if self.state == "starting":
            return "The language model is starting; ask again in a moment."
        if self.state == "failed":
            return f"The language model stopped and could not be restarted: {self.message}"
        return None


def status_path(data_dir: Path) -> Path:
    """Where ``rag llm serve`` (with these settings' data dir) reports, and where the UI looks."""
    return data_dir / "llm-status.json"


def notice_for(data_dir: Path, base_urls: list[str]) -> str | None:
    """What to tell a user when the model does not answer, if a demo supervisor of one of ``base_urls`` knows
    why (restarting, starting, given up); None otherwise."""
    status = SupervisorStatus.read(status_path(data_dir))
    if status is None or status.base_url.rstrip("/") not in {u.rstrip("/") for u in base_urls}:
        return None
    return status.notice()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    """Runs ``make_server()`` until stopped; restarts it when it exits on its own."""

    def __init__(self, make_server: Callable[[], ServerProcess], *, engine: str, start_timeout: float,
                 status_path: Path | None = None, max_restarts: int = 5, window_s: float = 600.0,
                 say: Say = print) -> None:
        self.make_server = make_server
        self.engine = engine
        self.start_timeout = start_timeout
        self.status_path = status_path
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.say = say
        self.server: ServerProcess | None = None
        self._restarts: list[float] = []

    def _status(self, state: str, **kw: object) -> None:
        if self.status_path is None:
            return
        base_url = self.server.base_url if self.server is not None else ""
        server_pid = self.server.pid if self.server is not None and self.server.poll() is None else None
        SupervisorStatus(state, self.engine, base_url, restarts=len(self._restarts), max_restarts=self.max_restarts,
                         server_pid=server_pid, **kw).write(self.status_path)  # type: ignore[arg-type]

    def start(self) -> ServerProcess:
        """Start the first server; a failure here is the caller's to report (nothing was serving yet)."""
        self.server = self.make_server()
        self._status("starting")
        try:
            self.server.start(timeout=self.start_timeout)
        except BaseException as exc:
            self._status("failed", message=str(exc))
            raise
        self._status("ready")
        return self.server

    def run(self) -> int:
        """Wait on the server, restarting it as allowed; returns the exit code for ``rag llm serve`` (1 once it
        gives up). KeyboardInterrupt (Ctrl-C, or SIGTERM turned into it) stops the server and propagates."""
        assert self.server is not None, "start() first"
        try:
            while True:
                code = self.server.wait()
                what = describe_exit(code)
                self.server.stop()  # what the dead server forked (vLLM's engine core) goes too, freeing the port
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < self.window_s]
                if len(self._restarts) >= self.max_restarts:
                    msg = (f"{self.server.label} exited with {what}; {self.max_restarts} restarts within "
                           f"{self.window_s:.0f} s, giving up")
                    self.say(msg)
                    self._status("failed", last_exit=what, message=msg)
                    return 1
                self._restarts.append(now)
                pause = min(2.0 ** (len(self._restarts) - 1), 30.0)
                self.say(f"{self.server.label} exited with {what}; restarting in {pause:.0f} s "
                         f"(restart {len(self._restarts)} of at most {self.max_restarts} per {self.window_s:.0f} s)")
                self._status("restarting", last_exit=what)
                time.sleep(pause)
                self.server = self.make_server()
                try:
                    self.server.start(timeout=self.start_timeout)
                except LocalLLMError as exc:
                    self.say(str(exc))
                    self._status("restarting", last_exit=what, message=str(exc))
                    continue  # counts as another exit: bounded by the same budget
                self.say(f"{self.server.label} is back on {self.server.base_url}")
                self._status("ready", last_exit=what)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self._status("stopped")

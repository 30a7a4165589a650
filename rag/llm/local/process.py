"""One local model server as a child process: start it, wait until its OpenAI-compatible API answers, stop it.

Shared by both engines (llama.cpp, vLLM), ``rag llm serve``, the supervisor, the self-check and the test
fixtures, so that "is it up", "did it die" and "never leave it behind" are answered in one place.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

from rag.errors import RagError
from rag.hardware import cpu_info  # noqa: F401  (the engines and the self-check import it from here)


class LocalLLMError(RagError):
    pass


def engine_home() -> Path:
    """Engines, wheels and converted models, shared by every checkout on the machine (``RAG_ENGINES_DIR``)."""
    if os.environ.get("RAG_ENGINES_DIR"):
        return Path(os.environ["RAG_ENGINES_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "onprem-rag" / "engines"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_exit(code: int | None) -> str:
    """"code 1", "signal SIGKILL", or "a crash (SIGSEGV)": a crash reads differently from a refusal."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT):
            return f"a crash ({name})"
        return f"signal {name}"
    return f"code {code}"


def answers(base_url: str, timeout: float = 2.0) -> bool:
    """True when ``base_url`` (…/v1) lists its models: the API is up and the model is loaded."""
    try:
        return httpx.get(f"{base_url}/models", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _terminate_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the starting thread dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's stop() is all there is
        pass


class ServerProcess:
    """A server command run as a child; ``start()`` returns once its API answers, or raises with the reason."""

    #: Shown in messages ("the demo LLM server (llama.cpp) exited with a crash (SIGSEGV)").
    label = "the demo LLM server"

    def __init__(self, command: Sequence[str], *, host: str, port: int, env: Mapping[str, str] | None = None,
                 log: IO | None = None, label: str | None = None, die_with_parent: bool = False) -> None:
        self.command = list(command)
        self.host, self.port = host, port
        self.env = dict(env) if env is not None else None
        self.log = log
        self.label = label or self.label
        #: SIGTERM the server when the thread that started it ends (PR_SET_PDEATHSIG): for ``rag llm serve``,
        #: whose main thread starts it, so that even a SIGKILLed supervisor leaves no 3.5 GB server behind in
        #: a session of its own. Not for servers started from short-lived threads (the signal would come
        #: when that thread ends, not the process).
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, *, timeout: float = 120.0) -> ServerProcess:
        if answers(self.base_url):
            raise LocalLLMError(f"something already answers on {self.base_url}; stop it or choose another --port")
        env = {**os.environ, **self.env} if self.env is not None else None
        # Its own process group: stopping it must also stop the workers a server forks (vLLM's engine core).
        self.proc = subprocess.Popen(self.command, stdout=self.log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if self.log else subprocess.DEVNULL, env=env,
                                     start_new_session=True,
                                     preexec_fn=_terminate_with_parent if self.die_with_parent else None)
        try:
            self._await_ready(timeout)
        except BaseException:  # Ctrl-C while loading included: never leave the server behind
            self.stop()
            raise
        return self

    def _await_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_name = getattr(self.log, "name", None)
                where = f"; its output is in {log_name}" if log_name else ""
                raise LocalLLMError(f"{self.label} exited with {describe_exit(self.proc.returncode)} while "
                                    f"starting{where} (is port {self.port} free?)")
            if answers(self.base_url):
                return
            time.sleep(0.3)
        raise LocalLLMError(f"{self.label} did not answer on {self.base_url} within {timeout:.0f} s")

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        # Whatever it forked and left running (an engine worker whose parent crashed) goes with it, and is gone
        # when stop() returns: a restart on the same port, or a test counting processes, comes right after.
        self._signal_group(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self._signal_group(0) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _signal_group(self, sig: int) -> bool:
        """Signal the server's process group; False when no process of it is left."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

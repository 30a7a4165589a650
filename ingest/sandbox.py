"""Parsing in a worker process with limits, so a hostile or broken file costs that file and nothing else.

Every file ``rag ingest`` and the UI's uploads parse (OCR included) goes through ``ParseWorker``: one process
from a ProcessPoolExecutor (forkserver start method: the caller has torch and threads loaded, which fork must
not copy), kept alive across files, with
- an address-space limit (RLIMIT_AS = RAG_PARSE_MAX_MEMORY_MB) set in the worker: an allocation beyond it fails
  there (MemoryError, or a C library's crash), never in the UI or the CLI;
- a wall-time limit per file (RAG_PARSE_TIMEOUT_S): the worker is killed and the next file gets a fresh one. The
  worker leads its own process group, and the whole group is killed: an OCR'ing tesseract it started goes with it
  instead of running on, orphaned, beside the next file. A fresh worker is started (and waited for) before the next
  file's clock starts, so a slow start on a loaded machine is never charged to a file;
- the parsers' own checks before expensive work (ingest/limits.py: pages, OCR bitmap size, zip inflation).
A worker that dies (out of memory, a signal, the timeout) turns into a ParseError whose reason says which, and
the run goes on. Chunking stays in the caller: it needs the embedding model's tokenizer, which lives there.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType

from ingest.parsers import ParsedDocument, parse, warm_up
from rag.errors import ParseError
from rag.settings import Settings

log = logging.getLogger(__name__)

# Imported once by the fork server, so a worker restarted after a crash starts in milliseconds, not seconds.
_PRELOAD = ["ingest.parsers", "pypdfium2", "docx", "lxml.html"]
#: How long a new worker may take to start (fork, limits, first task) before the run gives up on parsing.
START_TIMEOUT_S = 120.0


class _OutOfMemory(ParseError):
    """The worker's memory limit was hit: the worker is replaced, its heap may be in any state."""


def _init_worker(max_memory_mb: int, parent: int) -> None:
    # Its own process group, so that a kill reaches the programs it runs too (tesseract): killing the worker alone
    # would leave them orphaned, still busy, with nobody to enforce their timeout. This also keeps Ctrl-C from the
    # terminal away from it; the parent decides what stops, and kills the group itself.
    os.setpgid(0, 0)
    # A worker outlives a parent killed with -9 (or by the OOM killer): it waits on its task queue, whose write end
    # it holds itself, and keeps the fork server alive. So it watches the parent and leaves with it.
    threading.Thread(target=_exit_with, args=(parent,), name="rag-parse-parent-watch", daemon=True).start()
    limit = max_memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing parser must not write GBs of core dump
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # in case setpgid was refused and Ctrl-C still reaches us
    # unstructured imports spaCy, whose thinc imports torch when it can: 330 MB of address space and a second of
    # import on every worker restart, for nothing a parser uses. Under RLIMIT_AS that left a genuine DOCX ~100 MB
    # from the limit in the tests' 1 GB worker; blocked, thinc takes its no-torch path.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def _exit_with(parent: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            if os.getpgid(0) == os.getpid():  # our own group (never the user's): take our children along
                os.killpg(0, signal.SIGKILL)
            os._exit(0)
        except PermissionError:  # alive, under another user (never the case for our own parent)
            pass


def _ready() -> bool:
    """The first task of every worker, answered once it is up: whether it leads its own process group."""
    return os.getpgid(0) == os.getpid()


def _parse_in_worker(path: str, settings: Settings) -> ParsedDocument:
    try:
        return parse(Path(path), settings)
    except ParseError as exc:
        if isinstance(exc.__cause__, MemoryError):  # a parser that wraps every failure (unstructured's DOCX)
            raise _OutOfMemory(out_of_memory(settings)) from None
        raise
    except MemoryError:
        raise _OutOfMemory(out_of_memory(settings)) from None
    except RecursionError:
        raise ParseError("too deeply nested for the parser (Python's recursion limit)") from None
    except Exception as exc:  # re-raised as a ParseError: the original may not survive pickling back
        log.debug("unexpected parser failure on %s", path, exc_info=True)
        raise ParseError(f"unexpected {exc.__class__.__name__} while parsing: {str(exc)[:200]}") from None


def out_of_memory(settings: Settings) -> str:
    return (f"parser ran out of memory (RAG_PARSE_MAX_MEMORY_MB={settings.parse_max_memory_mb}); raise it if "
            "the file is genuine")


def death_reason(exitcode: int | None, settings: Settings) -> str:
    """Why the worker died, from its exit code (negative: the signal that killed it)."""
    if exitcode is None or exitcode >= 0:
        return f"parser process exited unexpectedly (exit code {exitcode})"
    limit = f"RAG_PARSE_MAX_MEMORY_MB={settings.parse_max_memory_mb}"
    hints = {signal.SIGKILL: "killed from outside, e.g. by the kernel's out-of-memory killer",
             signal.SIGSEGV: f"often a parser out of memory under {limit}, or a parser bug",
             signal.SIGABRT: f"often a parser out of memory under {limit}"}
    try:
        sig = signal.Signals(-exitcode)
    except ValueError:
        return f"parser crashed: signal {-exitcode}"
    hint = hints.get(sig)
    return f"parser crashed: signal {-exitcode} ({sig.name}" + (f"; {hint})" if hint else ")")


class ParseWorker:
    """``parse(path)`` in a child process with limits; raises ParseError with the reason, never anything else."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._grouped = False  # the worker leads its own process group (killed as a whole)
        self._warm: set[str] = set()  # file types whose parser the current worker has imported
        self.restarts = 0

    def __enter__(self) -> ParseWorker:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _executor(self) -> ProcessPoolExecutor:
        """The pool, with its worker started: a start is never timed against a file's RAG_PARSE_TIMEOUT_S."""
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self.settings.parse_max_memory_mb, os.getpid()))
            ready = self._pool.submit(_ready)
            # The executor spawns its worker on submit; keep our own handle to read its exit code after a crash.
            self._procs = list(self._pool._processes.values())
            try:
                self._grouped = ready.result(timeout=START_TIMEOUT_S)
            except FutureTimeout:
                self._discard(kill=True)
                raise ParseError(f"the parser process did not start within {START_TIMEOUT_S:g} s; the machine "
                                 "may be overloaded") from None
            except BrokenProcessPool:
                raise ParseError("the parser process could not start: " + self._why_it_died()) from None
        return self._pool

    def parse(self, path: Path) -> ParsedDocument:
        pool = self._executor()
        try:
            self._warm_up(pool, path.suffix.lower())
            future = pool.submit(_parse_in_worker, str(path), self.settings)
        except BrokenProcessPool:  # died between two files
            self._discard(kill=True)
            pool = self._executor()
            self._warm_up(pool, path.suffix.lower())
            future = pool.submit(_parse_in_worker, str(path), self.settings)
        try:
            return future.result(timeout=self.settings.parse_timeout_s)
        except _OutOfMemory:
            self._discard(kill=True)
            raise
        except FutureTimeout:
            self._discard(kill=True)
            raise ParseError(f"timed out after {self.settings.parse_timeout_s:g} s (RAG_PARSE_TIMEOUT_S): the "
                             "parser was stopped; raise the limit if the file is genuine (long scans)") from None
        except BrokenProcessPool:
            raise ParseError(self._why_it_died()) from None

    def _warm_up(self, pool: ProcessPoolExecutor, ext: str) -> None:
        """The file type's parser imported in this worker before the file's clock starts, like the worker's own
        start (parsers.warm_up). A failed import is left for the parse to report."""
        if ext in self._warm:
            return
        future = pool.submit(warm_up, ext, self.settings)  # BrokenProcessPool: died between files, replaced
        try:
            future.result(timeout=START_TIMEOUT_S)
        except FutureTimeout:
            self._discard(kill=True)
            raise ParseError(f"the parser for {ext} files did not load within {START_TIMEOUT_S:g} s; the machine "
                             "may be overloaded") from None
        except BrokenProcessPool:
            raise ParseError(self._why_it_died()) from None
        except Exception:  # noqa: BLE001 - the parse meets it again and says what it is
            pass
        self._warm.add(ext)

    def _why_it_died(self) -> str:
        """After the worker died on its own: clean up what it left (its group), then say why from its exit code."""
        codes = self._discard(kill=False)
        return death_reason(next((c for c in codes if c), None), self.settings)

    def _discard(self, *, kill: bool) -> list[int | None]:
        """Drop the executor (a fresh one starts on the next file); returns its workers' exit codes."""
        pool, procs, grouped = self._pool, self._procs, self._grouped
        self._pool, self._procs, self._grouped = None, [], False
        self._warm.clear()
        if pool is None:
            return []
        for p in procs:
            if grouped and p.pid is not None:
                # Also after the worker's own death: a tesseract it started may still run, orphaned.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            elif kill:
                p.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)
        self.restarts += 1
        return [p.exitcode for p in procs]

    def close(self) -> None:
        """Stop the worker, killing it if a parse is still running (the run was interrupted)."""
        if self._pool is not None:
            self._discard(kill=True)
            self.restarts -= 1

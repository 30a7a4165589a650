"""The bytes a download serves: exactly those that were indexed, read from the document's own path.

A document's groups were decided for the bytes an ingest read at its path. Between that ingest and a click on
its download button the path may have been rewritten, or swapped for a symbolic (or hard) link to a file the
reader may not see (``public/notes.txt -> ../finance/salaries.txt``). So the file is opened without following a
link, and served only if its sha256 is the one the index recorded; anything else is refused until the document
is ingested again, which decides its groups anew.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from rag.errors import RagError

#: Linux says ELOOP when O_NOFOLLOW meets a link; FreeBSD says EMLINK.
_IS_A_LINK = {errno.ELOOP, errno.EMLINK}


def changed(path: str) -> RagError:
    return RagError(f"{path} changed since it was indexed; ingest it again, then download it")


def read_indexed(path: str, sha256: str) -> bytes:
    """The file at ``path`` if its bytes hash to ``sha256``; RagError (saying what to do) otherwise."""
    # O_NONBLOCK: a FIFO swapped in must not hang the server; it is refused below as not a regular file.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in _IS_A_LINK:
            raise changed(path) from None
        raise RagError(f"{path} is in the index but cannot be read any more ({exc.strerror}); "
                       "ingest its folder again to update the index") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise changed(path)
        data = f.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise changed(path)
    return data

"""Folders that hold documents' text, questions and answers: the data dir (the embedded store, the
conversations, the users file, the audit log) and the uploads. Other accounts on the machine count as
attackers (README, "What we defend against"): under the usual umask 022 the store's files came out 0644 in
0755 folders, so any local account could read every restricted document's text from the segment files."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def private_dir(path: Path) -> Path:
    """``path`` created as 0700, or, if it exists, with others' access removed (``chmod o-rwx``). The group's
    bits stay as they are: an operator who opened the folder to a group meant it; the owner's too."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        # Never a shared folder such as /tmp (sticky) or another account's: closing it would break the machine.
        if mode & stat.S_ISVTX or st.st_uid != os.geteuid():
            log.warning("%s is open to every account on this machine (mode %o) and is not this account's own "
                        "folder: keep the data in a folder of its own (RAG_DATA_DIR, RAG_UPLOADS_DIR)", path, mode)
            return path
        try:
            os.chmod(path, mode & ~0o007)
        except OSError as exc:
            log.warning("%s is open to every account on this machine (mode %o) and cannot be changed here (%s): "
                        "run `chmod o-rwx %s`", path, mode, exc.strerror, path)
        else:
            log.warning("%s was open to every account on this machine (mode %o); others' access is removed, as "
                        "the documents' text is stored there", path, mode)
    return path

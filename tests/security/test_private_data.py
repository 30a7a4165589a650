"""Other accounts on the machine are attackers (README, "What we defend against"). Under the usual umask 022 the
embedded store's files came out 0644 in 0755 folders, so any local account could read a restricted document's
text straight from the store's segment files, whatever the permissions said. The attack runs as `nobody`."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

SECRET = "ZEBRA-HELIOS-7731"
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reading as another account needs root to become it")


@pytest.fixture
def open_parent():
    """A folder every account may enter, as a home or /srv folder is (pytest's own temp folders are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="rag-private-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), user=NOBODY, capture_output=True, text=True, timeout=60)


@pytest.mark.attack(7, "reads a restricted document's text straight from the store's files with another account")
def test_another_account_cannot_read_restricted_text_from_the_store(open_parent, embedder):
    from ingest import ingest
    from rag.settings import Settings

    docs = open_parent / "docs"
    docs.mkdir()
    (docs / "budget.md").write_text(f"# Budget 2025\n\nThe acquisition codename is {SECRET}.\n")
    settings = Settings(data_dir=open_parent / "data")
    report = ingest([docs], settings, groups=["finance"], embedder=embedder)
    assert report.added == 1
    found = _as_nobody("grep", "-r", "-a", "-l", SECRET, str(settings.data_dir))
    assert SECRET not in found.stdout and not found.stdout, f"readable by nobody: {found.stdout}"
    assert "Permission denied" in found.stderr
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700


def test_an_open_data_dir_is_closed_to_others_but_a_shared_folder_is_left_alone(open_parent, caplog):
    from rag.index.store import open_store
    from rag.settings import Settings

    data = open_parent / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o775)  # the group's bits are the operator's choice and stay
    with caplog.at_level(logging.WARNING, logger="rag.security.files"):
        open_store(Settings(data_dir=data)).close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o770 and "others' access is removed" in caplog.text

    shared = open_parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: closing it would break every other account's use of it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rag.security.files"):
        open_store(Settings(data_dir=shared)).close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and "folder of its own" in caplog.text

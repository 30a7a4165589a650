"""Ingestion opens no network connection beyond loopback, and works with no network at all.

The child process starts with none of the opt-out variables set (the project must set them itself), runs
`rag ingest` over every sample format (unstructured included), and records every socket connect and DNS
lookup through a Python audit hook. Where strace is installed, native code (Rust, C++) is traced too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HOOK = r"""
import json, socket, sys
calls = []
def _loopback(host):
    return host is None or host in ("localhost", "::1", "") or str(host).startswith("127.")
def hook(event, args):
    if event == "socket.connect":
        sock, addr = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(addr[0]):
            calls.append(f"connect {addr!r}")
    elif event == "socket.getaddrinfo" and not _loopback(args[0]):
        calls.append(f"dns {args[0]!r}")
sys.addaudithook(hook)
out_file = sys.argv.pop(1)
try:
    from rag.cli import app
    app()
finally:
    with open(out_file, "w") as f:
        json.dump(calls, f)
"""

OPT_OUTS = ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "UNSTRUCTURED_DISABLE_NOTICE", "ORT_DISABLE_TELEMETRY",
            "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")


def test_ingest_opens_no_network_connection(docs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in OPT_OUTS}
    env["RAG_DATA_DIR"] = str(tmp_path / "data")
    calls_file = tmp_path / "calls.json"
    cmd = [sys.executable, "-c", HOOK, str(calls_file), "ingest", str(docs), "--json"]
    trace = tmp_path / "strace.txt"
    if shutil.which("strace"):
        cmd = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace)] + cmd
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["added"] == 5
    assert json.loads(calls_file.read_text()) == []
    if trace.exists():
        inet = [ln for ln in trace.read_text().splitlines()
                if ("AF_INET" in ln or "AF_INET6" in ln) and "127.0.0.1" not in ln and "::1" not in ln]
        assert inet == []


@pytest.mark.skipif(not shutil.which("unshare") or os.geteuid() != 0, reason="needs unshare and root")
def test_ingest_works_without_any_network(docs, tmp_path):
    """In a network namespace of its own (only a downed loopback), ingestion must still succeed."""
    env = {k: v for k, v in os.environ.items() if k not in OPT_OUTS}
    env["RAG_DATA_DIR"] = str(tmp_path / "data")
    rag = os.path.join(os.path.dirname(sys.executable), "rag")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("network namespaces are not available here")
    res = subprocess.run(["unshare", "-n", rag, "ingest", str(docs), "--json"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["added"] == 5

"""Hostile uploads, measured: builds the bad-input corpus (tests/data/bad_inputs.py), runs `rag ingest` on it, and
prints the wall time, the peak RSS of the main process and of the parse worker(s), and each file's outcome.

    .venv/bin/python bench/bad_inputs.py              # a table on stdout
    .venv/bin/python bench/bad_inputs.py --json
    RAG_PARSE_MAX_MEMORY_MB=1024 .venv/bin/python bench/bad_inputs.py   # any RAG_* setting applies

Memory is sampled with psutil every 20 ms over `rag ingest` and all its descendants (the fork server, the parse
workers, tesseract), so a short spike can be missed; the main process's own peak comes from wait4 (exact).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _corpus_module():
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "tests" / "data" / "bad_inputs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _role(p: psutil.Process, main_pid: int) -> str:
    try:
        if "tesseract" in p.name():
            return "tesseract"
        if p.ppid() != main_pid:  # forked by the fork server (whose command line the workers keep)
            return "parse worker"
        cmd = " ".join(p.cmdline())
        return "fork server" if "forkserver" in cmd else "resource tracker" if "resource_tracker" in cmd else "other"
    except psutil.Error:
        return "gone"


def _sample(main_pid: int, peaks: dict[str, float], stop: threading.Event) -> None:
    try:
        main = psutil.Process(main_pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            kids = main.children(recursive=True)
        except psutil.Error:
            return
        for k in kids:
            try:
                rss = k.memory_info().rss / 2**20
            except psutil.Error:
                continue
            role = _role(k, main_pid)
            peaks[role] = max(peaks.get(role, 0.0), rss)
        time.sleep(0.02)


def run(out: Path) -> dict:
    corpus = out / "corpus"
    t = time.perf_counter()
    expected = _corpus_module().build(corpus)
    build_s = time.perf_counter() - t
    env = {**os.environ, "RAG_DATA_DIR": str(out / "data")}
    # Unmeasured first run: a fresh data dir exports the embedding model (once, ~10 s, ~1 GB), which is not ingestion.
    (out / "warm").mkdir()
    (out / "warm" / "warm.txt").write_text("Warm-up.")
    subprocess.run([str(Path(sys.executable).parent / "rag"), "ingest", str(out / "warm")], env=env,
                   capture_output=True, check=True)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    started = time.perf_counter()
    with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "ingest", str(corpus), "--json"],
                                stdout=so, stderr=se, env=env)
    sampler = threading.Thread(target=_sample, args=(proc.pid, peaks, stop), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    report = json.loads((out / "stdout").read_text() or "{}")
    return {
        "files": len(expected), "build_s": round(build_s, 1), "wall_s": round(wall, 1),
        "exit_code": os.waitstatus_to_exitcode(status), "added": report.get("added"),
        "main_peak_rss_mb": round(usage.ru_maxrss / 1024),
        "children_peak_rss_mb": {k: round(v) for k, v in sorted(peaks.items())},
        "outcomes": {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in report.get("failed", [])
                     + report.get("skipped", [])},
        "stderr_tail": (out / "stderr").read_text(errors="replace")[-500:] if not report else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (corpus, store, output)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rag-bad-inputs-"))
    try:
        r = run(tmp)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['files']} files (built in {r['build_s']} s): `rag ingest` took {r['wall_s']} s, exit code "
          f"{r['exit_code']}, {r['added']} indexed")
    print(f"peak RSS: main process {r['main_peak_rss_mb']} MB; "
          + ", ".join(f"{k} {v} MB" for k, v in r["children_peak_rss_mb"].items()))
    for name, reason in r["outcomes"].items():
        print(f"  {name}: {reason}")
    if r["stderr_tail"]:
        print(r["stderr_tail"])


if __name__ == "__main__":
    main()

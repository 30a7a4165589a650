"""What CPU this is, for the choices that depend on it: the embedding backend's int8 kernels (rag.index) and the
demo engines' dtype and build cache (rag.llm.local). It lives outside both so the core does not import the demo
engines to read one file."""

from __future__ import annotations

from pathlib import Path


def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    model, flags = "", frozenset[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags

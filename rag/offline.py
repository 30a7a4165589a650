"""Keeps third-party libraries from phoning home or downloading models at run time.

Every byte stays on the company's machines, and production hosts often have no internet at all, so a
library that pings a vendor or fetches a model on first use is a bug for us. Verified offenders:

- ``unstructured`` sends a telemetry ping on import and on each partition call, and downloads a spaCy model
  (``en_core_web_sm``, from GitHub) on its first partition call. Offline, ``partition_html/md/docx/text``
  raise and ``partition_pdf(strategy="fast")`` silently returns ``[]``.
- onnxruntime has telemetry; huggingface_hub looks models up online unless told it is offline.

Call :func:`apply` before importing any of them. Values are set with ``setdefault`` so an operator can
still opt back in explicitly (e.g. ``HF_HUB_OFFLINE=0`` to pull a hub model once).
"""

from __future__ import annotations

import os
import threading

_ENV = {
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
}

_lock = threading.Lock()
_unstructured_patched = False


def apply() -> None:
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)


def patch_unstructured() -> None:
    """Give unstructured a local spaCy pipeline instead of the one it would download.

    unstructured uses spaCy for sentence splitting and part-of-speech heuristics
    (``is_possible_narrative_text``). ``spacy.blank("en")`` plus a rule-based sentencizer covers the
    sentence splitting; without POS tags the narrative/title heuristic leans to "title" for
    untagged prose, which only matters for element categories of untagged text, and we take headings
    from document structure (HTML/Markdown/DOCX tags, PDF outline) instead. The download function is
    replaced by one that raises, so no code path can reach the network.
    """
    global _unstructured_patched
    with _lock:
        if _unstructured_patched:
            return
        apply()
        import spacy
        from unstructured.nlp import tokenize

        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")

        def _local_nlp() -> spacy.language.Language:
            return nlp

        def _no_download() -> None:
            raise RuntimeError("onprem-rag never downloads spaCy models at run time")

        tokenize._get_nlp = _local_nlp  # type: ignore[assignment]
        tokenize._install_spacy_model = _no_download
        _unstructured_patched = True

"""The int8 model run by onnxruntime alone (rag/index/onnx_model.py) gives sentence-transformers' own vectors and
token counts, and a folder it does not know how to run goes to sentence-transformers."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np

from conftest import SAMPLE_DOCS
from rag.index import onnx_model
from rag.index.embeddings import SentenceTransformerEmbedder, onnx_session_options
from rag.settings import Settings


def _texts() -> list[str]:
    texts = [p for f in sorted(SAMPLE_DOCS.glob("*.md")) + sorted(SAMPLE_DOCS.glob("*.txt"))
             for p in f.read_text().split("\n\n") if p.strip()]
    words = " ".join(texts).split()
    rng = random.Random(7)
    # Lengths from one word to past the model's 256 tokens (truncated), in batches of mixed lengths.
    texts += [" ".join(rng.choices(words, k=rng.randint(1, 400))) for _ in range(70)]
    return texts + ["  spaces around  ", "tab\tand\nnewline", "ÄÖÜ ß café naïve 東京 🙂", "x", "word " * 600,
                    "[CLS] [SEP] [PAD] [MASK]"]


def test_the_lean_model_gives_sentence_transformers_vectors_and_tokens():
    models = Settings().models_dir
    lean = SentenceTransformerEmbedder(backend="onnx-int8", models_dir=models)
    full = SentenceTransformerEmbedder(backend="onnx-int8", models_dir=models, full=True)
    assert isinstance(lean._model, onnx_model.OnnxSentenceModel)
    assert not isinstance(full._model, onnx_model.OnnxSentenceModel)
    texts = _texts()
    for batch_size in (32, 5):
        lean.batch_size = full.batch_size = batch_size
        a, b = lean.embed_documents(texts), full.embed_documents(texts)
        assert a.shape == b.shape == (len(texts), 384) and a.dtype == np.float32
        assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
    for q in ("How many vacation days do employees get?", " spaces ", "東京"):
        assert np.abs(lean.embed_query(q) - full.embed_query(q)).max() < 1e-5
    assert (lean.dimension, lean.max_tokens) == (full.dimension, full.max_tokens)
    for t in texts:
        assert lean.token_offsets(t) == full.token_offsets(t)
        assert lean.count_tokens(t) == full.count_tokens(t)


def test_a_folder_it_does_not_know_goes_to_sentence_transformers(tmp_path):
    models = Settings().models_dir
    lean = SentenceTransformerEmbedder(backend="onnx-int8", models_dir=models)
    folder, file = lean.onnx_model or ("", "")
    other = tmp_path / "cls-pooled"
    shutil.copytree(folder, other)
    config = other / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pooling_mode": "cls"}))
    options = onnx_session_options(None)
    assert onnx_model.load(Path(folder), file, options) is not None
    assert onnx_model.load(other, file, options) is None
    (other / "modules.json").write_text("not json")
    assert onnx_model.load(other, file, options) is None

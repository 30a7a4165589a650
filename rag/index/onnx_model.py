"""The exported int8 embedding model, run with onnxruntime and tokenizers alone.

sentence-transformers exports and quantizes the model once (rag/index/embeddings.py); running that export needs
only its graph, its tokenizer and mean pooling. Loading it through sentence-transformers imports transformers,
scikit-learn, scipy and torch first: 12-14 s on a 2-core AVX2 machine before every `rag search`, `rag ask` or UI
start, against about half a second for onnxruntime and tokenizers. The vectors are sentence-transformers' own:
the same tokenizer file, the same truncation, the same batches (its length sort, its padding), the same pooling
(tests/integration/test_onnx_model.py compares the two). A folder laid out otherwise (another pooling, a prompt
left out of the pooling, a dense layer) is not handled here: ``load`` returns None and the caller goes through
sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
_POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
_NORMALIZE = "sentence_transformers.sentence_transformer.modules.normalize.Normalize"


class Tokenizer:
    """The subset of a transformers fast tokenizer that TokenCounter and the embedder use, over tokenizers'."""

    def __init__(self, backend: Any, model_max_length: int) -> None:
        self.backend = backend
        self.model_max_length = model_max_length

    def __call__(self, text: str, *, add_special_tokens: bool = True, return_offsets_mapping: bool = False,
                 verbose: bool = False) -> dict[str, list]:
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, list] = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return int(self.backend.num_special_tokens_to_add(pair))

    def __deepcopy__(self, memo: dict) -> Tokenizer:
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_str(self.backend.to_str())
        backend.no_truncation()
        backend.no_padding()
        return Tokenizer(backend, self.model_max_length)


class OnnxSentenceModel:
    """What SentenceTransformerEmbedder calls on a model (``encode``, ``tokenizer``, ``max_seq_length``,
    ``get_embedding_dimension``) for a mean-pooled transformer exported to ONNX."""

    def __init__(self, folder: Path, onnx_file: str, session_options: Any, *, normalize: bool,
                 max_seq_length: int, dimension: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer as Backend

        self.session = ort.InferenceSession(str(folder / onnx_file), sess_options=session_options,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        # tokenizer.json keeps the truncation and padding it was saved with (128, fixed, for MiniLM); transformers
        # sets its own on every call, and so do we: none for counting, sentence-transformers' for batches
        # ("longest" padding, "longest_first" truncation at the max sequence length).
        counting = Backend.from_file(str(folder / "tokenizer.json"))
        counting.no_truncation()
        counting.no_padding()
        self.tokenizer = Tokenizer(counting, max_seq_length)
        self._batch = Backend.from_file(str(folder / "tokenizer.json"))
        self._batch.enable_truncation(max_length=max_seq_length, strategy="longest_first")
        config = _read(folder / "tokenizer_config.json")
        pad_token = (_token(config.get("pad_token")) or _token(_read(folder / "special_tokens_map.json")
                                                               .get("pad_token")) or "[PAD]")
        pad_id = self._batch.token_to_id(pad_token)
        self._batch.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token,
                                   pad_type_id=int(config.get("pad_token_type_id") or 0))
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self._dimension = dimension

    def get_embedding_dimension(self) -> int:
        return self._dimension

    def encode(self, sentences: Sequence[str], *, batch_size: int = 32, prompt: str | None = None,
               normalize_embeddings: bool = False, convert_to_numpy: bool = True,
               show_progress_bar: bool = False) -> np.ndarray:
        texts = [(prompt or "") + s for s in sentences]
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        # sentence-transformers' order: longest (in characters) first, so a batch holds similar lengths. The
        # int8 model quantizes each batch's activations as a whole, so the batches must be the same too.
        order = np.argsort([-len(t) for t in texts])
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            encs = self._batch.encode_batch([texts[i] for i in idx])
            ids = np.asarray([e.ids for e in encs], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.asarray([e.type_ids for e in encs], dtype=np.int64)
            tokens = self.session.run(None, feed)[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (tokens * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            if self.normalize or normalize_embeddings:
                pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
        return out


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def load(folder: Path, onnx_file: str, session_options: Any) -> OnnxSentenceModel | None:
    """The model in ``folder`` (a sentence-transformers export), or None where it is not a plain mean-pooled
    transformer with a fast tokenizer, which only sentence-transformers then knows how to run."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    kinds = [m.get("type") for m in modules] if isinstance(modules, list) else []
    if kinds not in ([_TRANSFORMER, _POOLING], [_TRANSFORMER, _POOLING, _NORMALIZE]) or modules[0].get("path"):
        return None
    pooling = _read(folder / modules[1]["path"] / "config.json")
    if pooling.get("pooling_mode") != "mean" or not pooling.get("include_prompt", True):
        return None
    bert = _read(folder / "sentence_bert_config.json")
    if bert.get("do_lower_case") or not (folder / "tokenizer.json").exists():
        return None
    length = bert.get("max_seq_length") or _read(folder / "tokenizer_config.json").get("model_max_length")
    dimension = pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension")
    if not isinstance(length, int) or length > 100_000 or not isinstance(dimension, int):
        return None
    return OnnxSentenceModel(folder, onnx_file, session_options, normalize=len(kinds) == 3,
                             max_seq_length=length, dimension=dimension)

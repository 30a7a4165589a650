"""The catalogue `rag sizing` computes with: precisions, built-in models and GPUs, as types loaded from the data
file beside this module (catalogue.toml, shipped as package data), so that a new card or model is a data edit."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from rag.errors import RagError


class SizingError(RagError):
    """Unknown model or precision, unreadable config.json, impossible numbers: the message says what to pass."""


@dataclass(frozen=True)
class Precision:
    name: str
    bytes: float  # per parameter, as the rule of thumb counts it
    effective: float  # per quantized parameter, with the scales a real checkpoint stores
    vllm_flags: tuple[str, ...] = ()
    checkpoint: str = ""  # what vLLM must be given when it cannot quantize on load
    ollama_quant: str = "q4_K_M"


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # real parameter count (the safetensors total on the Hub), vision encoder included
    nominal_params: float  # the size in the name: what the rule of thumb multiplies
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    max_context: int
    hidden: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    experts: int = 1
    hf_repo: str | None = None  # what `vllm serve` loads; a config.json's folder for local models
    ollama: str | None = None  # Ollama tag stem, "-q4_K_M"/"-q8_0"/"-fp16" appended
    aliases: tuple[str, ...] = ()
    source: str = "built-in"
    checkpoint_dtype: str | None = None  # a local checkpoint already quantized: vLLM reads the method itself
    notes: tuple[str, ...] = ()

    @property
    def embedding(self) -> float:
        """Parameters of the token embeddings and LM head, which quantized checkpoints keep at 16 bit."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache of one token at one byte per value; multiply by the KV precision's bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # as marketed; drivers report slightly more bytes, so the fit errs on the safe side
    nvlink: bool = True  # without it tensor parallelism all-reduces over PCIe: works, but slowly
    fp8: bool = True  # FP8 tensor cores; without them vLLM runs FP8 weights weight-only (Marlin)


def _load() -> dict[str, Any]:
    return tomllib.loads(files(__package__).joinpath("catalogue.toml").read_text(encoding="utf-8"))


def _model(entry: dict[str, Any], notes: dict[str, list[str]]) -> Model:
    return Model(**entry | {"aliases": tuple(entry.get("aliases", ())),
                            "notes": tuple(notes[entry["notes"]]) if "notes" in entry else ()})


_DATA = _load()
PRECISIONS: dict[str, Precision] = {
    name: Precision(name, **p | {"vllm_flags": tuple(p.get("vllm_flags", ()))})
    for name, p in _DATA["precisions"].items()}
_PRECISION_ALIASES: dict[str, str] = _DATA["precision_aliases"]
KV_PRECISIONS: dict[str, int] = _DATA["kv_precisions"]
OLLAMA_BYTES: dict[str, float] = _DATA["ollama_bytes"]
MODELS: tuple[Model, ...] = tuple(_model(m, _DATA["notes"]) for m in _DATA["models"])
GPUS: tuple[GPU, ...] = tuple(GPU(**g) for g in _DATA["gpus"])
del _DATA


def precision(name: str) -> Precision:
    key = name.strip().lower()
    key = _PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise SizingError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[key]


def kv_bytes(name: str) -> int:
    key = name.strip().lower()
    if key not in KV_PRECISIONS:
        raise SizingError(f"unknown KV cache precision {name!r}: use fp16 (the default) or fp8")
    return KV_PRECISIONS[key]


def model_key(name: str) -> str:
    """Spellings people use for one model ("meta-llama/Llama-3.1-70B-Instruct", "llama3.1 70b") to one key."""
    s = name.strip().lower().rsplit("/", 1)[-1]
    s = re.sub(r"^meta-", "", s)
    s = re.sub(r"[-_ ]?(instruct|chat|it)$", "", s)
    return re.sub(r"[^a-z0-9.]", "", s)


BY_KEY = {model_key(k): m for m in MODELS for k in (m.name, *m.aliases)}

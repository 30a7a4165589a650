"""How many GPUs a model needs: weights, KV cache, headroom, and which cards of a catalogue hold it.

The memory model (all sizes in decimal GB, 1 GB = 1e9 bytes, as the rule of thumb "parameters x 2 bytes + 20 %"
counts them):

    weights  = quantized parameters x bytes per parameter + embeddings (kept at 16 bit) x 2
    headroom = 20 % of the weights      (activations, CUDA graphs, sampler and communication buffers)
    kv cache = 2 (K and V) x layers x KV heads x head dim x KV bytes x tokens x sequences
    total    = weights + headroom + kv cache

With no KV cache this is the rule of thumb exactly; the rule of thumb itself (nominal size x bytes x 1.2) is
reported as its own figure, because it uses the size in the model's name (11B, 90B) while ``weights`` uses the
real parameter count.

A layout of N GPUs fits when each GPU's share is within vLLM's budget, ``--gpu-memory-utilization`` x card memory
(vLLM pre-allocates that fraction, puts the weights and activations in it and gives the rest to the KV cache).
Weights and headroom split evenly over tensor-parallel ranks and pipeline stages; the KV cache splits by KV head
over tensor-parallel ranks, except that with fewer KV heads than ranks vLLM replicates them (each rank keeps one),
and by layer over pipeline stages.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rag.errors import RagError

GB = 1e9
HEADROOM = 0.20  # the rule of thumb's "+ 20 %", applied to the weights
DEFAULT_CONTEXT = 8192  # enough for a RAG prompt with several passages; long contexts are asked for explicitly
DEFAULT_UTILIZATION = 0.90  # vLLM's default --gpu-memory-utilization
GPUS_PER_NODE = 8  # tensor parallelism stays inside one NVLink domain; more GPUs means pipeline stages
MAX_NODES = 4  # beyond 32 GPUs the answer is "quantize or buy bigger cards", not a longer pipeline
TP_DEGREES = (1, 2, 4, 8)


class SizingError(RagError):
    """Unknown model or precision, unreadable config.json, impossible numbers: the message says what to pass."""


# --- precisions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    name: str
    bytes: float  # per parameter, as the rule of thumb counts it
    effective: float  # per quantized parameter, with the scales a real checkpoint stores
    vllm_flags: tuple[str, ...] = ()
    checkpoint: str = ""  # what vLLM must be given when it cannot quantize on load
    ollama_quant: str = "q4_K_M"


# AWQ/GPTQ store, per group of 128 weights, an fp16 scale and a 4-bit zero point: +0.0195 byte per parameter.
# FP8/INT8 scales are per channel or per tensor: negligible. Embeddings and the LM head stay at 16 bit in
# vLLM's quantized checkpoints (that is why Llama-3.1-8B-Instruct-FP8 is 9.1 GB, not 8.0), see Model.embedding.
_INT4_EFFECTIVE = 0.5 + (2 + 0.5) / 128
PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", 2, 2, ollama_quant="fp16"),
    "fp16": Precision("fp16", 2, 2, ("--dtype", "float16"), ollama_quant="fp16"),
    "fp8": Precision("fp8", 1, 1, ("--quantization", "fp8"), ollama_quant="q8_0"),
    "int8": Precision("int8", 1, 1, checkpoint="an INT8 (W8A8) checkpoint of this model", ollama_quant="q8_0"),
    "int4": Precision("int4", 0.5, _INT4_EFFECTIVE, checkpoint="an AWQ or GPTQ 4-bit checkpoint of this model"),
    "awq": Precision("awq", 0.5, _INT4_EFFECTIVE, ("--quantization", "awq"),
                     checkpoint="an AWQ checkpoint of this model"),
    "gptq": Precision("gptq", 0.5, _INT4_EFFECTIVE, ("--quantization", "gptq"),
                      checkpoint="a GPTQ checkpoint of this model"),
}
_PRECISION_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float8": "fp8", "fp8_e4m3": "fp8",
                      "w8a8": "int8", "w4a16": "int4", "q4": "int4", "4bit": "int4", "8bit": "int8"}
KV_PRECISIONS = {"fp16": 2, "bf16": 2, "auto": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}

# GGUF bits per weight as Ollama ships them: Q4_K_M mixes 4- and 6-bit blocks (4.85 on average; llama3.1:8b is
# 4.9 GB), Q8_0 is 8 bits + one fp16 scale per 32 weights.
OLLAMA_BYTES = {"fp16": 2.0, "q8_0": 8.5 / 8, "q4_K_M": 4.85 / 8}


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


# --- models -------------------------------------------------------------------------------------------------

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


_MLLAMA = ("Llama 3.2 Vision (Mllama) needs vLLM 0.10.x or older: vLLM removed its encoder-decoder support "
           "in September 2025 (vllm-project/vllm#24907).",
           "KV cache counts all text-model layers; the cross-attention layers actually cache the image's "
           "tokens instead of the text's, so this errs on the safe side.")
_GEMMA2 = ("Half of Gemma 2's layers use a 4,096-token sliding window; the KV cache counts all layers at full "
           "context (vLLM's hybrid allocator may need less).",)
_QWEN_CTX = ("Qwen2.5's config.json says 32,768 tokens; 131,072 needs YaRN rope scaling added to it.",)

# Architecture from each model's config.json (text_config for the vision models); params are the Hub's
# safetensors totals. tests/test_sizing.py checks that the architecture reproduces params within 1 % for the
# text models, which catches a wrong layer count or MLP width. The vision totals (10.67B, 88.6B) include the
# ~0.9B vision encoder, which the architecture fields do not describe.
MODELS: tuple[Model, ...] = (
    Model("Llama-3.2-1B", 1.236e9, 1e9, 16, 32, 8, 64, 131072, 2048, 8192, 128256, True,
          hf_repo="meta-llama/Llama-3.2-1B-Instruct", ollama="llama3.2:1b-instruct"),
    Model("Llama-3.2-3B", 3.213e9, 3e9, 28, 24, 8, 128, 131072, 3072, 8192, 128256, True,
          hf_repo="meta-llama/Llama-3.2-3B-Instruct", ollama="llama3.2:3b-instruct"),
    Model("Llama-3.1-8B", 8.030e9, 8e9, 32, 32, 8, 128, 131072, 4096, 14336, 128256,
          hf_repo="meta-llama/Llama-3.1-8B-Instruct", ollama="llama3.1:8b-instruct"),
    # 40 text layers = 32 self-attention + 8 cross-attention (every fifth, from layer 3).
    Model("Llama-3.2-11B-Vision", 10.67e9, 11e9, 40, 32, 8, 128, 131072, 4096, 14336, 128256,
          hf_repo="meta-llama/Llama-3.2-11B-Vision-Instruct", ollama="llama3.2-vision:11b-instruct",
          aliases=("llama-3.2-11b",), notes=_MLLAMA),
    Model("Llama-3.1-70B", 70.55e9, 70e9, 80, 64, 8, 128, 131072, 8192, 28672, 128256,
          hf_repo="meta-llama/Llama-3.1-70B-Instruct", ollama="llama3.1:70b-instruct"),
    Model("Llama-3.3-70B", 70.55e9, 70e9, 80, 64, 8, 128, 131072, 8192, 28672, 128256,
          hf_repo="meta-llama/Llama-3.3-70B-Instruct", ollama="llama3.3:70b-instruct"),
    # 100 text layers = 80 self-attention + 20 cross-attention.
    Model("Llama-3.2-90B-Vision", 88.6e9, 90e9, 100, 64, 8, 128, 131072, 8192, 28672, 128256,
          hf_repo="meta-llama/Llama-3.2-90B-Vision-Instruct", ollama="llama3.2-vision:90b-instruct",
          aliases=("llama-3.2-90b",), notes=_MLLAMA),
    Model("Llama-3.1-405B", 405.85e9, 405e9, 126, 128, 8, 128, 131072, 16384, 53248, 128256,
          hf_repo="meta-llama/Llama-3.1-405B-Instruct", ollama="llama3.1:405b-instruct"),
    Model("Mistral-7B-v0.3", 7.248e9, 7e9, 32, 32, 8, 128, 32768, 4096, 14336, 32768,
          hf_repo="mistralai/Mistral-7B-Instruct-v0.3", ollama="mistral:7b-instruct-v0.3",
          aliases=("mistral-7b",)),
    # All eight experts are loaded although two run per token: memory follows 46.7B, speed ~12.9B.
    Model("Mixtral-8x7B", 46.70e9, 46.7e9, 32, 32, 8, 128, 32768, 4096, 14336, 32000, experts=8,
          hf_repo="mistralai/Mixtral-8x7B-Instruct-v0.1", ollama="mixtral:8x7b-instruct-v0.1",
          aliases=("mixtral-8x7b-v0.1",)),
    Model("Qwen2.5-7B", 7.616e9, 7e9, 28, 28, 4, 128, 32768, 3584, 18944, 152064,
          hf_repo="Qwen/Qwen2.5-7B-Instruct", ollama="qwen2.5:7b-instruct", notes=_QWEN_CTX),
    Model("Qwen2.5-14B", 14.77e9, 14e9, 48, 40, 8, 128, 32768, 5120, 13824, 152064,
          hf_repo="Qwen/Qwen2.5-14B-Instruct", ollama="qwen2.5:14b-instruct", notes=_QWEN_CTX),
    Model("Qwen2.5-32B", 32.76e9, 32e9, 64, 40, 8, 128, 32768, 5120, 27648, 152064,
          hf_repo="Qwen/Qwen2.5-32B-Instruct", ollama="qwen2.5:32b-instruct", notes=_QWEN_CTX),
    Model("Qwen2.5-72B", 72.71e9, 72e9, 80, 64, 8, 128, 32768, 8192, 29568, 152064,
          hf_repo="Qwen/Qwen2.5-72B-Instruct", ollama="qwen2.5:72b-instruct", notes=_QWEN_CTX),
    Model("Gemma-2-9B", 9.242e9, 9e9, 42, 16, 8, 256, 8192, 3584, 14336, 256000, True,
          hf_repo="google/gemma-2-9b-it", ollama="gemma2:9b-instruct", notes=_GEMMA2),
    Model("Gemma-2-27B", 27.23e9, 27e9, 46, 32, 16, 128, 8192, 4608, 36864, 256000, True,
          hf_repo="google/gemma-2-27b-it", ollama="gemma2:27b-instruct", notes=_GEMMA2),
)


def _key(name: str) -> str:
    """Spellings people use for one model ("meta-llama/Llama-3.1-70B-Instruct", "llama3.1 70b") to one key."""
    s = name.strip().lower().rsplit("/", 1)[-1]
    s = re.sub(r"^meta-", "", s)
    s = re.sub(r"[-_ ]?(instruct|chat|it)$", "", s)
    return re.sub(r"[^a-z0-9.]", "", s)


_BY_KEY = {_key(k): m for m in MODELS for k in (m.name, *m.aliases)}


def find_model(name: str) -> Model:
    """A built-in model by (loose) name, or the model a config.json / model folder describes."""
    path = Path(name).expanduser()
    if path.is_dir() or path.suffix == ".json" or path.exists():
        return model_from_config(path)
    if (m := _BY_KEY.get(_key(name))) is not None:
        return m
    close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(_BY_KEY[c].name for c in close)}?" if close else ""
    raise SizingError(f"unknown model {name!r}.{hint} Built-in models: {', '.join(m.name for m in MODELS)}. "
                      "For any other model pass the path of its Hugging Face config.json (or its folder), "
                      "and --params if the estimate from the architecture is not enough.")


# --- config.json --------------------------------------------------------------------------------------------

# Gated MLPs (SwiGLU/GeGLU: gate, up and down projections) are the norm; these model types have two matrices.
_UNGATED = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode", "mpt"}
# Model types whose config class ties the embeddings when config.json does not say (PretrainedConfig's default).
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text", "qwen2", "phi3"}


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs (Mllama, Llava, Gemma 3, ...) nest the language model; its numbers size the KV cache.
    for key in ("text_config", "language_config", "llm_config"):
        if isinstance(cfg.get(key), dict):
            return cfg[key]
    return cfg


def estimate_params(text: dict[str, Any]) -> float:
    """Parameters of a decoder-only transformer from its config: embeddings, attention, MLP (or experts), norms.

    Good to ~1 % for Llama/Mistral/Qwen/Gemma-style models; a vision or audio encoder is not counted."""
    hidden = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    inter = int(text.get("intermediate_size") or 4 * hidden)
    vocab = int(text["vocab_size"])
    model_type = str(text.get("model_type", ""))
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden
    if text.get("attention_bias") or model_type.startswith("qwen2"):
        attention += q + 2 * kv
    experts = int(text.get("num_local_experts") or text.get("num_experts") or 1)
    expert_inter = int(text.get("moe_intermediate_size") or inter)
    matrices = 2 if model_type in _UNGATED else 3
    if experts > 1:
        mlp = experts * matrices * hidden * expert_inter + hidden * experts  # + router
        shared = int(text.get("shared_expert_intermediate_size") or 0)
        mlp += matrices * hidden * shared
    else:
        mlp = matrices * hidden * inter
    per_layer = attention + mlp + 2 * hidden  # two norms
    tied = text.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
    embeddings = vocab * hidden * (1 if tied else 2)
    return float(layers * per_layer + embeddings + hidden)


def model_from_config(path: Path) -> Model:
    """A Model from a Hugging Face config.json, or a model folder holding one."""
    file = path / "config.json" if path.is_dir() else path
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SizingError(f"{file} does not exist: pass a Hugging Face config.json or the model folder holding "
                          "it, or a built-in model name") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SizingError(f"cannot read {file} as JSON ({exc}): pass the model's Hugging Face config.json") from None
    if not isinstance(cfg, dict):
        raise SizingError(f"{file} is not a Hugging Face config.json (no JSON object)")
    text = _text_config(cfg)
    missing = [k for k in ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
               if not text.get(k)]
    if missing:
        raise SizingError(f"{file} has no {', '.join(missing)}: it is not a decoder-only transformer config "
                          "this calculator knows; pass a built-in model name instead")
    hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    params = estimate_params(text)
    notes: list[str] = [f"Parameters estimated from the architecture ({params / 1e9:.2f}B); pass --params to "
                        "use the exact count."]
    if text is not cfg and any(k in cfg for k in ("vision_config", "audio_config")):
        notes.append("The vision/audio encoder is not in the estimate (typically 0.4-1B parameters): "
                     "pass --params for the exact total.")
    model_type = str(text.get("model_type", ""))
    return Model(
        name=str(cfg.get("_name_or_path") or file.parent.name or file.stem),
        params=params, nominal_params=params,
        layers=int(text["num_hidden_layers"]), heads=heads, kv_heads=kv_heads,
        head_dim=int(text.get("head_dim") or hidden // heads),
        max_context=int(text.get("max_position_embeddings") or cfg.get("max_position_embeddings") or 0),
        hidden=hidden, intermediate=int(text.get("intermediate_size") or 4 * hidden),
        vocab=int(text["vocab_size"]),
        tied_embeddings=bool(text.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)),
        experts=int(text.get("num_local_experts") or text.get("num_experts") or 1),
        hf_repo=str(file.parent.resolve()), source=str(file), checkpoint_dtype=_checkpoint_precision(cfg),
        notes=tuple(notes),
    )


def _checkpoint_precision(cfg: dict[str, Any]) -> str | None:
    """The precision a quantized checkpoint is stored in, from its config.json's quantization_config."""
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method, bits = str(q.get("quant_method", "")).lower(), q.get("bits")
    if method in ("awq", "gptq"):
        return method if bits in (None, 4) else ("int8" if bits == 8 else None)
    if method == "fp8":
        return "fp8"
    if method == "compressed-tensors":
        for group in (q.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            if w.get("num_bits") == 8:
                return "fp8" if w.get("type") == "float" else "int8"
            if w.get("num_bits") == 4:
                return "int4"
    return None


def parse_params(text: str) -> float:
    """"8B", "7.2e9", "405b", "350M" -> a parameter count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*", text.lower())
    if not m:
        raise SizingError(f"--params {text!r}: write a count such as 8B, 70B, 7.2e9 or 350M")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2)]
    if value < 1e6:
        raise SizingError(f"--params {text!r} is under a million parameters: write 8B or 8e9, not 8")
    return value


# --- GPUs ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # as marketed; drivers report slightly more bytes, so the fit errs on the safe side
    nvlink: bool = True  # without it tensor parallelism all-reduces over PCIe: works, but slowly
    fp8: bool = True  # FP8 tensor cores; without them vLLM runs FP8 weights weight-only (Marlin)


GPUS: tuple[GPU, ...] = (
    GPU("RTX 4090", 24, nvlink=False),
    GPU("L4", 24, nvlink=False),
    GPU("A100 40GB", 40, fp8=False),
    GPU("L40S", 48, nvlink=False),
    GPU("A100 80GB", 80, fp8=False),
    GPU("H100 80GB", 80),
    GPU("H200", 141),
    GPU("B200", 180),  # 180 GB per GPU in DGX/HGX B200 (1,440 GB per 8); first announced as 192 GB
    GPU("MI300X", 192),
)


def tp_degrees(heads: int, kv_heads: int) -> list[int]:
    """Tensor-parallel degrees vLLM accepts: they divide the attention heads, and the KV heads divide them or
    they divide the KV heads (then KV heads are replicated)."""
    return [tp for tp in TP_DEGREES
            if heads % tp == 0 and (kv_heads % tp == 0 or tp % kv_heads == 0)]


# --- the sizing ---------------------------------------------------------------------------------------------

@dataclass
class GpuFit:
    gpu: str
    memory_gb: float
    count: int
    tensor_parallel: int
    pipeline_parallel: int
    nodes: int
    per_gpu_gb: float  # this layout's need on each GPU
    budget_gb: float  # utilization x memory
    max_sequences: int  # sequences of the requested context the leftover KV budget holds (vLLM's "max concurrency")
    vllm_command: str


@dataclass
class OllamaPlan:
    tag: str
    command: str
    weights_gb: float
    kv_cache_gb: float
    total_gb: float
    one_gpu: list[str]  # cards that hold it alone
    split: list[dict[str, Any]]  # {"gpu", "count"}: layers spread over several cards of one machine


@dataclass
class Sizing:
    model: Model
    dtype: str
    kv_dtype: str
    context: int
    concurrency: int
    gpu_memory_utilization: float
    weights_gb: float
    headroom_gb: float
    kv_cache_gb: float
    total_gb: float
    rule_of_thumb_gb: float
    kv_bytes_per_token: int
    gpus: list[GpuFit]
    no_fit: list[str]  # not even on MAX_NODES nodes of GPUS_PER_NODE
    ollama: OllamaPlan | None
    notes: list[str] = field(default_factory=list)

    @property
    def not_on_one_gpu(self) -> list[str]:
        return [f.gpu for f in self.gpus if f.count > 1] + self.no_fit

    def to_dict(self) -> dict[str, Any]:
        r = _round
        m = self.model
        return {
            "unit": "GB = 1e9 bytes",
            "model": {"name": m.name, "source": m.source, "params": m.params, "nominal_params": m.nominal_params,
                      "layers": m.layers, "attention_heads": m.heads, "kv_heads": m.kv_heads,
                      "head_dim": m.head_dim, "max_context": m.max_context, "hf_repo": m.hf_repo},
            "dtype": self.dtype, "kv_dtype": self.kv_dtype, "context": self.context,
            "concurrency": self.concurrency, "gpu_memory_utilization": self.gpu_memory_utilization,
            "weights_gb": r(self.weights_gb), "headroom_gb": r(self.headroom_gb),
            "kv_cache_gb": r(self.kv_cache_gb), "total_gb": r(self.total_gb),
            "rule_of_thumb_gb": r(self.rule_of_thumb_gb), "kv_bytes_per_token": self.kv_bytes_per_token,
            "gpus": [asdict(f) | {"per_gpu_gb": r(f.per_gpu_gb), "budget_gb": r(f.budget_gb)} for f in self.gpus],
            "not_on_one_gpu": self.not_on_one_gpu, "no_fit": self.no_fit,
            "ollama": None if self.ollama is None else asdict(self.ollama) | {
                k: r(getattr(self.ollama, k)) for k in ("weights_gb", "kv_cache_gb", "total_gb")},
            "notes": self.notes,
        }


def _round(gb: float) -> float:
    return round(gb, 3)


def size(model: Model, dtype: str | None = None, context: int | None = None, concurrency: int = 1,
         kv_dtype: str = "fp16", gpu_memory_utilization: float = DEFAULT_UTILIZATION,
         params: float | None = None, gpus: Sequence[GPU] = GPUS) -> Sizing:
    """Memory for serving ``model`` to ``concurrency`` sequences of ``context`` tokens, and the GPU layouts that
    hold it. ``dtype`` defaults to the checkpoint's own quantization or bf16, ``context`` to min(8192, the model's
    maximum); ``params`` overrides the parameter count."""
    prec = precision(dtype or model.checkpoint_dtype or "bf16")
    prequantized = model.checkpoint_dtype is not None and precision(model.checkpoint_dtype) == prec
    kvb = kv_bytes(kv_dtype)
    if params is not None:
        model = replace(model, params=params, nominal_params=params)
    if context is None:
        context = min(DEFAULT_CONTEXT, model.max_context) if model.max_context else DEFAULT_CONTEXT
    if context < 1 or concurrency < 1:
        raise SizingError("--context and --concurrency must be at least 1")
    if model.max_context and context > model.max_context:
        raise SizingError(f"--context {context} is longer than {model.name}'s maximum of {model.max_context} "
                          f"tokens: pass --context {model.max_context} or less")
    if not 0.05 <= gpu_memory_utilization <= 1:
        raise SizingError("--gpu-memory-utilization is a fraction of the card: between 0.05 and 1 (vLLM's default "
                          "is 0.9)")

    embedding = min(model.embedding, model.params)
    weights = ((model.params - embedding) * prec.effective + embedding * 2) / GB
    headroom = HEADROOM * weights
    per_token = model.kv_bytes_per_token * kvb
    kv = per_token * context * concurrency / GB
    total = weights + headroom + kv
    rule_of_thumb = model.nominal_params * prec.bytes * (1 + HEADROOM) / GB

    fits, no_fit = [], []
    for gpu in gpus:
        fit = _fit(model, gpu, weights + headroom, per_token * context / GB, concurrency, gpu_memory_utilization)
        if fit is None:
            no_fit.append(gpu.name)
        else:
            fit.vllm_command = vllm_command(model, prec, kv_dtype, context, concurrency, gpu_memory_utilization,
                                            fit.tensor_parallel, fit.pipeline_parallel, prequantized)
            fits.append(fit)
    sizing = Sizing(model=model, dtype=prec.name, kv_dtype="fp8" if kvb == 1 else "fp16", context=context,
                    concurrency=concurrency, gpu_memory_utilization=gpu_memory_utilization, weights_gb=weights,
                    headroom_gb=headroom, kv_cache_gb=kv, total_gb=total, rule_of_thumb_gb=rule_of_thumb,
                    kv_bytes_per_token=per_token, gpus=fits, no_fit=no_fit,
                    ollama=_ollama(model, prec, kvb, context, gpus))
    sizing.notes = _notes(sizing, prec, {g.name: g for g in gpus}, prequantized)
    return sizing


def _fit(model: Model, gpu: GPU, static_gb: float, kv_seq_gb: float, concurrency: int,
         utilization: float) -> GpuFit | None:
    """The smallest layout of ``gpu`` cards that holds the model: tensor parallelism up to a node, then pipeline
    stages across nodes. ``static_gb`` is weights + headroom, ``kv_seq_gb`` one sequence's KV cache."""
    budget = utilization * gpu.memory_gb
    degrees = tp_degrees(model.heads, model.kv_heads)
    layouts = [(tp, 1) for tp in degrees]
    top = max(degrees)
    pp_max = min(MAX_NODES * GPUS_PER_NODE // top, model.layers)
    layouts += [(top, pp) for pp in range(2, pp_max + 1)]
    for tp, pp in layouts:
        stage = math.ceil(model.layers / pp) / model.layers  # the biggest stage's share of the layers
        replicas = max(1, tp // model.kv_heads)  # each rank keeps at least one whole KV head
        static = static_gb * stage / tp
        kv_seq = kv_seq_gb * stage * replicas / tp
        need = static + kv_seq * concurrency
        if need <= budget:
            count = tp * pp
            return GpuFit(gpu=gpu.name, memory_gb=gpu.memory_gb, count=count, tensor_parallel=tp,
                          pipeline_parallel=pp, nodes=math.ceil(count / GPUS_PER_NODE), per_gpu_gb=need,
                          budget_gb=budget, max_sequences=int((budget - static) // kv_seq) if kv_seq else 0,
                          vllm_command="")
    return None


def vllm_command(model: Model, prec: Precision, kv_dtype: str, context: int, concurrency: int,
                 utilization: float, tp: int = 1, pp: int = 1, prequantized: bool = False) -> str:
    parts = ["vllm", "serve", model.hf_repo or model.name]
    if tp > 1:
        parts += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        parts += ["--pipeline-parallel-size", str(pp)]
    parts += ["--max-model-len", str(context), "--gpu-memory-utilization", f"{utilization:.2f}",
              "--max-num-seqs", str(concurrency), *(() if prequantized else prec.vllm_flags)]
    if kv_bytes(kv_dtype) == 1:
        parts += ["--kv-cache-dtype", "fp8"]
    return " ".join(parts)


def _ollama(model: Model, prec: Precision, kvb: int, context: int, gpus: Sequence[GPU]) -> OllamaPlan | None:
    """One user on Ollama: a GGUF of the model, one sequence. Ollama has no tensor parallelism: a model larger
    than one card has its layers spread over the machine's cards, which then work one after the other."""
    if model.ollama is None:
        return None
    quant = prec.ollama_quant
    weights = model.params * OLLAMA_BYTES[quant] / GB
    kv = model.kv_bytes_per_token * kvb * context / GB
    total = weights * (1 + HEADROOM) + kv
    one = [g.name for g in gpus if total <= g.memory_gb]
    split = [{"gpu": g.name, "count": math.ceil(total / g.memory_gb)} for g in gpus
             if total > g.memory_gb and math.ceil(total / g.memory_gb) <= GPUS_PER_NODE]
    env = f"OLLAMA_CONTEXT_LENGTH={context}"
    if kvb == 1:  # Ollama's q8_0 KV cache needs flash attention
        env += " OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE=q8_0"
    tag = f"{model.ollama}-{quant}"
    return OllamaPlan(tag=tag, command=f"{env} ollama serve  # then: ollama run {tag}", weights_gb=weights,
                      kv_cache_gb=kv, total_gb=total, one_gpu=one, split=split)


def _notes(s: Sizing, prec: Precision, catalogue: dict[str, GPU], prequantized: bool) -> list[str]:
    notes = list(s.model.notes)
    if prec.checkpoint and not prequantized:
        notes.append(f"vLLM does not quantize to {prec.name} on load: serve {prec.checkpoint} "
                     "(vLLM reads the method from its config.json) in place of the model shown.")
    if prec.name == "fp8":
        if not prequantized:
            notes.append("--quantization fp8 quantizes the bf16 weights while loading; a ready FP8 checkpoint "
                         "loads faster and is often more accurate.")
        ampere = [f.gpu for f in s.gpus if not catalogue[f.gpu].fp8]
        if ampere:
            notes.append(f"{', '.join(ampere)} have no FP8 tensor cores: vLLM runs FP8 weights weight-only "
                         "(Marlin kernels): same memory, less speed-up.")
    if any(f.tensor_parallel > s.model.kv_heads for f in s.gpus):
        notes.append(f"With more tensor-parallel ranks than the model's {s.model.kv_heads} KV heads, vLLM "
                     "replicates KV heads: each GPU's KV cache is counted with the copies.")
    pcie = [f.gpu for f in s.gpus if f.count > 1 and not catalogue[f.gpu].nvlink]
    if pcie:
        notes.append(f"{', '.join(pcie)}: no NVLink, tensor parallelism all-reduces over PCIe (works, slower).")
    if any(f.nodes > 1 for f in s.gpus):
        notes.append("Several nodes: vLLM runs on a Ray cluster (ray start on each node, vllm serve on the head), "
                     "tensor parallel inside each node, --pipeline-parallel-size stages across nodes.")
    if s.ollama is not None and prec.name not in ("bf16", "fp16", "int8"):
        notes.append(f"Ollama runs GGUF files, not {prec.name}: the Ollama line uses the nearest, "
                     f"{prec.ollama_quant}.")
    if s.concurrency > 1 and s.ollama is not None:
        notes.append(f"The Ollama line is sized for one user; for {s.concurrency} concurrent sequences use vLLM.")
    return notes

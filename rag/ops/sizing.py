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
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# The catalogue's types and the config.json reader are re-exported: rag.ops.sizing is what callers import.
from rag.ops.catalogue import (GPUS, KV_PRECISIONS, MODELS, OLLAMA_BYTES, PRECISIONS, BY_KEY, GPU, Model, Precision,
                               SizingError, kv_bytes, model_key, precision)
from rag.ops.hf_config import estimate_params, model_from_config

__all__ = ["GPU", "GPUS", "KV_PRECISIONS", "MODELS", "Model", "OLLAMA_BYTES", "PRECISIONS", "Precision",
           "Sizing", "SizingError", "estimate_params", "find_model", "kv_bytes", "model_from_config",
           "parse_params", "precision", "size", "tp_degrees", "vllm_command"]

GB = 1e9
HEADROOM = 0.20  # the rule of thumb's "+ 20 %", applied to the weights
DEFAULT_CONTEXT = 8192  # enough for a RAG prompt with several passages; long contexts are asked for explicitly
DEFAULT_UTILIZATION = 0.90  # vLLM's default --gpu-memory-utilization
GPUS_PER_NODE = 8  # tensor parallelism stays inside one NVLink domain; more GPUs means pipeline stages
MAX_NODES = 4  # beyond 32 GPUs the answer is "quantize or buy bigger cards", not a longer pipeline
TP_DEGREES = (1, 2, 4, 8)


# --- models -------------------------------------------------------------------------------------------------

def find_model(name: str) -> Model:
    """A built-in model by (loose) name, or the model a config.json / model folder describes."""
    path = Path(name).expanduser()
    if path.is_dir() or path.suffix == ".json" or path.exists():
        return model_from_config(path)
    if (m := BY_KEY.get(model_key(name))) is not None:
        return m
    close = difflib.get_close_matches(model_key(name), list(BY_KEY), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(BY_KEY[c].name for c in close)}?" if close else ""
    raise SizingError(f"unknown model {name!r}.{hint} Built-in models: {', '.join(m.name for m in MODELS)}. "
                      "For any other model pass the path of its Hugging Face config.json (or its folder), "
                      "and --params if the estimate from the architecture is not enough.")


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

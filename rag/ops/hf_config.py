"""A model `rag sizing` has no entry for, read from its Hugging Face config.json: architecture and parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.ops.catalogue import Model, SizingError

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

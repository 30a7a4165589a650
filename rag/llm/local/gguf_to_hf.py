"""Turn the packaged GGUF into a Hugging Face folder that vLLM serves (run by the vLLM venv's Python).

vLLM's CPU backend does not run Q4_1 GGUF weights, so the model is dequantized once with transformers'
GGUF loader and saved as safetensors with its tokenizer (the chat template comes along in the tokenizer
config). Standalone on purpose: it runs in the engine's own venv, where ``rag`` is not installed.

    python gguf_to_hf.py MODEL.gguf OUT_DIR [DTYPE]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> None:
    import torch
    # GgufConfig is transformers 5's: this runs in the vLLM venv (transformers 5), checked against ours (<5).
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # type: ignore[attr-defined]

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # dequantize: plain dense weights, which save_pretrained can write (GGUF blocks are not serializable).
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype),
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # a crash mid-way never leaves a half-written model where vLLM would load it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]), *(sys.argv[3:4] or []))

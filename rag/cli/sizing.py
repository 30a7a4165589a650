"""`rag sizing MODEL`: GPUs and memory for serving a model, with the vllm/ollama command lines."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from rag.errors import RagError
from rag.cli.common import fail, out


def sizing(
    model: Annotated[str, typer.Argument(help="A built-in model (e.g. Llama-3.1-70B; a wrong name lists them) or "
                                              "the path of a Hugging Face config.json or model folder.")],
    dtype: Annotated[str | None, typer.Option(help="Weight precision: bf16, fp16, fp8, int8, int4, awq or gptq "
                                                   "(default: bf16, or the checkpoint's own quantization).")] = None,
    context: Annotated[int | None, typer.Option(help="Tokens per sequence, prompt + answer (vLLM --max-model-len; "
                                                     "default: 8192, or the model's maximum if smaller).")] = None,
    concurrency: Annotated[int, typer.Option(help="Sequences served at the same time (vLLM --max-num-seqs).")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="KV cache precision: fp16 or fp8 "
                                                             "(vLLM --kv-cache-dtype).")] = "fp16",
    params: Annotated[str | None, typer.Option(help="Parameter count, e.g. 8B or 7.2e9: overrides the built-in "
                                                    "count or the estimate from config.json.")] = None,
    utilization: Annotated[float, typer.Option("--gpu-memory-utilization",
                                               help="Share of each GPU vLLM may take.")] = 0.9,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
) -> None:
    """How many GPUs a model needs: weights + 20 % headroom + KV cache (context x concurrency), the cards of a
    catalogue that hold it and with how many for tensor parallelism, and the vllm / ollama command lines.
    Sizes are in GB = 10^9 bytes."""
    from rag.ops.sizing import find_model, parse_params, size

    try:
        spec = find_model(model)
        s = size(spec, dtype, context, concurrency, kv_dtype, utilization,
                 params=parse_params(params) if params else None)
    except RagError as exc:
        raise fail(exc) from None
    if as_json:
        out.print_json(json.dumps(s.to_dict()))
        return
    _print_sizing(s)


def _print_sizing(s) -> None:
    from rag.ops.sizing import precision

    m = s.model
    seqs = f"{s.concurrency} sequence{'s' if s.concurrency > 1 else ''}"
    out.print(Text.assemble((m.name, "bold"), f" · {m.params / 1e9:.2f}B parameters ({m.source}) · {s.dtype} "
                            f"weights · {s.kv_dtype} KV cache · {s.context:,} tokens × {seqs}"))
    bytes_per = s.weights_gb * 1e9 / m.params
    kv_b = 1 if s.kv_dtype == "fp8" else 2
    table = Table("", "GB", "how", box=None, title_justify="left", title="Memory (GB = 10⁹ bytes)",
                  title_style="bold")
    table.add_row("weights", f"{s.weights_gb:.2f}", f"{m.params / 1e9:.2f}B × {bytes_per:.2f} bytes"
                  + ("" if s.dtype in ("bf16", "fp16") else " (embeddings stay at 16 bit, scales included)"))
    table.add_row("headroom", f"{s.headroom_gb:.2f}", "+20 % of the weights: activations, CUDA graphs, buffers")
    table.add_row("KV cache", f"{s.kv_cache_gb:.2f}",
                  f"2 × {m.layers} layers × {m.kv_heads} KV heads × {m.head_dim} dims × {kv_b} bytes "
                  f"× {s.context:,} tokens × {s.concurrency}")
    table.add_row(Text("total", style="bold"), Text(f"{s.total_gb:.2f}", style="bold"),
                  "weights + headroom + KV cache")
    table.add_row("rule of thumb", f"{s.rule_of_thumb_gb:.2f}",
                  f"{m.nominal_params / 1e9:g}B × {precision(s.dtype).bytes:g} bytes "
                  "+ 20 % (the size in the name, no KV cache)")
    out.print(table)

    gpus = Table("GPU", "memory", "GPUs", "layout", "per GPU", f"budget ({s.gpu_memory_utilization:.0%})",
                 f"sequences of {s.context:,}", title="GPUs (sizes in GB)", title_justify="left", title_style="bold")
    for f in s.gpus:
        layout = "one GPU" if f.count == 1 else f"TP {f.tensor_parallel}" + (
            f" × PP {f.pipeline_parallel} ({f.nodes} nodes)" if f.pipeline_parallel > 1 else "")
        style = "green" if f.count == 1 else ("yellow" if f.nodes > 1 else "")
        gpus.add_row(f.gpu, f"{f.memory_gb:g}", str(f.count), layout, f"{f.per_gpu_gb:.1f}", f"{f.budget_gb:.1f}",
                     str(f.max_sequences), style=style)
    for name in s.no_fit:
        gpus.add_row(name, "", "", "does not fit on 4 nodes of 8", "", "", "", style="red")
    out.print(gpus)
    if s.not_on_one_gpu:
        out.print(Text("No GPU of the catalogue holds it alone." if len(s.not_on_one_gpu) == len(s.gpus) + len(
            s.no_fit) else f"Not on one GPU: {', '.join(s.not_on_one_gpu)}", style="dim"))

    out.print(Text("\nvLLM", style="bold"))
    layouts: dict[str, list[str]] = {}
    for f in s.gpus:
        layouts.setdefault(f.vllm_command, []).append(f.gpu)
    for command, names in layouts.items():
        f = next(f for f in s.gpus if f.vllm_command == command)
        what = "1 GPU" if f.count == 1 else f"{f.count} GPUs" + (f" on {f.nodes} nodes" if f.nodes > 1 else "")
        out.print(Text(f"  {what} ({', '.join(names)}):", style="dim"))
        out.print(f"    {command}", markup=False, highlight=False)
    if not s.gpus:
        out.print("  no layout fits: lower --context or --concurrency, or pick a smaller --dtype")

    _print_ollama(s.ollama)
    if s.notes:
        out.print(Text("\nNotes", style="bold"))
        for note in s.notes:
            out.print(Text(f"  • {note}", style="dim"))


def _print_ollama(o) -> None:
    out.print(Text("\nOllama, one user", style="bold"))
    if o is None:
        out.print("  no Ollama tag is known for this model: import its GGUF with a Modelfile, sized as vLLM above")
        return
    out.print(f"  {o.tag}: {o.weights_gb:.1f} GB weights + 20 % + {o.kv_cache_gb:.1f} GB KV cache "
              f"= {o.total_gb:.1f} GB")
    out.print(f"    {o.command}", markup=False, highlight=False)
    if o.one_gpu:
        out.print(Text(f"  fits one {', '.join(o.one_gpu)}", style="dim"))
    if o.split:
        split = ", ".join(f"{d['count']}× {d['gpu']}" for d in o.split)
        out.print(Text(f"  {'on smaller cards' if o.one_gpu else 'no single card holds it'}: Ollama spreads the "
                       f"layers over {split} of one machine (no tensor parallelism: one GPU works at a time)",
                       style="dim"))
    if not o.one_gpu and not o.split:
        out.print(Text("  too large for Ollama on one machine: use vLLM", style="yellow"))

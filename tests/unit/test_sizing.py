"""`rag sizing`: the memory figures, the GPU layouts, config.json reading and the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rag.ops.sizing import (
    GPU,
    MODELS,
    Model,
    SizingError,
    estimate_params,
    find_model,
    parse_params,
    size,
    tp_degrees,
)

# Llama 3.1 8B's config.json, as published (the fields the calculator reads, plus some it must ignore).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131072, "vocab_size": 128256, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
}


def _fit(sizing, gpu: str):
    return next((f for f in sizing.gpus if f.gpu == gpu), None)


def test_rule_of_thumb_figures_of_the_issue():
    """"Parameters x 2 bytes + 20 %": Llama-3.2-11B -> 26.4 GB, Llama-3.2-90B -> 216 GB."""
    s11 = size(find_model("Llama-3.2-11B-Vision"))
    s90 = size(find_model("Llama-3.2-90B-Vision"))
    assert s11.rule_of_thumb_gb == pytest.approx(26.4)
    assert s90.rule_of_thumb_gb == pytest.approx(216.0)
    assert s11.to_dict()["rule_of_thumb_gb"] == 26.4 and s90.to_dict()["rule_of_thumb_gb"] == 216.0
    # Precision scales it: fp8 halves it, int4 quarters it.
    assert size(find_model("Llama-3.2-90B-Vision"), "fp8").rule_of_thumb_gb == pytest.approx(108.0)
    assert size(find_model("Llama-3.2-90B-Vision"), "awq").rule_of_thumb_gb == pytest.approx(54.0)


def test_total_is_weights_plus_20_percent_plus_kv_cache():
    # With the nominal count the total is the rule of thumb plus the KV cache, to the byte.
    s = size(find_model("Llama-3.2-11B-Vision"), params=11e9)
    assert s.weights_gb == pytest.approx(22.0)
    assert s.headroom_gb == pytest.approx(4.4)
    assert s.total_gb - s.kv_cache_gb == pytest.approx(26.4)
    # The real count (10.67B, vision encoder included) is what the weights use by default.
    real = size(find_model("Llama-3.2-11B-Vision"))
    assert real.weights_gb == pytest.approx(21.34)
    assert real.total_gb == pytest.approx(real.weights_gb * 1.2 + real.kv_cache_gb)


def test_kv_cache_formula_llama_31_8b():
    m = find_model("Llama-3.1-8B")
    s = size(m, context=8192, concurrency=1)
    assert s.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert s.kv_cache_gb == pytest.approx(2 * 32 * 8 * 128 * 2 * 8192 / 1e9)  # 1.07 GB
    assert round(s.kv_cache_gb, 2) == 1.07
    # Linear in context and in concurrency; an fp8 KV cache halves it; the weights do not move.
    big = size(m, context=32768, concurrency=16)
    assert big.kv_cache_gb == pytest.approx(s.kv_cache_gb * 4 * 16)
    assert big.weights_gb == s.weights_gb
    assert size(m, context=8192, kv_dtype="fp8").kv_cache_gb == pytest.approx(s.kv_cache_gb / 2)


def test_90b_bf16_does_not_fit_one_h200_and_needs_tensor_parallel_2():
    s = size(find_model("Llama-3.2-90B-Vision"))
    h200 = _fit(s, "H200")
    assert s.total_gb > 0.9 * 141  # more than vLLM may take of one card
    assert h200.count == 2 and h200.tensor_parallel == 2 and h200.pipeline_parallel == 1
    assert h200.per_gpu_gb <= h200.budget_gb == pytest.approx(126.9)
    assert "H200" in s.not_on_one_gpu
    assert "--tensor-parallel-size 2" in h200.vllm_command
    assert _fit(s, "H100 80GB").count == 4
    # At fp8 it fits one H200.
    assert _fit(size(find_model("Llama-3.2-90B-Vision"), "fp8"), "H200").count == 1


def test_context_and_concurrency_add_gpus():
    m = find_model("Llama-3.1-70B")
    short = size(m)  # 8192 tokens x 1
    long = size(m, context=32768, concurrency=16)  # +172 GB of KV cache
    assert long.kv_cache_gb == pytest.approx(171.8, abs=0.05)
    assert _fit(short, "H100 80GB").count == 4
    assert _fit(long, "H100 80GB").count == 8
    assert _fit(long, "H100 80GB").max_sequences >= 16
    assert "--max-model-len 32768" in _fit(long, "H100 80GB").vllm_command
    assert "--max-num-seqs 16" in _fit(long, "H100 80GB").vllm_command


def test_405b_bf16_needs_two_h100_nodes_with_pipeline_parallelism():
    s = size(find_model("Llama-3.1-405B"))
    assert s.rule_of_thumb_gb == pytest.approx(972.0)
    h100 = _fit(s, "H100 80GB")
    assert (h100.count, h100.tensor_parallel, h100.pipeline_parallel, h100.nodes) == (16, 8, 2, 2)
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in h100.vllm_command
    assert all(f.tensor_parallel <= 8 for f in s.gpus)  # never TP 16
    fp8 = size(find_model("Llama-3.1-405B"), "fp8")
    assert _fit(fp8, "H200").nodes == 1 and _fit(fp8, "H100 80GB").count == 8
    assert "--quantization fp8" in _fit(fp8, "H100 80GB").vllm_command


def test_tp_degree_divides_heads_and_suits_kv_heads():
    assert tp_degrees(28, 4) == [1, 2, 4]  # Qwen2.5-7B: 28 heads, 8 does not divide them
    assert tp_degrees(14, 2) == [1, 2]
    assert tp_degrees(24, 8) == [1, 2, 4, 8]
    assert tp_degrees(40, 8) == [1, 2, 4, 8]
    assert tp_degrees(12, 3) == [1]  # 2 neither divides 3 KV heads nor is a multiple of them
    for m in MODELS:
        s = size(m, context=min(m.max_context, 131072), concurrency=8)
        for f in s.gpus:
            tp = f.tensor_parallel
            assert m.heads % tp == 0 and (m.kv_heads % tp == 0 or tp % m.kv_heads == 0), (m.name, f)
            assert f.per_gpu_gb <= f.budget_gb
    assert max(f.tensor_parallel for f in size(find_model("Qwen2.5-7B"), context=32768, concurrency=64).gpus) <= 4


def test_kv_heads_are_replicated_when_fewer_than_tensor_parallel_ranks():
    m = Model("toy", 16e9, 16e9, 32, 16, 2, 128, 32768, 4096, 14336, 32000)
    card = GPU("card", 10)  # 16e9 x 2 bytes x 1.2 = 38.4 GB: needs TP 8 on 10 GB cards
    s = size(m, context=1024, gpus=[card])
    f = s.gpus[0]
    assert f.tensor_parallel == 8
    static = s.weights_gb * 1.2 / 8
    # Each of the 8 ranks keeps one of the 2 KV heads: half the KV cache, not an eighth.
    assert f.per_gpu_gb == pytest.approx(static + s.kv_cache_gb / 2)
    assert any("replicates KV heads" in n for n in s.notes)


def test_quantized_weights_keep_embeddings_at_16_bit():
    # Llama-3.1-8B-Instruct-FP8 checkpoints are ~9.1 GB; the 70B AWQ INT4 checkpoints ~40 GB.
    assert size(find_model("Llama-3.1-8B"), "fp8").weights_gb == pytest.approx(9.08, abs=0.05)
    assert size(find_model("Llama-3.1-70B"), "awq").weights_gb == pytest.approx(39.8, abs=0.5)
    assert size(find_model("Llama-3.1-8B"), "bf16").weights_gb == pytest.approx(16.06)


@pytest.mark.parametrize("m", [m for m in MODELS if "Vision" not in m.name], ids=lambda m: m.name)
def test_builtin_architecture_reproduces_parameter_count(m: Model):
    """A wrong layer count, MLP width or head count in the table would move the estimate off the Hub's count."""
    cfg = {"hidden_size": m.hidden, "num_hidden_layers": m.layers, "num_attention_heads": m.heads,
           "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim, "intermediate_size": m.intermediate,
           "vocab_size": m.vocab, "tie_word_embeddings": m.tied_embeddings,
           "model_type": "qwen2" if m.name.startswith("Qwen") else "llama", "num_local_experts": m.experts}
    assert estimate_params(cfg) == pytest.approx(m.params, rel=0.01)


def test_config_json_llama_31_8b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B))
    for arg in (tmp_path / "config.json", tmp_path):  # the file or its folder
        m = find_model(str(arg))
        assert m.params == pytest.approx(8.03e9, rel=0.01)
        assert (m.layers, m.heads, m.kv_heads, m.head_dim, m.max_context) == (32, 32, 8, 128, 131072)
    s = size(m)
    assert s.kv_cache_gb == pytest.approx(size(find_model("Llama-3.1-8B")).kv_cache_gb)
    assert s.gpus[0].vllm_command.startswith(f"vllm serve {tmp_path.resolve()} ")
    # --params overrides the estimate.
    assert size(m, params=parse_params("7.2e9")).weights_gb == pytest.approx(14.4)


def test_config_json_nested_text_config_and_defaults(tmp_path):
    # Mllama-style: the language model's numbers under text_config; no head_dim (hidden/heads), and a config
    # without num_key_value_heads has as many KV heads as attention heads.
    cfg = {"model_type": "mllama", "vision_config": {"hidden_size": 1280, "num_hidden_layers": 32},
           "text_config": {"model_type": "mllama_text_model", "hidden_size": 4096, "intermediate_size": 14336,
                           "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
                           "max_position_embeddings": 131072, "vocab_size": 128256}}
    path = tmp_path / "mllama.json"
    path.write_text(json.dumps(cfg))
    m = find_model(str(path))
    assert (m.layers, m.heads, m.kv_heads, m.head_dim) == (40, 32, 8, 128)
    assert any("vision" in n for n in m.notes)  # the encoder is not in the estimate, and it says so
    mha = {k: v for k, v in LLAMA_31_8B.items() if k != "num_key_value_heads"}
    (tmp_path / "mha.json").write_text(json.dumps(mha))
    assert find_model(str(tmp_path / "mha.json")).kv_heads == 32


def test_config_json_of_a_quantized_checkpoint(tmp_path):
    cfg = LLAMA_31_8B | {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = size(find_model(str(tmp_path)))
    assert s.dtype == "awq"
    assert "--quantization" not in s.gpus[0].vllm_command  # vLLM reads the method from the checkpoint
    assert not any("does not quantize" in n for n in s.notes)


def test_model_names_and_errors(tmp_path):
    assert find_model("meta-llama/Llama-3.1-70B-Instruct").name == "Llama-3.1-70B"
    assert find_model("llama-3.2-11b").name == "Llama-3.2-11B-Vision"
    assert find_model("qwen2.5-72b-instruct").name == "Qwen2.5-72B"
    with pytest.raises(SizingError, match="Built-in models: .*Llama-3.1-8B.*config.json"):
        find_model("llama-4-scout")
    with pytest.raises(SizingError, match="does not exist"):
        find_model(str(tmp_path / "missing" / "config.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SizingError, match="config.json"):
        find_model(str(tmp_path / "bad.json"))
    with pytest.raises(SizingError, match="--context 8192 or less"):
        size(find_model("Gemma-2-9B"), context=16384)
    with pytest.raises(SizingError, match="bf16, fp16, fp8"):
        size(find_model("Gemma-2-9B"), "q2_k")
    assert parse_params("8B") == 8e9 and parse_params("350M") == 350e6 and parse_params("7.2e9") == 7.2e9
    with pytest.raises(SizingError, match="8B or 8e9"):
        parse_params("8")
    assert size(find_model("Gemma-2-9B")).context == 8192 and size(find_model("Llama-3.1-8B")).context == 8192
    assert size(find_model("Llama-3.2-1B")).context == 8192  # default: 8192, not the 131072 maximum


def test_ollama_alternative():
    s = size(find_model("Llama-3.1-70B"), "int4")
    o = s.ollama
    assert o.tag == "llama3.1:70b-instruct-q4_K_M"
    assert o.weights_gb == pytest.approx(42.8, abs=0.3)  # the q4_K_M download is 43 GB
    assert "OLLAMA_CONTEXT_LENGTH=8192" in o.command and "H100 80GB" in o.one_gpu
    big = size(find_model("Llama-3.2-90B-Vision")).ollama  # fp16: 216 GB, no single card
    assert not big.one_gpu and {"gpu": "H200", "count": 2} in big.split


def test_cli_json_and_text():
    from rag.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["sizing", "Llama-3.2-90B-Vision", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {"weights_gb", "kv_cache_gb", "total_gb", "gpus", "rule_of_thumb_gb", "unit"} <= d.keys()
    assert d["rule_of_thumb_gb"] == 216.0
    assert all({"gpu", "count", "tensor_parallel"} <= g.keys() for g in d["gpus"]) and d["gpus"]
    assert {"gpu": "H200", "count": 2, "tensor_parallel": 2}.items() <= next(
        g for g in d["gpus"] if g["gpu"] == "H200").items()
    assert d["total_gb"] == pytest.approx(d["weights_gb"] + d["headroom_gb"] + d["kv_cache_gb"], abs=0.002)

    r = runner.invoke(app, ["sizing", "Llama-3.1-70B", "--context", "32768", "--concurrency", "16", "--dtype",
                            "fp8", "--kv-dtype", "fp8", "--json"])
    d = json.loads(r.stdout)
    assert (d["context"], d["concurrency"], d["dtype"], d["kv_dtype"]) == (32768, 16, "fp8", "fp8")
    assert "--kv-cache-dtype fp8" in d["gpus"][0]["vllm_command"]

    r = runner.invoke(app, ["sizing", "Llama-3.2-11B-Vision"])
    assert r.exit_code == 0 and "26.40" in r.stdout and "vllm serve" in r.stdout and "ollama run" in r.stdout

    r = runner.invoke(app, ["sizing", "no-such-model"])
    assert r.exit_code == 2 and "Built-in models" in r.output

"""MoE-aware model FLOPs: only the routed experts and real tokens count."""

from transformers import Qwen3Config, Qwen3MoeConfig

from chameleons.train.flops import active_params_per_token, peak_tflops_for, train_flops


def moe(**kw):
    dims = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                num_experts_per_tok=8, moe_intermediate_size=768, vocab_size=151936, num_hidden_layers=48)
    return Qwen3MoeConfig(**{**dims, **kw})


def test_qwen3_30b_a3b_active_parameters():
    p = active_params_per_token(moe())
    h = 2048
    per_layer = h * 128 * (2 * 32 + 2 * 4) + h * 128 + 3 * 8 * h * 768
    assert p["per_layer"] == per_layer and p["layers"] == 48 * per_layer
    assert 2.6e9 < p["layers"] < 2.9e9  # about 3B active of ~30B: the "A3B"
    assert p["lm_head"] == h * 151936


def test_more_experts_cost_only_the_router():
    few, many = active_params_per_token(moe(num_experts=64)), active_params_per_token(moe(num_experts=128))
    assert many["per_layer"] - few["per_layer"] == 2048 * 64


def test_flops_grow_with_real_and_supervised_tokens_only():
    cfg = moe(num_hidden_layers=2)
    p = active_params_per_token(cfg)
    one = train_flops(cfg, [100], [10])
    assert one == 6 * p["layers"] * 100 + 6 * p["lm_head"] * 10 + 6 * 2 * 32 * 128 * 100 * 101
    assert train_flops(cfg, [100, 100], [10, 10]) == 2 * one  # two samples, not one of 200 (causal per sample)
    assert train_flops(cfg, [100], [20]) - one == 6 * p["lm_head"] * 10


def test_dense_models_count_their_mlp():
    cfg = Qwen3Config(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, num_hidden_layers=1, vocab_size=100)
    assert active_params_per_token(cfg)["per_layer"] == 64 * 16 * (8 + 4) + 3 * 64 * 256


def test_peak_table_tells_h100_variants_apart():
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for("NVIDIA H100 NVL") == 835.0
    assert peak_tflops_for("NVIDIA H200") == 989.0
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_for("Tesla T4") is None

"""Model FLOPs of training, counted MoE-aware, and the peak they are compared with (MFU).

    FLOPs = sum over samples of  6 * N_act * n  +  6 * H * V * s  +  6 * L * n_q * d_h * n * (n + 1)

    N_act = L * ( H * d_h * (2 * n_q + 2 * n_kv)    q, k, v, o projections
                  + H * E                           router
                  + 3 * k * H * I_moe )             gate/up/down of the k routed experts
                                                    (3 * H * I for a dense MLP)

n = real tokens of the sample, s = its supervised tokens, H hidden size, V vocabulary, L layers,
n_q / n_kv query / key-value heads of dim d_h, E experts, k experts per token, I_moe expert width.
6 = 2 FLOPs per multiply-add x 3 (forward, backward to activations, backward to weights). Only
the active experts count, only real tokens count (padding is waste), the vocabulary projection
counts only where a loss is taken, and attention is causal within a sample (12 * n_q * d_h * t
for the token at position t, summed over t). Recomputation for gradient checkpointing is not
counted: these are model FLOPs, and MFU = FLOPs / (seconds * peak * GPUs).
"""

import torch

# Dense bf16 peaks by device-name substring, most specific first: "H100" alone would take the
# PCIe (756) and NVL (835) cards for the SXM one (989).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("H800 PCIe", 756.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0))


def peak_tflops_for(name: str):
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def active_params_per_token(cfg) -> dict:
    """Matmul parameters one token passes through (top-k experts only for an MoE)."""
    h = cfg.hidden_size
    d = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    attention = h * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)  # q, o; k, v
    if getattr(cfg, "num_experts", None):
        mlp = h * cfg.num_experts + 3 * cfg.num_experts_per_tok * h * cfg.moe_intermediate_size
    else:
        mlp = 3 * h * cfg.intermediate_size
    per_layer = attention + mlp
    return {"per_layer": per_layer, "layers": cfg.num_hidden_layers * per_layer, "lm_head": h * cfg.vocab_size}


def train_flops(cfg, lengths, supervised) -> float:
    """Useful training FLOPs of samples with these real / supervised token counts (see above)."""
    p = active_params_per_token(cfg)
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * d
    return float(sum(6 * p["layers"] * n + 6 * p["lm_head"] * s + attn * n * (n + 1)
                     for n, s in zip(lengths, supervised)))


def peak_flops(device, override_tflops=None):
    """(peak FLOP/s of one device, how it was found); None on CPU or an unknown GPU."""
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops} TFLOPs (given)"
    if torch.device(device).type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    tflops = peak_tflops_for(name)
    if tflops is None:
        return None, f"unknown peak for {name}"
    return tflops * 1e12, f"{tflops} TFLOPs dense bf16 ({name})"

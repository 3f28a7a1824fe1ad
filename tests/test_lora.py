"""The optional `lora` config section wraps the model with peft; only adapter weights train."""

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from chameleons.core.config import LoraConfig
from chameleons.text.batching import make_collator
from chameleons.text.loss import causal_lm_loss
from chameleons.train.model_setup import apply_lora


def test_lora_trains_only_adapters():
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                               moe_intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               num_key_value_heads=1, head_dim=16, num_experts=4, num_experts_per_tok=2))
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = make_collator("padded", 0)([{"input_ids": [5, 6, 7, 8, 9], "prompt_len": 2}])
    loss, n = causal_lm_loss(model, batch)
    loss.backward()
    assert int(n) == 3
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

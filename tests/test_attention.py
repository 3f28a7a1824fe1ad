"""`sdpa_varlen` (per-sample SDPA on packed rows) gives what padded batches with stock SDPA give."""

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from chameleons import attention
from chameleons.batching import check_packing_supported, make_collator
from chameleons.loss import causal_lm_loss

ROWS = [{"input_ids": list(range(3, 3 + n)), "prompt_len": p} for n, p in ((7, 2), (13, 5), (4, 1), (9, 9 - 3))]


def _models():
    attention.register()
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=4, num_experts_per_tok=2)
    reference = Qwen3MoeForCausalLM._from_config(config, attn_implementation="sdpa")
    varlen = Qwen3MoeForCausalLM._from_config(config, attn_implementation=attention.NAME)
    varlen.load_state_dict(reference.state_dict())
    return reference, varlen


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = causal_lm_loss(model, batch)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_packed_varlen_equals_padded_sdpa():
    reference, varlen = _models()
    want, want_grads = _loss_and_grads(reference, make_collator("padded", 0)(ROWS))
    got, got_grads = _loss_and_grads(varlen, make_collator("packed")(ROWS))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want_grads.keys() == got_grads.keys()
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=1e-4, atol=1e-6)


def test_padded_rows_fall_back_to_stock_sdpa():
    reference, varlen = _models()
    batch = make_collator("padded", 0)(ROWS)
    torch.testing.assert_close(causal_lm_loss(varlen, batch)[0], causal_lm_loss(reference, batch)[0])


def test_varlen_is_accepted_for_packing():
    check_packing_supported(attention.NAME)

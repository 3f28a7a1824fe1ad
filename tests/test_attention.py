"""Packed rows keep their samples apart: `sdpa_varlen` (per-sample SDPA, the packed path wherever
flash-attention 2 is not usable) gives what padded batches with stock SDPA give."""

import copy

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from chameleons.text.batching import check_packing_supported, make_collator
from chameleons.text.loss import causal_lm_loss
from chameleons.train import attention

ROWS = [{"input_ids": list(range(3, 3 + n)), "prompt_len": p} for n, p in ((7, 2), (13, 5), (4, 1), (9, 9 - 3))]


def _models():
    attention.register()
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=4, num_experts_per_tok=2)
    # each its own config: _from_config writes the attention implementation into the one it is given
    reference = Qwen3MoeForCausalLM._from_config(copy.deepcopy(config), attn_implementation="sdpa")
    varlen = Qwen3MoeForCausalLM._from_config(copy.deepcopy(config), attn_implementation=attention.NAME)
    assert reference.config._attn_implementation == "sdpa"
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


def test_sample_bounds_come_from_the_collators_cumulative_lengths():
    batch = make_collator("packed")(ROWS)
    lengths = [len(r["input_ids"]) for r in ROWS]
    bounds = [sum(lengths[:i]) for i in range(len(ROWS) + 1)]
    assert attention._sample_bounds(batch["position_ids"], batch["cu_seq_lens_q"]) == bounds
    assert attention._sample_bounds(batch["position_ids"]) == bounds  # the same from the positions
    one = make_collator("packed")(ROWS[:1])
    assert attention._sample_bounds(one["position_ids"], one["cu_seq_lens_q"]) is None  # one sample: stock SDPA


def test_gpu_packed_batches_without_flash_attention_run_sdpa_per_sample(monkeypatch):
    """On a GPU without a usable flash-attn, `auto` gives packed batches sdpa_varlen, the path
    the CPU trains with (not flex_attention: see chameleons/train/attention.py); padded ones keep SDPA."""
    import sys

    from chameleons.train.model_setup import device_policy

    assert device_policy(False, "auto", "packed").attn_implementation == attention.NAME  # this CPU host
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    packed = device_policy(False, "auto", "packed")
    assert packed.attn_implementation == attention.NAME == "sdpa_varlen"
    assert any("sdpa_varlen" in n for n in packed.notices)
    check_packing_supported(packed.attn_implementation)
    assert device_policy(True, "auto", "packed").attn_implementation == "sdpa_varlen"  # --disable_flash_attn
    assert device_policy(False, "auto", "padded").attn_implementation == "sdpa"


def test_sample_bounds_are_read_once_per_forward(monkeypatch):
    """Every layer of a forward gets the same offsets tensor: its bounds are read from the device
    once (a host read per layer would stall a GPU 48 times a forward), and a new batch is read
    afresh."""
    batch = make_collator("packed")(ROWS)
    reads = []
    real = attention._read_bounds
    monkeypatch.setattr(attention, "_read_bounds", lambda *a: reads.append(1) or real(*a))
    first = [attention._sample_bounds(batch["position_ids"], batch["cu_seq_lens_q"]) for _ in range(4)]
    assert len(reads) == 1 and first[0] == first[-1]
    other = make_collator("packed")(ROWS[:2])
    assert attention._sample_bounds(other["position_ids"], other["cu_seq_lens_q"]) != first[0]
    assert len(reads) == 2

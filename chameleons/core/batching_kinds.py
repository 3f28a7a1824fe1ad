"""The batching vocabulary: the values of `training.batching`, and the attention implementations
that keep packed samples apart. A leaf module (it imports nothing of the package), so the config's
checks, the batching code and the attention kernel read one list without importing each other."""

BATCHING_KINDS = ("packed", "length_grouped", "padded")  # see chameleons/text/batching.py
BUDGET_NAMES = ("auto", "off")  # training.max_tokens_per_micro_batch besides a number (chameleons/train/planning.py)
SDPA_VARLEN = "sdpa_varlen"  # chameleons/train/attention.py: SDPA per sample of a packed row

# Attention implementations that keep packed samples apart when there is no attention mask and
# the position ids restart at 0 per sample. eager/sdpa/flex_attention: checked on CPU with a tiny
# Qwen3-MoE (packed logits equal per-sample logits, tests/test_batching_equality.py).
# flash_attention_2/3/4: varlen on the collator's cu_seq_lens (`modeling_flash_attention_utils.
# _flash_attention_forward`, "is_fa_with_varlen_kwargs"); read in the source, not run here (no GPU).
PACKING_ATTENTION = ("eager", "sdpa", SDPA_VARLEN, "flex_attention", "flash_attention_2", "flash_attention_3",
                     "flash_attention_4")

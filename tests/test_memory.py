"""The memory model (chameleons/train/memory.py) and the token budget `"auto"` derives from it."""

from types import SimpleNamespace

import pytest
from transformers import AutoConfig

from chameleons.train import memory, planning

QWEN3_30B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                 num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                 num_experts_per_tok=8, tie_word_embeddings=False)
QWEN3_30B_PARAMETERS = 30_532_122_624  # zero3.model_facts on the meta device (45 s here, so not rebuilt in the test)
GIB = 2 ** 30


@pytest.fixture(scope="module")
def shape():
    return memory.shape_of(AutoConfig.for_model("qwen3_moe", **QWEN3_30B), QWEN3_30B_PARAMETERS)


def test_shape_reads_the_moe_widths(shape):
    assert (shape.q_width, shape.kv_width, shape.mlp_width, shape.routed, shape.experts) == (4096, 512, 768, 8, 128)
    assert shape.largest_unit == 128 * (3 * 2048 * 768 + 2048)  # the sparse MoE block, 604 M elements
    dense = memory.shape_of(AutoConfig.for_model("qwen3", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1000), 10)
    assert (dense.routed, dense.mlp_width, dense.largest_unit) == (0, 256, 1000 * 64)


def test_states_follow_the_zero_stage(shape):
    p = shape.parameters
    by_stage = {stage: memory.state_bytes(shape, stage, 8)["states"] for stage in (3, 2, 1, None)}
    assert by_stage[3] < by_stage[2] < by_stage[1] < 16 * p
    assert by_stage[None] == 8 * p
    assert memory.state_bytes(shape, 3, 16)["states"] == pytest.approx(by_stage[3] / 2, rel=1e-9)
    assert memory.state_bytes(shape, 2, 8)["zero3_gathers"] == 0 < memory.state_bytes(shape, 3, 8)["zero3_gathers"]
    assert memory.state_bytes(shape, 3, 8, lora=True)["states"] == pytest.approx(by_stage[3] / 8, rel=1e-9)


def test_expert_parallelism_gathers_only_a_ranks_own_experts(shape):
    """Under AutoEP a rank keeps its experts whole: with the group over all 8 ranks no expert is
    gathered, and with a group of 2 a rank gathers half a MoE block (302 M elements) from its
    expert-data-parallel group: either way the embedding (311 M) becomes the largest unit, 5.6 ->
    2.9 GiB of gathers. The states are spread as before; the budget grows with the freed memory."""
    plain = memory.state_bytes(shape, 3, 8)
    ep8, ep2 = memory.state_bytes(shape, 3, 8, ep_size=8), memory.state_bytes(shape, 3, 8, ep_size=2)
    assert plain["zero3_gathers"] == 2 * 5 * shape.moe_block
    assert ep8["zero3_gathers"] == ep2["zero3_gathers"] == 2 * 5 * 151936 * 2048 < plain["zero3_gathers"]
    assert shape.moe_block // 2 < 151936 * 2048 and ep8["states"] == plain["states"]
    assert memory.state_bytes(shape, 3, 2, ep_size=2)["zero3_gathers"] == ep8["zero3_gathers"]  # no expert gathered
    budget = {ep: memory.estimate(memory.MemorySetup(shape, 3, 80 * GIB, True, False, ep_size=ep), 8, 0.11,
                                  1024)["budget"] for ep in (1, 8)}
    assert budget[8] > budget[1]


def test_checkpointing_keeps_one_layer(shape):
    with_ckpt = memory.activation_bytes_per_token(shape, True)
    without = memory.activation_bytes_per_token(shape, False)
    assert with_ckpt * 10 < without
    assert with_ckpt == 48 * 2 * 2048 + 2 * 2 * memory.layer_activation_elements(shape)


@pytest.mark.parametrize("gib", [80, 141])
def test_the_budget_is_the_most_tokens_that_fit(shape, gib):
    f = memory.estimate(memory.MemorySetup(shape, 3, gib * GIB, True, False), 8, 0.11, 1024)
    budget = f["budget"]
    assert budget % memory.BUDGET_STEP == 0
    assert memory.peak_bytes(f, budget) + f["reserved_bytes"] <= gib * GIB
    assert memory.peak_bytes(f, budget + memory.BUDGET_STEP) + f["reserved_bytes"] > gib * GIB


def test_qwen3_30b_on_eight_80gb_gpus(shape):
    """The issue's estimate: 16 samples near 1,024 tokens come to 78-80 GiB, so the former
    16,384-token budget never split anything; the memory model's budget is below it."""
    f = memory.estimate(memory.MemorySetup(shape, 3, 80 * GIB, True, False), 8, 0.11, 1024)
    assert 70 * GIB < memory.peak_bytes(f, 16384) < 80 * GIB
    assert 1024 < f["budget"] < 16384
    more_logits = memory.estimate(memory.MemorySetup(shape, 3, 80 * GIB, True, False), 8, 0.3, 1024)["budget"]
    assert more_logits < f["budget"]
    assert memory.estimate(memory.MemorySetup(shape, 3, 141 * GIB, True, False), 8, 0.11, 1024)["budget"] \
        > 4 * f["budget"]
    assert memory.estimate(memory.MemorySetup(shape, None, 80 * GIB, True, False), 1, 0.11,
                           1024)["budget"] is None  # 244 GB of states


def test_token_budget_setting():
    figures = {"budget": 9984}
    t = lambda value, batching="packed": SimpleNamespace(max_tokens_per_micro_batch=value, batching=batching,  # noqa: E731
                                                         max_length=1024)
    assert planning.token_budget(t("auto"), figures) == 9984
    assert planning.token_budget(t("auto"), {"budget": None}) == 1024  # nothing fits: split as far as possible
    assert planning.token_budget(t("auto"), None) is None  # model config not on this machine
    assert planning.token_budget(t("off"), figures) is None
    assert planning.token_budget(t(4096), figures) == 4096
    assert planning.token_budget(t("auto", "padded"), figures) is None


def test_gpu_bytes_from_the_config_first():
    assert memory.gpu_bytes(40) == (40 * GIB, "training.gpu_memory_gib")
    size, source = memory.gpu_bytes(None)
    assert size > 0 and source

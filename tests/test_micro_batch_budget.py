"""The token budget of a packed micro-batch (`training.max_tokens_per_micro_batch`): layouts that
keep samples per step and steps per epoch, cuts between samples that keep the step's loss and
gradient, the config checks and the dry run's micro-batch figures."""

import json
from pathlib import Path

import pytest
import torch

from chameleons.core.config import load_config
from chameleons.core.errors import UserError
from chameleons.text.batching import (BatchMeta, StepShape, budget_parts, exact_parts, make_collator, micro_batch_plan,
                                      split_packed, split_to_budget)
from chameleons.text.loss import causal_lm_loss, supervised_positions
from chameleons.train.planning import steps_per_epoch
from test_batching_equality import PAD, assert_grads_close, make_rows, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_16_by_1_has_the_steps_of_4_by_4(world):
    for n in range(0, 700):
        assert steps_per_epoch(n, 16, world, 1) == steps_per_epoch(n, 4, world, 4), n


def test_parts_stay_within_the_budget_and_keep_every_sample():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        lengths = torch.randint(1, 60, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        budget = max(lengths) + int(torch.randint(0, 100, (1,), generator=g))
        fewest = budget_parts(lengths, budget)
        assert sum(fewest) == len(lengths) and all(c > 0 for c in fewest)
        assert len(fewest) >= -(-sum(lengths) // budget)
        for k in range(len(fewest), len(lengths) + 1):
            parts = exact_parts(lengths, budget, k)
            assert len(parts) == k and sum(parts) == len(lengths) and all(c > 0 for c in parts)
            bounds = [sum(parts[:i]) for i in range(k + 1)]
            assert all(sum(lengths[a:b]) <= budget for a, b in zip(bounds, bounds[1:]))
        with pytest.raises(ValueError):
            exact_parts(lengths, budget, len(lengths) + 1)
    assert budget_parts([5, 5, 5, 5], 10) == [2, 2]
    assert budget_parts([5, 5, 5, 5], 9) == [1, 1, 1, 1]
    assert exact_parts([10, 1, 1, 10], 100, 2) == [2, 2]


def _with_meta(batch, rows):
    batch["meta"] = BatchMeta(rows=list(range(len(rows))), lengths=[len(r["input_ids"]) for r in rows],
                              supervised=[len(r["input_ids"]) - r["prompt_len"] for r in rows])
    return batch


def test_parts_of_a_packed_batch_give_its_loss_and_gradients():
    rows = make_rows()
    model = tiny_model("sdpa")
    batch = _with_meta(make_collator("packed", PAD)(rows), rows)
    total = supervised_positions(batch["labels"])[0].sum()
    model.zero_grad(set_to_none=True)
    whole, _ = causal_lm_loss(model, {k: v for k, v in batch.items() if k != "meta"}, num_items_in_batch=total)
    whole.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}

    parts = split_packed(batch, [2, 1, 3])
    assert [p["meta"].rows for p in parts] == [[0, 1], [2], [3, 4, 5]]
    for key in ("input_ids", "position_ids", "labels"):
        assert torch.equal(torch.cat([p[key] for p in parts], dim=1), batch[key])
    for p, own in zip(parts, ([0, 1], [2], [3, 4, 5])):
        lengths = [len(rows[i]["input_ids"]) for i in own]
        assert p["input_ids"].shape[1] == sum(lengths)
        if "cu_seq_lens_q" in p:
            assert p["cu_seq_lens_q"].tolist() == torch.tensor([0] + lengths).cumsum(0).tolist()
            assert p["max_length_q"] == max(lengths)
    model.zero_grad(set_to_none=True)
    summed = 0
    for p in parts:
        loss, _ = causal_lm_loss(model, {k: v for k, v in p.items() if k != "meta"}, num_items_in_batch=total)
        loss.backward()
        summed = summed + loss.detach()
    torch.testing.assert_close(summed, whole.detach(), rtol=1e-5, atol=1e-6)
    assert_grads_close({k: p.grad for k, p in model.named_parameters()}, want)


def test_split_to_budget_in_one_process():
    rows = make_rows()
    batch = _with_meta(make_collator("packed", PAD)(rows), rows)
    total = batch["input_ids"].shape[1]
    assert split_to_budget(batch, None) == [batch]
    assert split_to_budget(batch, total) == [batch]
    parts = split_to_budget(batch, total - 1)
    assert len(parts) == 2 and sum(p["input_ids"].shape[1] for p in parts) == total
    assert all(p["input_ids"].shape[1] <= total - 1 for p in parts)


def test_plan_counts_micro_batches_and_the_budget():
    lengths = [100] * 30 + [300] * 2  # one shuffled epoch of 32 samples
    plan = micro_batch_plan(lengths, StepShape(16, 2, 1), packed=True, budget=2000)
    assert plan["micro_batches"] == 2 and plan["tokens_per_micro_batch_max"] <= 1600 + 400
    assert plan["over_budget"] == 0 and plan["micro_batches_per_step_max"] == 1
    tight = micro_batch_plan([100] * 32, StepShape(16, 2, 1), packed=True, budget=700)
    assert tight["over_budget"] == 2 and tight["tokens_per_micro_batch_max_after_split"] == 700
    assert tight["micro_batches_per_step_max"] == 3  # 1,600 tokens in parts of 7, 7 and 2 samples
    seed = micro_batch_plan(lengths, StepShape(4, 2, 4), packed=True)
    assert seed["micro_batches"] == 8 and seed["micro_batches_per_step_max"] == 4 and seed["budget"] is None
    padded = micro_batch_plan(lengths, StepShape(4, 2, 4), packed=False, budget=700)
    assert padded["budget"] is None and padded["tokens_per_micro_batch_max"] in (4 * 300, 4 * 100)


@pytest.mark.parametrize("setting, message", [
    ({"max_tokens_per_micro_batch": 100}, "at least training.max_length"),
    ({"max_tokens_per_micro_batch": 4096, "batching": "padded"}, "unless training.batching is 'packed'"),
    ({"max_tokens_per_micro_batch": "many"}, "must be \"auto\", \"off\" or a number of tokens"),
    ({"max_tokens_per_micro_batch": 1.5}, "must be int or str"),
])
def test_budget_config_checks(tmp_path, setting, message):
    cfg = json.loads((ROOT / "config_tiny_cpu.json").read_text())
    cfg["training"].update(setting)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_production_config_is_16_by_1_with_the_memory_models_budget():
    t = load_config(ROOT / "config_Chameleons_30B.json").training
    assert (t.batch_size, t.gradient_accumulation_steps, t.batching) == (16, 1, "packed")
    assert t.max_tokens_per_micro_batch == "auto"

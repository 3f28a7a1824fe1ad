"""Outside DeepSpeed, HF's `load_best_model_at_end` loads the best checkpoint non-strictly and
skips Qwen3-MoE expert weights (saved per expert, held fused in memory). The trainer's own
restore must bring back every weight."""

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM, Trainer, TrainingArguments

from chameleons.train.trainer import ChameleonsTrainer


def _tiny_moe():
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                            num_experts=4, num_experts_per_tok=2)
    return Qwen3MoeForCausalLM(config)


def _perturbed_after_save(tmp_path):
    model = _tiny_moe()
    checkpoint = tmp_path / "checkpoint-1"
    model.save_pretrained(checkpoint)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model, checkpoint, saved


def _trainer(cls, model, tmp_path, **extra):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    return cls(model=model, args=args, **extra)


def test_best_model_restore_brings_back_every_weight(tmp_path):
    model, checkpoint, saved = _perturbed_after_save(tmp_path)
    trainer = _trainer(ChameleonsTrainer, model, tmp_path)
    trainer.state.best_model_checkpoint = str(checkpoint)
    trainer._load_best_model()
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_stock_restore_misses_the_experts(tmp_path):
    """The defect the override exists for; if this starts failing, transformers fixed it."""
    model, checkpoint, saved = _perturbed_after_save(tmp_path)
    trainer = _trainer(Trainer, model, tmp_path)
    trainer.state.best_model_checkpoint = str(checkpoint)
    trainer._load_best_model()
    stale = [k for k, v in model.state_dict().items() if not torch.equal(v, saved[k])]
    assert stale and all("experts" in k for k in stale), stale


def test_resume_load_brings_back_every_weight(tmp_path):
    """Resuming without DeepSpeed goes through the same strict reload."""
    model, checkpoint, saved = _perturbed_after_save(tmp_path)
    trainer = _trainer(ChameleonsTrainer, model, tmp_path)
    trainer._load_from_checkpoint(str(checkpoint))
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_the_last_steps_weights_stay_when_they_are_the_best_and_an_earlier_best_is_read_back(tmp_path):
    """HF evaluates the last step of every finished run: when that evaluation is the best, the
    weights in memory are the best model and nothing is read back; an earlier best is."""
    model, checkpoint, saved = _perturbed_after_save(tmp_path)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(ChameleonsTrainer, model, tmp_path)
    trainer.state.best_model_checkpoint = str(checkpoint)
    trainer.state.global_step = trainer.state.best_global_step = 4
    trainer._load_best_model()
    assert trainer.best_in_memory
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    trainer.state.global_step = 6
    trainer._load_best_model()
    assert not trainer.best_in_memory
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key

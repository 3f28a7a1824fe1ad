"""Evaluation-time checkpoints keep the weights only; resumable ones come on the full-save
interval and on a stop; rotation keeps the newest resumable one and the best; `auto` resumes
from resumable ones only, exactly; the best model restores from a weights-only checkpoint.
One process without DeepSpeed, a tiny model, a fake clock (the ZeRO-3 partitions are covered by
tests/test_train_e2e.py)."""

import signal

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from chameleons.core.errors import UserError
from chameleons.text.batching import make_collator
from chameleons.run.checkpoints import WEIGHTS_MARKER, is_complete, resolve_resume
from chameleons.train import saves
from chameleons.train.runlog import Throughput
from chameleons.train.stopping import StopCallback, StopRequest
from chameleons.train.trainer import ChameleonsTrainer, TrainerSetup
from conftest import tiny_moe_for_trainer

INTERVAL_S, SECONDS_PER_STEP = 10, 4  # a resumable save is due at steps 3 and 6


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


class Script(TrainerCallback):
    """Moves the clock one step's worth per step, plays step 2 as the best checkpoint, and sends
    SIGTERM during `signal_at`."""

    def __init__(self, clock, stop, signal_at=None):
        self.clock, self.stop, self.signal_at = clock, stop, signal_at

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.t = SECONDS_PER_STEP * (state.global_step + 1)
        if state.global_step + 1 == self.signal_at:
            self.stop.signal = signal.SIGTERM

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            state.best_model_checkpoint = f"{args.output_dir}/checkpoint-2"
            state.best_global_step = 2


def trainer_for(out, signal_at=None, steps=6):
    model = tiny_moe_for_trainer()
    rows = [{"input_ids": [3 + i % 5, 4, 5 + i % 7, 8, 9, 10 + i % 3], "prompt_len": 2, "length": 6} for i in range(24)]
    clock, stop = Clock(), StopRequest()
    policy = saves.FullSavePolicy(INTERVAL_S, clock=clock)
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], max_steps=steps, learning_rate=1e-2,
                             per_device_train_batch_size=2, save_strategy="steps", save_steps=1, save_total_limit=3,
                             logging_nan_inf_filter=False, remove_unused_columns=False, seed=3, data_seed=3,
                             restore_callback_states_from_checkpoint=True)
    return ChameleonsTrainer(model=model, args=args, train_dataset=rows, data_collator=make_collator("padded", 0),
                             callbacks=[StopCallback(stop, policy), Script(clock, stop, signal_at)],
                             setup=TrainerSetup(stop=stop, throughput=Throughput(), full_saves=policy))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("kinds") / "a"
    trainer = trainer_for(out)
    trainer.train()
    return out, trainer, weights(trainer.model)


def test_saves_between_full_ones_hold_the_weights_only(uninterrupted):
    out, _, _ = uninterrupted
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-5", "checkpoint-6"]  # the best, the newest, the newest resumable
    for name in ("checkpoint-2", "checkpoint-5"):
        folder = out / name
        assert (folder / WEIGHTS_MARKER).is_file() and not is_complete(folder)
        assert (folder / "model.safetensors").is_file() and not (folder / "optimizer.pt").exists()
    full = out / "checkpoint-6"
    assert is_complete(full) and (full / "optimizer.pt").is_file() and (full / "rng_state.pth").is_file()
    assert resolve_resume("auto", out) == str(full)
    with pytest.raises(UserError, match="holds the weights only"):
        resolve_resume(str(out / "checkpoint-5"), out)


def test_best_model_restores_from_a_weights_only_checkpoint(uninterrupted):
    out, trainer, _ = uninterrupted
    before = weights(trainer.model)
    trainer._load_best_model()
    after = weights(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    reloaded = type(trainer.model).from_pretrained(out / "checkpoint-2").state_dict()
    for key, value in reloaded.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)


def test_sigterm_writes_a_resumable_checkpoint_and_resume_is_exact(uninterrupted, tmp_path):
    _, _, expected = uninterrupted
    b = tmp_path / "b"
    stopped = trainer_for(b, signal_at=2)
    stopped.train()
    assert stopped.state.global_step == 2 and is_complete(b / "checkpoint-2")  # not due by the clock: the stop
    assert (b / "checkpoint-2" / "optimizer.pt").is_file()
    resumed = trainer_for(b)
    resumed.train(resume_from_checkpoint=resolve_resume("auto", b))
    assert resumed.state.global_step == 6
    got = weights(resumed.model)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    assert is_complete(b / "checkpoint-6") and (b / "checkpoint-5" / WEIGHTS_MARKER).is_file()


def test_full_save_policy_and_rotation_rule():
    clock = Clock()
    policy = saves.FullSavePolicy(60, clock=clock)
    assert not policy.due()
    clock.t = 60
    assert policy.due()
    policy.saved()
    assert not policy.due() and saves.FullSavePolicy(0, clock=clock).due()
    found = [(s, f"c{s}", s in (3, 6)) for s in range(1, 9)]
    assert sorted(saves.to_delete(found, 3, "c2", "c6")) == ["c1", "c3", "c4", "c5", "c7"]  # keeps c2, c6, c8
    assert sorted(saves.to_delete(found, 2, "c6", "c6")) == ["c1", "c2", "c3", "c4", "c5", "c7"]  # keeps c6, c8
    every = [(s, f"c{s}", True) for s in range(1, 5)]  # full_checkpoint_minutes 0: the newest `limit` are kept
    assert sorted(saves.to_delete(every, 2, "c4", "c4")) == ["c1", "c2"]

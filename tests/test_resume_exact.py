"""A run's result never depends on an interruption: a run resumed from a checkpoint taken between
two patience-counting evaluations stops where its uninterrupted twin stopped, with the same final
eval loss and the same weights, even when resumed from another working directory; a non-finite
stop keeps the last good checkpoint; a finished run is never trained further by a requeue."""

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from chameleons.text.batching import make_collator
from chameleons.run.checkpoints import is_complete, resolve_resume
from chameleons.train.runlog import Throughput
from chameleons.train.stopping import StopCallback, StopRequest
from chameleons.train.trainer import ChameleonsTrainer, TrainerSetup, with_row_meta
from conftest import REPO, SINGLE_RUN_ARGS, tiny_moe_for_trainer, train_single


@pytest.fixture(scope="module")
def uninterrupted(early_stopped_run):
    """The suite's single-process run (tests/conftest.py): patience 3, every checkpoint kept."""
    tmp, config, out, _ = early_stopped_run
    return tmp, config, out


def _events(output_dir, event):
    path = Path(output_dir, "training_logs", "metrics.jsonl")
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def test_early_stopping_resumes_exactly_from_another_directory(uninterrupted):
    tmp, config, a = uninterrupted
    evals = _events(a, "eval")
    assert len(evals) == 4, evals  # threshold 100: no evaluation counts as better, patience 3 ends it at the 4th
    summary_a = json.loads((a / "training_config.json").read_text())["summary"]
    assert summary_a["global_step"] == evals[-1]["step"]

    # Interrupted right after the second evaluation (patience counter 1), resumed elsewhere.
    resume_step = evals[1]["step"]
    state = json.loads((a / f"checkpoint-{resume_step}" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] == 1
    b = tmp / "b"
    b.mkdir()
    for step in {resume_step, state["best_global_step"]}:
        shutil.copytree(a / f"checkpoint-{step}", b / f"checkpoint-{step}")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    proc = train_single(config, Path("..") / "b", "--resume_from_checkpoint", "auto", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary_b = json.loads((b / "training_config.json").read_text())["summary"]
    assert summary_b["global_step"] == summary_a["global_step"]
    assert summary_b["final_eval_loss"] == pytest.approx(summary_a["final_eval_loss"], abs=1e-5)
    assert summary_b["train_loss"] == pytest.approx(summary_a["train_loss"], rel=1e-5)
    assert summary_b["train_tokens"] == summary_a["train_tokens"]
    assert Path(summary_b["best_model_checkpoint"]).parent == b.resolve()
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-5, atol=1e-6, msg=key)
    log = (b / "training_logs" / "detailed_training_log.txt").read_text()
    assert f"eval step {evals[2]['step']} " in log and "patience left 1" in log  # counter 2 after the third eval
    assert "early stopping: no improvement" in log


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_auto_on_a_finished_run_touches_nothing_and_succeeds(uninterrupted, run_in_process):
    _, config, a = uninterrupted
    before = _tree(a)
    proc = run_in_process(["--config", config, "--output_dir", a, *SINGLE_RUN_ARGS, "--resume_from_checkpoint", "auto"],
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"already finished: {a}"
    assert _tree(a) == before


def test_explicit_checkpoint_of_a_finished_run_is_refused(uninterrupted, run_in_process):
    _, config, a = uninterrupted
    before = _tree(a)
    checkpoint = sorted(a.glob("checkpoint-*"))[0]
    proc = run_in_process(["--config", config, "--output_dir", a, *SINGLE_RUN_ARGS, "--resume_from_checkpoint", checkpoint],
                          cwd=REPO)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--overwrite_output_dir" in lines[0]
    assert _tree(a) == before


@pytest.mark.parametrize("bad", [
    ["--set", "training.learning_rate=-1"],
    ["--set", "training.dataloader_num_workers=-1"],
    ["--early_stopping_patience", "-3"],
    ["--deepspeed", "no_such_ds_config.json"],
])
def test_overwrite_with_a_bad_setting_keeps_the_old_run(uninterrupted, run_in_process, bad):
    _, config, a = uninterrupted
    before = _tree(a)
    proc = run_in_process(["--config", config, "--output_dir", a, *SINGLE_RUN_ARGS, "--overwrite_output_dir", *bad],
                          cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert _tree(a) == before


class _BestAtOneThenPoison(TrainerCallback):
    """Step 1's checkpoint plays the best one; the weights turn NaN before step 3."""

    def __init__(self, model):
        self.model = model

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            state.best_model_checkpoint = os.path.join(args.output_dir, "checkpoint-1")

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                self.model.model.embed_tokens.weight.fill_(float("nan"))


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny_moe_for_trainer()
    rows = [{"input_ids": [3, 4, 5, 8, 9, 10], "prompt_len": 2, "length": 6} for _ in range(12)]
    stop = StopRequest()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=6,
                             per_device_train_batch_size=2, save_strategy="steps", save_steps=1, save_total_limit=2,
                             logging_nan_inf_filter=False, remove_unused_columns=False)
    trainer = ChameleonsTrainer(model=model, args=args, train_dataset=rows, data_collator=make_collator("padded", 0),
                                callbacks=[StopCallback(stop), _BestAtOneThenPoison(model)],
                                setup=TrainerSetup(stop=stop, throughput=Throughput()))
    trainer.train()
    assert stop.nonfinite and trainer.state.global_step == 3
    assert is_complete(tmp_path / "checkpoint-2") and not is_complete(tmp_path / "checkpoint-3")
    assert resolve_resume("auto", tmp_path) == str(tmp_path / "checkpoint-2")


class _Logged(TrainerCallback):
    """Every training log's step, loss and token count; and a SIGTERM as if received during `stop_at`."""

    def __init__(self, request=None, stop_at=None):
        self.request, self.stop_at, self.logs = request, stop_at, {}

    def on_step_begin(self, args, state, control, **kwargs):
        if self.request is not None and state.global_step + 1 == self.stop_at:
            self.request.signal = signal.SIGTERM

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.logs[state.global_step] = (logs["loss"], logs["tokens"])


def _logging_trainer(out, stop_at=None):
    model = tiny_moe_for_trainer()
    rows = [{"input_ids": [3 + i % 7, 4, 5, 8, 9 + i % 5, 10][: 4 + i % 3], "prompt_len": 2, "length": 4 + i % 3,
             "row": i} for i in range(16)]
    stop = StopRequest()
    logged = _Logged(stop, stop_at)
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], max_steps=9, logging_steps=3,
                             per_device_train_batch_size=2, save_strategy="no", remove_unused_columns=False,
                             restore_callback_states_from_checkpoint=True)  # as training.py sets it
    trainer = ChameleonsTrainer(model=model, args=args, train_dataset=rows,
                                data_collator=with_row_meta(make_collator("padded", 0)),
                                callbacks=[StopCallback(stop), logged], setup=TrainerSetup(stop=stop, throughput=Throughput()))
    return trainer, logged


def test_a_run_stopped_between_two_logs_logs_what_its_twin_logs(tmp_path):
    """Logs at steps 3, 6 and 9; stopped at step 4 and resumed, the run logs at 6 the loss and the
    tokens of steps 4-6, as the uninterrupted run does (HF alone would log steps 5-6 only)."""
    twin, twin_logs = _logging_trainer(tmp_path / "twin")
    twin.train()
    first, _ = _logging_trainer(tmp_path / "run", stop_at=4)
    first.train()
    assert first.state.global_step == 4 and is_complete(tmp_path / "run" / "checkpoint-4")
    resumed, resumed_logs = _logging_trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert sorted(twin_logs.logs) == [3, 6, 9] and sorted(resumed_logs.logs) == [6, 9]
    assert resumed_logs.logs == {step: twin_logs.logs[step] for step in (6, 9)}

"""Stopping cleanly: signals and non-finite losses end the run at an optimizer step's end with a
complete checkpoint and an exit code that says why."""

import signal

import pytest
import torch
from transformers import TrainingArguments

from chameleons.text.batching import make_collator
from chameleons.run.checkpoints import is_complete, newest_complete, resolve_resume
from chameleons.train.runlog import Throughput
from chameleons.train.stopping import EXIT_NONFINITE, StopCallback, StopRequest
from chameleons.train.trainer import ChameleonsTrainer, TrainerSetup
from conftest import tiny_moe_for_trainer


def test_signal_exit_codes_and_repeats_within_the_window():
    req = StopRequest()
    req._handle(signal.SIGTERM, None)
    req._handle(signal.SIGINT, None)  # torchrun's forwarded copy: the same stop, not an abort
    assert req.signal == signal.SIGTERM and req.exit_code == 143
    other = StopRequest()
    other._handle(signal.SIGINT, None)
    assert other.exit_code == 130
    assert StopRequest().exit_code == 0


def test_nonfinite_loss_stops_after_the_step_with_a_complete_checkpoint(tmp_path):
    model = tiny_moe_for_trainer()
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = float("nan")
    rows = [{"input_ids": [3, 4, 7, 8, 9, 10], "prompt_len": 2, "length": 6} for _ in range(8)]
    stop = StopRequest()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=4,
                             per_device_train_batch_size=2, save_strategy="no", logging_nan_inf_filter=False,
                             remove_unused_columns=False)
    trainer = ChameleonsTrainer(model=model, args=args, train_dataset=rows,
                                   data_collator=make_collator("padded", 0), callbacks=[StopCallback(stop)],
                                   setup=TrainerSetup(stop=stop, throughput=Throughput()))
    trainer.train()
    assert stop.nonfinite and stop.exit_code == EXIT_NONFINITE
    assert trainer.state.global_step == 1
    assert (tmp_path / "checkpoint-1" / "model.safetensors").is_file()  # kept for inspection ...
    assert not is_complete(tmp_path / "checkpoint-1")  # ... but never resumed from
    assert resolve_resume("auto", tmp_path) is None


def test_auto_resume_ignores_half_written_checkpoints(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "chameleons_complete").write_text("ok\n")
    (tmp_path / "checkpoint-9").mkdir()  # a save that was cut off: no marker
    assert newest_complete(tmp_path) == str(tmp_path / "checkpoint-4")
    assert resolve_resume("auto", tmp_path / "empty") is None


def test_total_flos_and_throughput_count_model_flops_of_real_tokens(tmp_path):
    """HF's total_flos would be 6 x all parameters x padded tokens; the trainer counts the
    MoE-aware FLOPs of the samples it trained on (chameleons/train/flops.py), once per micro-batch."""
    from chameleons.train.flops import train_flops
    from chameleons.train.trainer import with_row_meta

    model = tiny_moe_for_trainer()
    rows = [{"input_ids": list(range(3, 3 + n)), "prompt_len": 2, "length": n, "row": i}
            for i, n in enumerate([6, 9, 7, 12, 5, 8])]
    stop, throughput, trace = StopRequest(), Throughput(), []
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=3,
                             per_device_train_batch_size=2, save_strategy="no", remove_unused_columns=False)
    trainer = ChameleonsTrainer(model=model, args=args, train_dataset=rows,
                                data_collator=with_row_meta(make_collator("packed", 0)), callbacks=[StopCallback(stop)],
                                setup=TrainerSetup(stop=stop, throughput=throughput, trace=trace))
    trainer.train()
    trained = [rows[r] for batch in trace for r in batch]
    assert sorted(r["row"] for r in trained) == list(range(6))
    expected = sum(train_flops(model.config, [r["length"]], [r["length"] - r["prompt_len"]]) for r in trained)
    assert trainer.state.total_flos == pytest.approx(expected)
    assert expected < 6 * model.num_parameters(exclude_embeddings=True) * sum(r["length"] for r in trained)


def test_a_signal_between_a_sweeps_runs_stops_before_the_next_one_starts(monkeypatch, capsys):
    """The previous run's handler caught it: the next run reports and returns its exit code
    without setting anything up (no folder, no model)."""
    from types import SimpleNamespace

    from chameleons.train.training import TrainingRun

    previous = StopRequest()
    run = SimpleNamespace(targs=SimpleNamespace(device="cpu", process_index=0), main=True,
                          opts=SimpleNamespace(output_dir="grid/sample_seed-43"))
    monkeypatch.setattr(TrainingRun, "last_stop", previous)
    assert TrainingRun.stopped_between_runs(run) == 0  # no signal: the run goes ahead
    previous._handle(signal.SIGTERM, None)
    assert TrainingRun.stopped_between_runs(run) == 143
    err = capsys.readouterr().err
    assert "stopped before grid/sample_seed-43 started" in err and "--resume_from_checkpoint auto" in err
    monkeypatch.setattr(TrainingRun, "last_stop", None)
    assert TrainingRun.stopped_between_runs(run) == 0  # the first run of a launch

"""The run around the model and the Trainer: the training half of the recipe.

Order matters under ZeRO-3: TrainingArguments (which carry the DeepSpeed config) exist before
the model is created, so `from_pretrained` builds it already partitioned.
"""

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import torch

from . import (checkpoints, diskspace, expert_parallel, flops, launch, model_spec, outputs, planning, preflight,
               run_record, saves, tracking, zero3)
from .batching import check_packing_supported, make_collator, trainer_args_for_batching
from .encoding import encode_split
from .errors import UserError
from .model_setup import DevicePolicy, apply_lora, build_model, describe_model, device_policy
from .runlog import PLOT_NAME, DetailedLogCallback, RunLog, Throughput, decode_with_span, plot_losses
from .stopping import StopCallback, StopRequest
from .trainer import ChameleonsTrainer, EpochCallback, EpochRows, TrainerSetup, with_row_meta

DISK_FULL_THEN = (f"a checkpoint being written stays incomplete (no {checkpoints.COMPLETE_MARKER}), and "
                  f"--resume_from_checkpoint auto skips it; free space, then resume with --resume_from_checkpoint auto")


def training_arguments(opts, config, device: DevicePolicy, report_to):
    from transformers import TrainingArguments

    t = config.training
    kwargs = dict(
        output_dir=os.path.abspath(opts.output_dir),  # checkpoint paths in trainer_state.json resolve from anywhere
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=opts.max_epochs,
        max_steps=opts.max_steps,
        eval_strategy="steps",
        save_strategy="steps",
        eval_steps=1,  # set once the number of steps per epoch is known
        save_steps=1,
        logging_steps=t.logging_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=device.bf16,
        use_cpu=not device.on_gpu,
        deepspeed=opts.deepspeed,
        activation_checkpointing=config.model.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to=report_to,
        run_name=opts.wandb_run_name,
        seed=t.seed,
        data_seed=t.seed,
        logging_nan_inf_filter=False,
        restore_callback_states_from_checkpoint=True,  # early-stopping patience and the loss tally resume exactly
        remove_unused_columns=False,
        disable_tqdm=launch.rank() != 0,
        log_level_replica="error",  # the Trainer resets transformers' verbosity: other ranks print errors only
        log_on_each_node=False,
        dataloader_num_workers=t.dataloader_num_workers,
        ddp_timeout=t.ddp_timeout,  # seconds a rank waits in a collective (e.g. for rank 0's final save)
        ddp_find_unused_parameters=True,  # experts a batch did not route to get no gradient
    )
    kwargs.update(trainer_args_for_batching(t.batching))
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"training arguments: {str(exc).splitlines()[0]}") from None



@dataclass
class RunChecks:
    """What the checks before any write found: the run starts from it."""

    resume: str
    device: DevicePolicy
    zero_stage: int | None
    report_to: list
    notices: list
    expert_parallel: dict
    costs: dict | None = None  # planning.model_costs: the plan's checkpoint and memory figures


def check_run(opts, config, inputs) -> RunChecks:
    """The checks that need torch and transformers, after those of `preflight.check_inputs` (whose
    findings `inputs` carries): everything is checked before the first byte is written (the dry
    run calls this too, so a plan it makes does not fail at training start)."""
    device = device_policy(opts.disable_flash_attn, config.model.attn_implementation, config.training.batching)
    if config.training.batching == "packed":
        check_packing_supported(device.attn_implementation)
    if config.model.random_init:
        model_spec.check_random_init(config)
    ep_plan = expert_parallel.plan_for_run(opts, inputs.zero_stage, config)
    expert_parallel.check_resume(inputs.resume, ep_plan)
    world, per_node = ((opts.nproc_per_node, opts.nproc_per_node) if opts.dry_run
                       else (launch.world_size(), launch.local_world_size()))
    costs = planning.model_costs(config, inputs.zero_stage, world, per_node)
    disk_notice = diskspace.check_run_space(opts.output_dir, costs["checkpoints"])
    return RunChecks(resume=inputs.resume, device=device, zero_stage=inputs.zero_stage, report_to=inputs.report_to,
                     notices=inputs.notices + list(device.notices) + ([disk_notice] if disk_notice else []),
                     expert_parallel=ep_plan, costs=costs)


def start_run_folder(output_dir, overwrite: bool, resume, main: bool):
    """The first write to the output folder, once every check has passed: an overwrite clears
    the old run, a fresh start sets old logs aside, a resume appends."""
    if resume is None and main:
        if overwrite:
            outputs.clear_previous_run(output_dir)
        else:
            outputs.set_aside_previous_logs(output_dir)


def run(opts, config, checks, corpus, split, builder, tokenizer, cache_dir) -> int:
    """The training half of the recipe: tokenize, open the run folder, build the model and the
    Trainer, train, then either stop cleanly or evaluate and save. Returns the exit code."""
    from transformers import set_seed

    targs = training_arguments(opts, config, checks.device, checks.report_to)
    stop = StopRequest()
    stop.install()
    encoded, plan = encode_and_plan(opts, config, checks, targs, corpus, split, builder, tokenizer, cache_dir)

    start_run_folder(opts.output_dir, opts.overwrite_output_dir, checks.resume, targs.process_index == 0)
    runlog = open_run_log(opts, config, checks, targs, encoded, plan, tokenizer)
    if targs.process_index == 0:
        run_record.write_run_record(opts.output_dir, corpus.path, builder)

    set_seed(targs.seed)
    model = build_model(config, checks.device, deepspeed_zero3=checks.zero_stage == 3)
    if config.lora:
        model = apply_lora(model, config.lora)
    runlog.line(describe_model(model))
    if getattr(targs, "hf_deepspeed_config", None) is not None:
        sizes = zero3.fill_auto(targs.hf_deepspeed_config.config, model,
                                one_node=launch.local_world_size() == launch.world_size())
        if sizes:
            runlog.line("ZeRO-3 sizes from the largest unit gathered at once (chameleons/zero3.py): "
                        + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    runlog.line(expert_parallel.configure(getattr(targs, "hf_deepspeed_config", None), checks.expert_parallel))
    trainer, tally, trace = make_trainer(opts, config, targs, model, encoded, tokenizer, runlog, stop,
                                         plan["micro_batches"]["budget"])

    runlog.line(f"resuming from {checks.resume}" if checks.resume else "starting fresh")
    started = time.time()
    with diskspace.full_disk_is_one_line(opts.output_dir, DISK_FULL_THEN):
        trainer.train(resume_from_checkpoint=checks.resume)
    write_trace(opts.output_dir, targs.process_index, trace)
    if trainer.max_tokens_per_micro_batch:
        runlog.line(f"token budget {trainer.max_tokens_per_micro_batch}: {trainer.split_micro_batches} micro-batches "
                    f"ran in parts")
    stop.agree(targs.device)  # a signal during the last step's save reaches one rank only

    with diskspace.full_disk_is_one_line(opts.output_dir, DISK_FULL_THEN):
        code = report_stop(trainer, stop, runlog) if stop.exit_code else \
            save_result(opts, config, checks, trainer, tally, runlog, plan, tokenizer, started)
    tracking.finish_wandb(code)
    finish_distributed()
    return code


def encode_and_plan(opts, config, checks, targs, corpus, split, builder, tokenizer, cache_dir):
    """Tokenized rows (rank 0 first, the others reuse its cache) and the plan; sets the
    evaluation and checkpoint interval from the steps per epoch."""
    with targs.main_process_first(local=False, desc="tokenizing"):
        encoded = encode_split(split, builder, tokenizer, config.training, cache_dir, opts.resample_each_epoch,
                               progress=targs.process_index == 0)
    plan = planning.make_plan(corpus, split, encoded, config.training, targs.world_size, opts.max_epochs,
                              opts.sec_per_step, **checks.costs)
    plan["expert_parallel"] = checks.expert_parallel
    preflight.require_trainable(corpus.path, plan["split"]["train_encoded"], plan["split"]["validation_encoded"])
    steps_per_epoch = plan["schedule"]["steps_per_epoch"]
    targs.eval_steps = targs.save_steps = max(1, steps_per_epoch // config.training.evals_per_epoch)
    return encoded, plan


def open_run_log(opts, config, checks, targs, encoded, plan, tokenizer) -> RunLog:
    """The detailed log's head (command, versions, notices, config, plan, three decoded samples),
    the split manifest and the wandb run."""
    main = targs.process_index == 0
    device = checks.device
    runlog = RunLog(opts.output_dir, enabled=main)
    runlog.line(f"command: {shlex.join([sys.executable, *sys.argv])}")
    runlog.line(f"versions: {versions()} | world size {targs.world_size} | device "
                f"{'cuda' if device.on_gpu else 'cpu'} | dtype {'bf16' if device.bf16 else 'fp32'} | "
                f"attention {device.attn_implementation} | deepspeed {opts.deepspeed or 'off'} | "
                f"batching {config.training.batching}")
    for notice in checks.notices:
        runlog.line(f"notice: {notice}")
        if main:
            print(notice, file=sys.stderr, flush=True)
    runlog.block("config (resolved, overrides listed)", json.dumps(config.resolved(), indent=2))
    runlog.block("plan", planning.format_plan(plan))
    if main:
        print(planning.format_plan(plan), flush=True)  # the console shows the plan once, then progress
        tracking.start_wandb(opts, config, checks.report_to, expert_parallel=plan["expert_parallel"])
        write_manifest(opts.output_dir, encoded, opts.max_epochs)
        for n, row in enumerate(encoded.train_rows(0)[:3], 1):
            item = encoded.dataset[row]
            runlog.block(f"training sample {n} ({item['sample_id']}), supervised span between <<< and >>>",
                         decode_with_span(tokenizer, item["input_ids"], item["prompt_len"]))
    return runlog


def make_trainer(opts, config, targs, model, encoded, tokenizer, runlog, stop, budget=None):
    """The Trainer with its callbacks: epoch rows, the per-step stop/loss reduction, early
    stopping and the detailed log; `budget` is the plan's token budget. Returns (trainer, loss
    tally, data-order trace)."""
    from transformers import EarlyStoppingCallback

    train_rows = EpochRows(encoded)
    collate = make_collator(config.training.batching, tokenizer.pad_token_id)
    throughput = Throughput()
    trace = []
    early = EarlyStoppingCallback(opts.early_stopping_patience, opts.early_stopping_threshold) \
        if opts.early_stopping_patience > 0 else None
    full_saves = saves.FullSavePolicy(config.training.full_checkpoint_minutes * 60)
    tally = StopCallback(stop, full_saves)
    peak, peak_note = flops.peak_flops(targs.device)
    runlog.line(f"MFU: model FLOPs of active parameters only (chameleons/flops.py) against {peak_note}")
    callbacks = [EpochCallback(train_rows, runlog), tally] + ([early] if early else []) + \
        [DetailedLogCallback(runlog, throughput, targs.world_size, early, peak)]
    setup = TrainerSetup(batching=config.training.batching, router_aux_loss_coef=config.model.router_aux_loss_coef,
                         max_tokens_per_micro_batch=budget, collate=collate, stop=stop, throughput=throughput,
                         trace=trace, full_saves=full_saves)
    trainer = ChameleonsTrainer(
        model=model, args=targs, train_dataset=train_rows, data_collator=with_row_meta(collate),
        processing_class=tokenizer, callbacks=callbacks, eval_dataset=encoded.val_rows, setup=setup)
    return trainer, tally, trace


def report_stop(trainer, stop, runlog) -> int:
    """A stopped run says why and how to continue; its checkpoint is already saved."""
    step = trainer.state.global_step
    if stop.nonfinite and stop.signal is None:
        message = (f"non-finite training loss at step {step}: stopped; checkpoint-{step} is kept for inspection "
                   f"and is not resumable; lower the learning rate, or resume from the last complete checkpoint "
                   f"(--resume_from_checkpoint auto picks it)")
    else:
        message = f"stopped at step {step}, resume with: {resume_command()} --resume_from_checkpoint auto"
    runlog.line(message)
    runlog.metrics("stopped", step=step, exit_code=stop.exit_code)
    if trainer.args.process_index == 0:
        print(message, file=sys.stderr, flush=True)
    return stop.exit_code


def save_result(opts, config, checks, trainer, tally, runlog, plan, tokenizer, started) -> int:
    """Final evaluation of the restored best model, the model and tokenizer, the summary, the
    loss plot, and training_config.json last: its presence marks the run finished."""
    final = trainer.evaluate(metric_key_prefix="final")
    best = trainer.state.best_metric
    runlog.line(f"best model restored from {trainer.state.best_model_checkpoint}: final eval_loss "
                f"{final['final_loss']:.4f} (best recorded {best:.4f})")
    trainer.save_model(opts.output_dir)
    if trainer.args.process_index != 0:
        return 0
    tokenizer.save_pretrained(opts.output_dir)
    summary = {
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_runtime_s": round(time.time() - started, 1),
        "train_loss": tally.mean_loss,
        "train_tokens": int(tally.tokens),
        "best_eval_loss": best,
        "final_eval_loss": final["final_loss"],
        "best_model_checkpoint": trainer.state.best_model_checkpoint,
    }
    runlog.metrics("summary", **summary)
    plotted = plot_losses(runlog.metrics_path, runlog.dir / PLOT_NAME)
    runlog.block("summary", json.dumps(summary, indent=2))
    runlog.line(f"model and tokenizer: {opts.output_dir}; log: {runlog.log_path}"
                + (f"; loss curve: {runlog.dir / PLOT_NAME}" if plotted else ""))
    outputs.write_json(outputs.run_path(opts.output_dir, outputs.FINISHED_MARKER), {
        "args": opts.as_record(), "config": config.resolved(), "versions": versions(), "world_size": trainer.args.world_size,
        "device": checks.device.record(), "plan": plan, "summary": summary,
    })
    return 0


def versions() -> str:
    import accelerate
    import datasets
    import transformers

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"transformers {transformers.__version__}", f"accelerate {accelerate.__version__}",
             f"datasets {datasets.__version__}"]
    try:
        import deepspeed

        parts.append(f"deepspeed {deepspeed.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def resume_command() -> str:
    """The command to continue this run: exact for one machine, the launcher left to the user
    across nodes or under SLURM."""
    argv, skip = [], False
    for a in sys.argv:
        if skip:
            skip = False
        elif a == "--resume_from_checkpoint":
            skip = True
        elif not a.startswith("--resume_from_checkpoint="):
            argv.append(a)
    world, local = launch.world_size(), launch.local_world_size()
    if world == 1:
        return shlex.join(["python", *argv])
    if world == local and "SLURM_PROCID" not in os.environ:
        return shlex.join(["torchrun", f"--nproc_per_node={world}", *argv])
    return "the same launcher (torchrun/srun) with " + shlex.join(argv)


def write_manifest(output_dir, encoded, max_epochs: int):
    """Which samples are validation and which train, for every epoch this run may train."""
    ids = encoded.dataset_ids
    epochs = range(max_epochs) if encoded.resample else [0]
    seen, per_epoch = set(), []
    for e in epochs:
        rows = encoded.train_rows(e)
        new = [r for r in rows if r not in seen]
        seen.update(rows)
        per_epoch.append({"epoch": e, "train": [ids[r] for r in rows], "new_samples": len(new),
                          "pool_coverage": round(len(seen) / max(1, sum(len(m) for m in encoded.split.pool.values())), 4)})
    outputs.write_json(outputs.run_path(output_dir, outputs.MANIFEST_NAME), {
        "validation": [ids[r] for r in encoded.val_rows],
        "epochs": per_epoch,
        "split": encoded.split.stats,
        "history_pool": run_record.history_pool(encoded.split),
    })


def write_trace(output_dir, rank, trace):
    """The dataset rows of every micro-batch this rank trained on, in order."""
    path = outputs.run_path(output_dir, "training_logs", f"data_order_rank{rank}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for rows in trace:
            f.write(json.dumps(rows) + "\n")


def finish_distributed():
    """Destroying the process group avoids an abort seen at interpreter exit under ZeRO-3."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

"""The run around the model and the Trainer: the training half of the recipe.

Order matters under ZeRO-3: TrainingArguments (which carry the DeepSpeed config) exist before
the model is created, so `from_pretrained` builds it already partitioned.
"""

import contextlib
import gc
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import diskspace, expert_parallel, flops, initial_weights, model_setup, model_spec, planning, saves, zero3
from ..core import launch, outputs
from ..core.errors import UserError
from ..corpus.data import Corpus
from ..corpus.splitting import Split
from ..text.batching import check_packing_supported, make_collator, trainer_args_for_batching
from ..text.encoding import Tokenization, encode_split
from ..text import split_audit
from ..text.prompts import PromptBuilder
from ..run import checkpoints, preflight, tracking
from ..run.run_spec import RunSpec
from ..predict import final_fidelity
from .model_setup import DevicePolicy, apply_lora, build_model, describe_model, device_policy
from .run_files import peak_memory, versions, write_manifest, write_trace
from .runlog import PLOT_NAME, DetailedLogCallback, RunLog, Throughput, decode_with_span, plot_losses, process_start
from .stopping import StopCallback, StopRequest
from .trainer import ChameleonsTrainer, EpochCallback, EpochRows, TrainerSetup, timed, with_row_meta

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
        eval_steps=1,  # TrainingRun.setup sets both from the plan's steps per epoch
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



@dataclass(frozen=True)
class RunChecks:
    """What the checks before any write found: the run starts from it."""

    resume: str
    device: DevicePolicy
    zero_stage: int | None
    report_to: list
    notices: list
    expert_parallel: dict
    printed: tuple = ()  # notices the console already showed
    wandb_env: dict | None = None  # tracking.apply_wandb_env, when the run starts
    costs: planning.ModelCosts | None = None  # the plan's checkpoint and memory figures
    partition_cache: Path | None = None  # the model's entry in --partition_cache (initial_weights.cache_folder)
    zero_config: dict | None = None  # the DeepSpeed config's zero_optimization section, as written


def check_run(opts, config, inputs) -> RunChecks:
    """The checks that need torch and transformers, after those of `preflight.check_inputs` (whose
    findings `inputs` carries): everything is checked before the first byte is written (the dry
    run calls this too, so a plan it makes does not fail at training start)."""
    device = device_policy(opts.disable_flash_attn, config.model.attn_implementation, config.training.batching)
    if config.training.batching == "packed":
        check_packing_supported(device.attn_implementation)
    if config.model.random_init:
        model_spec.check_random_init(config)
    ep_plan = expert_parallel.plan_for_run(opts, inputs.zero_stage, config, device.on_gpu)
    expert_parallel.check_resume(inputs.resume, ep_plan)
    world, per_node = ((opts.nproc_per_node, opts.nproc_per_node) if opts.dry_run
                       else (launch.world_size(), launch.local_world_size()))
    zero = inputs.zero_config
    entry = initial_weights.cache_entry(opts.partition_cache, config, device.dtype, world, zero)
    costs = planning.model_costs(config, inputs.zero_stage, world, per_node, ep_plan["size"],
                                 cached=initial_weights.cached(entry))
    disk_notice = diskspace.check_run_space(opts.output_dir, costs.checkpoints)
    unread = zero3.unread_config_notice(config.model) if costs.memory_setup is None else None
    return RunChecks(resume=inputs.resume, device=device, zero_stage=inputs.zero_stage, report_to=inputs.report_to,
                     notices=inputs.notices + list(device.notices) + [n for n in (disk_notice, unread) if n],
                     expert_parallel=ep_plan, costs=costs, printed=tuple(inputs.printed), wandb_env=inputs.wandb_env,
                     partition_cache=entry, zero_config=zero)


def start_run_folder(output_dir, overwrite: bool, resume, main: bool):
    """The first write to the output folder, once every check has passed: an overwrite clears
    the old run, a fresh start sets old logs aside, a resume appends."""
    if resume is None and main:
        if overwrite:
            outputs.clear_previous_run(output_dir)
        else:
            outputs.set_aside_previous_logs(output_dir)


@dataclass(frozen=True)
class RunData:
    """What the recipe prepared before the run: the corpus, its split, the prompt builder, the
    tokenizer and the folder of the tokenized rows' cache."""

    corpus: Corpus
    split: Split
    builder: PromptBuilder
    tokenizer: object  # a transformers tokenizer
    cache_dir: Path


def eval_interval(steps_per_epoch: int, evals_per_epoch: int) -> int:
    """Optimizer steps between evaluations (and the checkpoints saved with them)."""
    return max(1, steps_per_epoch // evals_per_epoch)


class TrainingRun:
    """One training run with its state on the object, as a torchtune recipe owns one: `prepare`
    tokenizes and plans (all a dry run does), `run` then sets up (opens the run folder and its
    log, builds the model and the Trainer), trains, and either stops cleanly or evaluates and saves."""

    last_end = process_start()  # a run's start-up is counted from here: launch, or a sweep's previous run
    initial = None  # initial_weights.InitialWeights of the sweep's latest model
    last_stop = None  # the previous run's StopRequest: its handler catches a signal between runs

    def __init__(self, opts, spec: RunSpec, checks: RunChecks, data: RunData, keep_initial: bool = False):
        """`keep_initial`: a sweep's run, which keeps its model's initial weights for the next."""
        self.opts, self.spec, self.config, self.checks, self.data = opts, spec, spec.config, checks, data
        self.keep_initial = keep_initial
        self.targs = self.stop = self.encoded = self.plan = self.runlog = None
        self.trainer = self.tally = self.trace = self.started = None

    @property
    def main(self) -> bool:
        return self.targs is None or self.targs.process_index == 0

    def prepare(self) -> tuple:
        """The run spec and the plan: tokenized rows (rank 0 first, the others reuse its cache),
        counts, schedule, budget and costs. Training arguments exist first (the DeepSpeed config
        they carry must precede the model) except in a dry run, which builds no model."""
        if not self.opts.dry_run:
            self.targs = training_arguments(self.opts, self.config, self.checks.device, self.checks.report_to)
        d, world = self.data, self.targs.world_size if self.targs else self.opts.nproc_per_node
        first = self.targs.main_process_first(local=False, desc="tokenizing") if self.targs \
            else contextlib.nullcontext()
        with first:
            tok = Tokenization(d.tokenizer, self.config.training.max_length, d.cache_dir, progress=self.main)
            self.encoded = encode_split(d.split, d.builder, tok, self.opts.resample_each_epoch)
        schedule = planning.Schedule(world, self.opts.max_epochs, self.opts.sec_per_step)
        self.plan = {**planning.make_plan(d.corpus, d.split, self.encoded, self.config.training, schedule,
                                          self.checks.costs),
                     "config": self.config.resolved(), "expert_parallel": self.checks.expert_parallel,
                     "device": self.checks.device.record()}
        preflight.require_trainable(d.corpus.path, self.plan["split"]["train_encoded"],
                                    self.plan["split"]["validation_encoded"])
        return self.spec, self.plan

    def write_dry_run(self) -> int:
        """The dry run's output: the plan with the split's audit, on the console and in plan.json
        (with the run spec training would record) and split_audit.json."""
        d, opts = self.data, self.opts
        audit = split_audit.audit_split(d.split, d.builder, d.corpus.samples,
                                        opts.max_epochs if opts.resample_each_epoch else 1)
        plan = {**self.plan, "notices": self.checks.notices, "split_audit": split_audit.summary(audit)}
        print(planning.format_plan(plan), flush=True)
        print(expert_parallel.describe(self.checks.expert_parallel), flush=True)
        outputs.write_json(outputs.run_path(opts.output_dir, "plan.json"), {**plan, "run_spec": self.spec.record()})
        outputs.write_json(outputs.run_path(opts.output_dir, split_audit.AUDIT_NAME),
                           {**audit, "run_spec": self.spec.record()})
        return 0

    def run(self) -> int:
        """Set up, train, then stop or save (after `prepare`), then let go of the model and the
        engine so that a sweep's next run starts clean. Returns the exit code."""
        code = self.stopped_between_runs()
        if code:
            return code
        self.setup()
        self.train()
        code = self.save()
        self.release()
        return code

    def stopped_between_runs(self) -> int:
        """A signal that came after a sweep's previous run ended (its handler is still installed)
        stops the sweep before this run starts; every rank agrees, as at a step's end."""
        previous = TrainingRun.last_stop
        if previous is None:
            return 0
        previous.agree(self.targs.device)
        if previous.signal is None:
            return 0
        if self.main:
            print(f"stopped before {self.opts.output_dir} started; resume the sweep with: {launch.resume_command()} "
                  f"--resume_from_checkpoint auto", file=sys.stderr, flush=True)
        return previous.exit_code

    def release(self):
        """Frees the engine, the model and accelerate's state: a second Accelerator with a DeepSpeed
        plugin in one process needs AcceleratorState cleared (accelerate has no public reset; the
        process group, PartialState, is kept for the next run)."""
        from accelerate.state import AcceleratorState, GradientState

        self.trainer.accelerator.free_memory()
        self.trainer = self.tally = self.detailed = None
        AcceleratorState._reset_state()
        GradientState._reset_state()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        TrainingRun.last_end = time.time()
        TrainingRun.last_stop = self.stop

    def setup(self):
        """Everything before the first step. The folder is first written once the plan exists."""
        from transformers import set_seed

        model_setup.settle_heap()

        tracking.apply_wandb_env(self.checks.wandb_env or {})
        # made again for this run: the DeepSpeed config HF's model loading reads is the newest one made
        self.targs = training_arguments(self.opts, self.config, self.checks.device, self.checks.report_to)
        self.stop = StopRequest()
        self.stop.install()
        self.targs.eval_steps = self.targs.save_steps = eval_interval(self.plan["schedule"]["steps_per_epoch"],
                                                                      self.config.training.evals_per_epoch)
        start_run_folder(self.opts.output_dir, self.opts.overwrite_output_dir, self.checks.resume, self.main)
        self.runlog = self.open_run_log()
        if self.main:
            self.spec.save(self.opts.output_dir)
        set_seed(self.targs.seed)
        self.trainer = self.make_trainer(self.build_model())

    def open_run_log(self) -> RunLog:
        """The detailed log's head (command, versions, notices, config, plan, three decoded samples),
        the split manifest and the wandb run."""
        opts, config, checks, device = self.opts, self.config, self.checks, self.checks.device
        runlog = RunLog(opts.output_dir, enabled=self.main)
        runlog.line(f"command: {shlex.join([sys.executable, *sys.argv])}")
        runlog.line(f"versions: {versions()} | world size {self.targs.world_size} | device "
                    f"{'cuda' if device.on_gpu else 'cpu'} | dtype {'bf16' if device.bf16 else 'fp32'} | "
                    f"attention {device.attn_implementation} | deepspeed {opts.deepspeed or 'off'} | "
                    f"batching {config.training.batching}")
        for notice in checks.notices:
            runlog.line(f"notice: {notice}")
            if self.main and notice not in checks.printed:
                print(notice, file=sys.stderr, flush=True)
        runlog.block("config (resolved, overrides listed)", json.dumps(config.resolved(), indent=2))
        runlog.block("plan", planning.format_plan(self.plan))
        if self.main:
            print(planning.format_plan(self.plan), flush=True)  # the console shows the plan once, then progress
            tracking.start_wandb(opts, self.spec, checks.report_to, expert_parallel=self.plan["expert_parallel"])
            write_manifest(opts.output_dir, self.encoded, opts.max_epochs)
            for n, row in enumerate(self.encoded.train_rows(0)[:3], 1):
                item = self.encoded.dataset[row]
                runlog.block(f"training sample {n} ({item['sample_id']}), supervised span between <<< and >>>",
                             decode_with_span(self.data.tokenizer, item["input_ids"], item["prompt_len"]))
        return runlog

    def build_model(self):
        """The model (LoRA-wrapped when configured), and the DeepSpeed settings that depend on it.
        Under ZeRO-3 a run whose model was built before starts from those initial weights instead
        of reading the model's files: a sweep's earlier run keeps them in host memory, and
        `--partition_cache` keeps a pretrained model's on disk for the next launch (initial_weights)."""
        zero3_on, key = self.checks.zero_stage == 3, None
        rank, world, device = self.targs.process_index, self.targs.world_size, self.targs.device
        entry = initial_weights.agreed_entry(self.checks.partition_cache) if zero3_on else None
        if zero3_on and (self.keep_initial or entry is not None):
            key = initial_weights.key_of(self.config, self.checks.device.dtype, world, self.checks.zero_config)
        started = time.time()
        kept, source = initial_weights.find(TrainingRun.initial, key, entry, rank, world, device)
        # from_pretrained draws no random number, from_config does: the run after it (LoRA's init) must not see that
        keep_rng = kept is not None and not self.config.model.random_init
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [],
                                   enabled=keep_rng):
            model = build_model(self.config, self.checks.device, deepspeed_zero3=zero3_on, read_weights=kept is None)
        source = source or ("drawn at random" if self.config.model.random_init else "read from the model's files")
        if kept is not None:
            initial_weights.restore(model, kept)
        elif key is not None:
            kept = initial_weights.capture(model, key)
            if entry is not None:
                source += "; " + initial_weights.write(entry, kept, rank, world, device)
        if self.keep_initial and kept is not None:
            TrainingRun.initial = kept
        self.runlog.line(f"initial weights: {source}, {time.time() - started:.1f} s")
        if self.config.lora:
            model = apply_lora(model, self.config.lora)
        self.runlog.line(describe_model(model))
        ds_config = getattr(self.targs, "hf_deepspeed_config", None)
        if ds_config is not None:
            sizes = zero3.fill_auto(ds_config.config, model, one_node=launch.local_world_size() == launch.world_size())
            if sizes:
                self.runlog.line("ZeRO-3 sizes from the largest unit gathered at once (chameleons/train/zero3.py): "
                                 + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        self.runlog.line(expert_parallel.configure(ds_config, self.checks.expert_parallel))
        return model

    def make_trainer(self, model) -> ChameleonsTrainer:
        """The Trainer with its callbacks: epoch rows, the per-step stop/loss reduction, early
        stopping and the detailed log; the plan's token budget splits micro-batches."""
        from transformers import EarlyStoppingCallback

        opts, config, runlog = self.opts, self.config, self.runlog
        train_rows = EpochRows(self.encoded)
        collate = make_collator(config.training.batching, self.data.tokenizer.pad_token_id)
        self.trace = []
        early = EarlyStoppingCallback(opts.early_stopping_patience, opts.early_stopping_threshold) \
            if opts.early_stopping_patience > 0 else None
        full_saves = saves.FullSavePolicy(config.training.full_checkpoint_minutes * 60)
        self.tally = StopCallback(self.stop, full_saves)
        peak, peak_note = flops.peak_flops(self.targs.device, config.training.peak_tflops)
        runlog.line(f"MFU: model FLOPs of active parameters only (chameleons/train/flops.py) against {peak_note}")
        throughput = Throughput(self.targs.world_size, peak)
        self.detailed = DetailedLogCallback(runlog, throughput, early, since=TrainingRun.last_end)
        callbacks = [EpochCallback(train_rows, runlog), self.tally] + ([early] if early else []) + [self.detailed]
        setup = TrainerSetup(batching=config.training.batching, router_aux_loss_coef=config.model.router_aux_loss_coef,
                             max_tokens_per_micro_batch=self.plan["micro_batches"]["budget"], collate=collate,
                             stop=self.stop, throughput=throughput, trace=self.trace, full_saves=full_saves,
                             unseen_rows=self.encoded.unseen_val_rows())
        return ChameleonsTrainer(
            model=model, args=self.targs, train_dataset=train_rows, data_collator=with_row_meta(collate),
            processing_class=self.data.tokenizer, callbacks=callbacks, eval_dataset=self.encoded.val_rows, setup=setup)

    def train(self):
        """Trains (from the checkpoint to resume, if any) until the end, early stopping or a stop."""
        trainer = self.trainer
        self.runlog.line(f"resuming from {self.checks.resume}" if self.checks.resume else "starting fresh")
        self.started = time.time()
        with diskspace.full_disk_is_one_line(self.opts.output_dir, DISK_FULL_THEN):
            trainer.train(resume_from_checkpoint=self.checks.resume)
        self.trained_at = time.time()
        write_trace(self.opts.output_dir, self.targs.process_index, self.trace)
        if trainer.max_tokens_per_micro_batch:
            self.runlog.line(f"token budget {trainer.max_tokens_per_micro_batch}: {trainer.split_micro_batches} "
                             f"micro-batches ran in parts")
        self.stop.agree(self.targs.device)  # a signal during the last step's save reaches one rank only

    def save(self) -> int:
        """A stopped run says how to continue; a finished one evaluates and saves. Returns the exit code."""
        with diskspace.full_disk_is_one_line(self.opts.output_dir, DISK_FULL_THEN):
            code = self.report_stop() if self.stop.exit_code else self.save_result()
        tracking.finish_wandb(code)
        return code

    def report_stop(self) -> int:
        """A stopped run says why and how to continue; its checkpoint is already saved."""
        stop, step = self.stop, self.trainer.state.global_step
        if stop.nonfinite and stop.signal is None:
            message = (f"non-finite training loss at step {step}: stopped; checkpoint-{step} is kept for inspection "
                       f"and is not resumable; lower the learning rate, or resume from the last complete checkpoint "
                       f"(--resume_from_checkpoint auto picks it)")
        else:
            message = f"stopped at step {step}, resume with: {launch.resume_command()} --resume_from_checkpoint auto"
        self.runlog.line(message)
        self.runlog.metrics("stopped", step=step, exit_code=stop.exit_code)
        if self.main:
            print(message, file=sys.stderr, flush=True)
        return stop.exit_code

    def save_result(self) -> int:
        """The best model's final eval loss, the model and tokenizer, the summary, the loss plot,
        and training_config.json last: its presence marks the run finished."""
        trainer, runlog, output_dir = self.trainer, self.runlog, self.opts.output_dir
        final_loss, line = trainer.final_evaluation()
        runlog.line(line)
        with timed(trainer.seconds, "export"):
            trainer.save_model(output_dir)
        final_fidelity.final_fidelity(self.opts, trainer, self.encoded, self.data, self.config.training.max_length,
                                      runlog)  # every rank
        if not self.main:
            return 0
        self.data.tokenizer.save_pretrained(output_dir)
        summary = {
            "global_step": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_runtime_s": round(time.time() - self.started, 1),
            "train_loss": self.tally.mean_loss,
            "train_tokens": int(self.tally.tokens),
            "best_eval_loss": trainer.state.best_metric,
            "final_eval_loss": final_loss,
            "best_model_checkpoint": trainer.state.best_model_checkpoint,
            "seconds": {**{k: round(v, 2) for k, v in sorted(trainer.seconds.items())},
                        "startup_to_first_step": self.detailed.startup_s,
                        "last_step_to_summary": round(time.time() - self.trained_at, 2)},
            **peak_memory(self.checks.device.on_gpu),
        }
        runlog.metrics("summary", **summary)
        plotted = plot_losses(runlog.metrics_path, runlog.dir / PLOT_NAME)
        runlog.block("summary", json.dumps(summary, indent=2))
        runlog.line(f"model and tokenizer: {output_dir}; log: {runlog.log_path}"
                    + (f"; loss curve: {runlog.dir / PLOT_NAME}" if plotted else ""))
        outputs.write_json(outputs.run_path(output_dir, outputs.FINISHED_MARKER), {
            "args": self.opts.as_record(), "config": self.config.resolved(), "versions": versions(),
            "world_size": trainer.args.world_size, "device": self.checks.device.record(), "plan": self.plan,
            "summary": summary,
        })
        return 0


def finish_distributed():
    """Destroying the process group avoids an abort seen at interpreter exit under ZeRO-3."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

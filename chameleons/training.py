"""Model, HF Trainer and the run around them: the training half of the recipe.

Order matters under ZeRO-3: TrainingArguments (which carry the DeepSpeed config) exist before
the model is created, so `from_pretrained` builds it already partitioned.
"""

import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from . import (attention, checkpoints, diskspace, expert_parallel, final_fidelity, flops, launch, model_spec, outputs,
               planning, preflight, run_record, saves, tracking, zero3)
from .batching import (EpochSampler, check_packing_supported, make_collator, split_to_budget,
                       trainer_args_for_batching)
from .encoding import encode_split
from .errors import UserError
from .loss import causal_lm_loss, causal_lm_of
from .runlog import PLOT_NAME, DetailedLogCallback, RunLog, Throughput, decode_with_span, plot_losses
from .stopping import StopCallback, StopRequest

DISK_FULL_THEN = (f"a checkpoint being written stays incomplete (no {checkpoints.COMPLETE_MARKER}), and "
                  f"--resume_from_checkpoint auto skips it; free space, then resume with --resume_from_checkpoint auto")


class EpochRows(torch.utils.data.Dataset):
    """Training rows of the current epoch; the length is the same every epoch."""

    def __init__(self, encoded):
        self.encoded = encoded
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        if epoch != self.epoch:
            self.epoch = epoch
            self.rows = self.encoded.train_rows(epoch)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        item = self.encoded.dataset[row]
        return {"input_ids": item["input_ids"], "prompt_len": item["prompt_len"], "length": item["length"], "row": row}


def with_row_meta(collate):
    """Adds each batch's dataset rows and per-sample token counts as plain lists (no device
    copies, no syncs): the run records what it trained on and counts tokens and FLOPs."""

    def collate_rows(rows):
        batch = collate([{k: v for k, v in r.items() if k != "row"} for r in rows])
        batch["meta"] = {"rows": [r["row"] for r in rows],
                         "lengths": [r["length"] for r in rows],
                         "supervised": [r["length"] - r["prompt_len"] for r in rows]}
        return batch

    return collate_rows


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch is starting (also after a resume in mid-epoch) and logs how
    much of the pool the run has now seen. The Trainer's own `set_epoch` goes to the sampler,
    not to the dataset, so the dataset learns its epoch here."""

    def __init__(self, dataset, runlog):
        self.dataset = dataset
        self.runlog = runlog

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(math.floor(state.epoch + 1e-9))
        self.dataset.set_epoch(epoch)
        encoded = self.dataset.encoded
        if not encoded.resample:
            return
        earlier = set()
        for e in range(epoch):
            earlier.update(encoded.train_rows(e))
        rows = self.dataset.rows
        new = sum(1 for r in rows if r not in earlier)
        pool = sum(len(m) for m in encoded.split.pool.values())
        coverage = len(earlier | set(rows)) / max(1, pool)
        self.runlog.line(f"epoch {epoch}: {len(rows)} training samples, {new} not seen in earlier epochs, "
                         f"pool coverage {coverage:.1%} of {pool}")
        self.runlog.metrics("epoch", epoch=epoch, samples=len(rows), new_samples=new, pool_coverage=coverage)


def device_settings(disable_flash_attn: bool, attn_config: str, batching: str = "padded"):
    """bf16 + flash-attention 2 on a GPU when available, fp32 + SDPA on CPU. Packed rows without
    flash-attention: flex_attention with transformers' document mask on a GPU (a library kernel),
    SDPA per sample (`sdpa_varlen`) on CPU, where flex_attention has no backward."""
    notices = []
    on_gpu = torch.cuda.is_available()
    if on_gpu and torch.cuda.device_count() > 1 and not launch.launched():
        raise UserError(f"{torch.cuda.device_count()} GPUs are visible but the trainer was not started by torchrun "
                        f"or srun: HF Trainer would run nn.DataParallel with a {torch.cuda.device_count()}x batch; "
                        f"launch with torchrun --nproc_per_node={torch.cuda.device_count()}, or set "
                        f"CUDA_VISIBLE_DEVICES to one GPU")
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    attn = attn_config
    if attn == "auto":
        attn = "sdpa"
        if on_gpu and not disable_flash_attn and _flash_attn_installed():
            attn = "flash_attention_2"
        elif on_gpu and batching == "packed":
            attn = attention.GPU_PACKED
            notices.append(f"flash-attention 2 is {'disabled' if disable_flash_attn else 'not installed'}: packed "
                           f"batches use {attn} (PyTorch's kernel, each sample masked to itself)")
        elif on_gpu and not disable_flash_attn:
            notices.append("flash-attention 2 is not installed: using SDPA attention")
    elif attn == "flash_attention_2" and (disable_flash_attn or not on_gpu):
        attn = "sdpa"
        notices.append("flash-attention 2 needs a GPU and is not disabled: using SDPA attention")
    elif attn == "flash_attention_2" and not _flash_attn_installed():
        raise UserError("model.attn_implementation flash_attention_2: the flash-attn package is not installed "
                        "(pip install flash-attn), or choose auto or sdpa")
    if attn == "sdpa" and batching == "packed":
        attention.register()
        attn = attention.NAME
    return {"on_gpu": on_gpu, "bf16": bf16, "attn_implementation": attn, "notices": notices}


def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def training_arguments(opts, config, device, report_to):
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
        bf16=device["bf16"],
        use_cpu=not device["on_gpu"],
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


def build_model(config, device, deepspeed_zero3: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    m = config.model
    dtype = torch.bfloat16 if device["bf16"] else torch.float32
    extra = {}
    if m.experts_implementation != "auto":
        extra["experts_implementation"] = m.experts_implementation
    if deepspeed_zero3 and not device["on_gpu"]:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    if m.random_init:
        spec = dict(m.random_init)
        model_config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        _router_settings(model_config, m.router_aux_loss_coef)
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype,
                                                 attn_implementation=device["attn_implementation"], **extra)
    else:
        try:
            model_config = AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code)
        except OSError as exc:
            raise UserError(f"model {m.name_or_path!r} could not be loaded: {str(exc).splitlines()[0]}") from None
        _router_settings(model_config, m.router_aux_loss_coef)
        model = AutoModelForCausalLM.from_pretrained(m.name_or_path, config=model_config, dtype=dtype,
                                                     attn_implementation=device["attn_implementation"],
                                                     trust_remote_code=m.trust_remote_code, **extra)
    if deepspeed_zero3:
        register_moe_leaves(model)
    model.config.use_cache = False
    return model


def _router_settings(model_config, coef):
    if hasattr(model_config, "router_aux_loss_coef"):
        model_config.router_aux_loss_coef = coef
        model_config.output_router_logits = coef > 0


def register_moe_leaves(model):
    """ZeRO-3 must gather a sparse MoE block as one unit, or ranks that route to different
    experts wait on each other forever."""
    from deepspeed.utils import set_z3_leaf_modules

    classes = sorted({type(m) for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")},
                     key=lambda c: c.__name__)
    if classes:
        set_z3_leaf_modules(model, classes)
    return classes


def apply_lora(model, lora):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM"))


class ChameleonsTrainer(Trainer):
    """HF Trainer with the loss as the true mean token loss, an exact evaluation, strict MoE
    reloads and resumes that continue exactly where the run stopped."""

    def __init__(self, *a, throughput, stop, collate, router_aux_loss_coef, trace, batching="padded",
                 max_tokens_per_micro_batch=None, full_saves=None, **kw):
        super().__init__(*a, **kw)
        self.batching = batching
        self.full_saves = full_saves  # saves.FullSavePolicy; None: every save is resumable
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.split_micro_batches = 0
        self.model_config = causal_lm_of(self.model).config
        self.model_accepts_loss_kwargs = True
        self.throughput = throughput
        self.stop = stop
        self.collate_eval = collate
        self.router_aux_loss_coef = router_aux_loss_coef
        self.trace = trace

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A packed micro-batch over `training.max_tokens_per_micro_batch` runs as consecutive parts
        (as many on every rank), gradients accumulated before the one optimizer step: the same
        step, within the memory budget."""
        parts = split_to_budget(inputs, self.max_tokens_per_micro_batch, self.args.device)
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        self.split_micro_batches += 1
        sync, total = self.accelerator.sync_gradients, 0
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            self.accelerator.gradient_state._set_sync_gradients(sync and last)  # DeepSpeed: step after the last part
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                total = total + super().training_step(model, part, num_items_in_batch)
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Replaces HF's loss: token cross-entropy over supervised positions only (chameleons/loss.py)."""
        inputs.pop("meta", None)
        inputs.pop("length", None)
        loss, n_tokens = causal_lm_loss(model, inputs, num_items_in_batch,
                                        self.router_aux_loss_coef if model.training else 0.0)
        if model.training:
            if self.stop is not None:
                self.stop.add_loss(loss.detach() * (num_items_in_batch if num_items_in_batch is not None else n_tokens),
                                   n_tokens)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def floating_point_ops(self, inputs):
        """Replaces HF's count (6 x all parameters x padded tokens) for `total_flos`: the MoE-aware
        model FLOPs of this training micro-batch (chameleons/flops.py); also records its rows and
        tokens for the data-order trace and the log's throughput."""
        meta = inputs.get("meta")
        if meta is None:
            return super().floating_point_ops(inputs)
        if self.trace is not None:
            self.trace.append(meta["rows"])
        model_flops = flops.train_flops(self.model_config, meta["lengths"], meta["supervised"])
        if self.throughput is not None:
            self.throughput.add(sum(meta["lengths"]), int(inputs["input_ids"].numel()), model_flops)
        return model_flops

    def _get_train_sampler(self, train_dataset=None):
        """Replaces HF's samplers: each epoch's order depends on the seed, the epoch and the samples
        per optimizer step, not on the micro-batch layout (batching.EpochSampler)."""
        ds = train_dataset if train_dataset is not None else self.train_dataset
        a = self.args
        per_step = a.train_batch_size * a.gradient_accumulation_steps * a.world_size
        if self.batching != "length_grouped":
            return EpochSampler(ds, per_step, seed=a.seed)
        lengths = ds.encoded.lengths
        return EpochSampler(ds, per_step, seed=a.seed, lengths=lambda: [lengths[r] for r in ds.rows],
                            group_size=a.train_batch_size * a.gradient_accumulation_steps)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Replaces HF's evaluation: the mean token loss over the whole validation set (summed, then
        divided once), the same number of forward passes on every rank so ZeRO-3's collectives line up."""
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        model.eval()
        world, rank = self.args.world_size, self.args.process_index
        bs = self.args.per_device_eval_batch_size
        rows = self.eval_dataset  # validation row numbers of the encoded dataset
        batches = [rows[i:i + bs] for i in range(0, len(rows), bs)]
        mine = batches[rank::world]
        n_rounds = math.ceil(len(batches) / world)
        total = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for k in range(n_rounds):
                rows = mine[k] if k < len(mine) else batches[0]
                batch = self.collate_eval([self.eval_item(r) for r in rows])
                batch = self._prepare_inputs(batch)
                loss_sum, n = causal_lm_loss(model, batch, num_items_in_batch=1, router_aux_loss_coef=0.0)
                if k < len(mine):
                    total += torch.stack([loss_sum.double().detach(), n.double().to(total.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        metrics = {f"{metric_key_prefix}_loss": loss, f"{metric_key_prefix}_tokens": int(total[1].item())}
        if metric_key_prefix == "eval":
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        model.train()
        return metrics

    def eval_item(self, row):
        item = self.train_dataset.encoded.dataset[row]
        return {"input_ids": item["input_ids"], "prompt_len": item["prompt_len"], "length": item["length"]}

    def _load_best_model(self):
        """Replaces HF's best-model load. ZeRO-3: each rank reads its own weight partition of the
        best checkpoint (saves.load_partitions), not DeepSpeed's full states. Outside DeepSpeed HF's
        load is non-strict and skips MoE experts saved per expert (the model holds them fused;
        transformers#48805): reload strictly. A stopped run exits as it is: its checkpoint is
        saved, the best model is not needed."""
        if self.stop is not None and (self.stop.signal or self.stop.nonfinite):
            return
        best = self.state.best_model_checkpoint
        if self._zero3_weights() and saves.partition_file(best, self.args.process_index, self.args.world_size).is_file():
            saves.load_partitions(self.model_wrapped, self.model, best, self.args.process_index, self.args.world_size)
            return
        if self.is_deepspeed_enabled or hasattr(self.model, "peft_config"):
            return super()._load_best_model()
        self._load_strict(best)

    def _zero3_weights(self) -> bool:
        """ZeRO-3 without LoRA: checkpoints carry each rank's weight partition."""
        return (self.is_deepspeed_enabled and self.args.hf_deepspeed_config.is_zero3()
                and not hasattr(self.model, "peft_config"))

    def _weights_only_save(self) -> bool:
        """This save may skip the resumable state: no stop, the full-save interval not due, and a
        setup whose best model restores from weights alone (ZeRO-3 without LoRA, or no DeepSpeed)."""
        stopping = self.stop is not None and (self.stop.signal or self.stop.nonfinite)
        policy = self.full_saves
        if stopping or policy is None or policy.interval_s <= 0 or policy.agreed:
            return False
        return self._zero3_weights() or not self.is_deepspeed_enabled

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Replaces HF's resume load outside DeepSpeed: the same non-strict load as the best-model restore."""
        if self.is_deepspeed_enabled or hasattr(self.model, "peft_config") or model is not None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_strict(resume_from_checkpoint)

    def _load_strict(self, checkpoint):
        saved = type(self.model).from_pretrained(checkpoint, dtype=self.model.dtype)
        self.model.load_state_dict(saved.state_dict(), strict=True)

    def _load_callback_state(self):
        """Replaces HF's callback restore on resume, which builds new callback objects and appends
        them last: references held elsewhere (the log's patience line) go stale and the call order
        changes. Restores the saved attributes in place (early-stopping patience, the loss tally),
        leaves TrainerControl's flags of the save moment alone, and finds the best checkpoint in this
        output folder, where HF drops a path that does not resolve from the current directory."""
        if self.args.restore_callback_states_from_checkpoint:
            by_name = {}
            for cb in self.callback_handler.callbacks:
                by_name.setdefault(type(cb).__name__, []).append(cb)
            for name, saved in self.state.stateful_callbacks.items():
                for cb, data in zip(by_name.get(name, []), saved if isinstance(saved, list) else [saved]):
                    for attribute, value in data.get("attributes", {}).items():
                        setattr(cb, attribute, value)
        if self.state.best_global_step:
            best = os.path.join(self.args.output_dir, f"checkpoint-{self.state.best_global_step}")
            if os.path.isdir(best):
                self.state.best_model_checkpoint = best

    def save_model(self, output_dir=None, _internal_call=False):
        """Under ZeRO-3 a checkpoint keeps every rank's own weight partition (the best-model
        restore reads those) and, when resumable, DeepSpeed's partitioned states (written by HF's
        optimizer save); DeepSpeed's zero_to_fp32.py rebuilds weights from the latter. The
        gathered bf16 model (57 GiB for Qwen3-30B-A3B, assembled in rank 0's host RAM while the
        other ranks wait) is written once, by the final save of the best model."""
        if _internal_call and self._zero3_weights():
            if self.args.should_save:  # the folder must exist now: HF records the best checkpoint only if it does
                self.model.config.save_pretrained(output_dir)
            saves.save_partitions(self.model, output_dir, self.args.process_index, self.args.world_size)
            return
        if not _internal_call and self.is_deepspeed_enabled and expert_parallel.autoep_layers(self.model):
            expert_parallel.save_hf_model(self.model, output_dir or self.args.output_dir, self.args.should_save)
            torch.distributed.barrier()
            return
        super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial):
        """An evaluation-time save keeps the weights only (HF's `save_only_model` skips the
        optimizer, scheduler and RNG states) unless a full one is due (saves.FullSavePolicy) or
        the run is stopping. Marks the checkpoint once every rank has saved, and rotates so that
        the newest resumable checkpoint survives. A non-finite checkpoint is kept for
        inspection only: it is not marked and rotates nothing away."""
        weights_only = self._weights_only_save()
        limit, only_model = self.args.save_total_limit, self.args.save_only_model
        self.args.save_total_limit, self.args.save_only_model = None, weights_only or only_model
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit, self.args.save_only_model = limit, only_model
        run_dir = self._get_output_dir(trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if self.full_saves is not None and not weights_only:
            self.full_saves.saved()
        if self.args.should_save and not (self.stop is not None and self.stop.nonfinite):
            expert_parallel.record(folder, self.model)
            (checkpoints.mark_weights_only if weights_only else checkpoints.mark_complete)(folder)
            if limit:
                self._rotate(run_dir, limit)

    def _rotate(self, run_dir, limit):
        found = []
        for path in Path(run_dir).glob("checkpoint-*"):
            if path.is_dir() and path.name.split("-")[-1].isdigit():
                found.append((int(path.name.split("-")[-1]), str(path), checkpoints.is_complete(path)))
        full = [f for f in found if f[2]]
        newest_full = max(full)[1] if full else None
        best = self.state.best_model_checkpoint
        for path in saves.to_delete(found, limit, best and str(Path(best)), newest_full):
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class RunChecks:
    """What the checks before any write found: the run starts from it."""

    resume: str
    device: dict
    zero_stage: int | None
    report_to: list
    notices: list
    expert_parallel: dict
    costs: dict | None = None  # planning.model_costs: the plan's checkpoint and memory figures


def check_run(opts, config, inputs) -> RunChecks:
    """The checks that need torch and transformers, after those of `preflight.check_inputs` (whose
    findings `inputs` carries): everything is checked before the first byte is written (the dry
    run calls this too, so a plan it makes does not fail at training start)."""
    device = device_settings(opts.disable_flash_attn, config.model.attn_implementation, config.training.batching)
    if config.training.batching == "packed":
        check_packing_supported(device["attn_implementation"])
    if config.model.random_init:
        model_spec.check_random_init(config)
    ep_plan = expert_parallel.plan_for_run(opts, inputs.zero_stage, config)
    expert_parallel.check_resume(inputs.resume, ep_plan)
    world, per_node = ((opts.nproc_per_node, opts.nproc_per_node) if opts.dry_run
                       else (launch.world_size(), launch.local_world_size()))
    costs = planning.model_costs(config, inputs.zero_stage, world, per_node)
    disk_notice = diskspace.check_run_space(opts.output_dir, costs["checkpoints"])
    return RunChecks(resume=inputs.resume, device=device, zero_stage=inputs.zero_stage, report_to=inputs.report_to,
                     notices=inputs.notices + device["notices"] + ([disk_notice] if disk_notice else []),
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
        if not stop.exit_code:
            final_fidelity.final_fidelity(opts, trainer, encoded, tokenizer, runlog)
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
                f"{'cuda' if device['on_gpu'] else 'cpu'} | dtype {'bf16' if device['bf16'] else 'fp32'} | "
                f"attention {device['attn_implementation']} | deepspeed {opts.deepspeed or 'off'} | "
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
    trainer = ChameleonsTrainer(
        model=model, args=targs, train_dataset=train_rows, data_collator=with_row_meta(collate),
        processing_class=tokenizer, callbacks=callbacks, throughput=throughput, stop=stop,
        eval_dataset=encoded.val_rows, collate=collate, batching=config.training.batching,
        router_aux_loss_coef=config.model.router_aux_loss_coef, trace=trace,
        max_tokens_per_micro_batch=budget, full_saves=full_saves)
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
        "device": {k: v for k, v in checks.device.items() if k != "notices"}, "plan": plan, "summary": summary,
    })
    return 0


def describe_model(model) -> str:
    """Which implementations really run (transformers may fall back), and the size."""
    lm = causal_lm_of(model)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    cfg = lm.config
    return (f"model: {type(lm).__name__}, {total / 1e6:,.1f} M parameters ({trainable / 1e6:,.1f} M trainable), "
            f"attention {getattr(cfg, '_attn_implementation', 'n/a')}, "
            f"experts {getattr(cfg, '_experts_implementation', None) or 'n/a'}, dtype {lm.dtype}")


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

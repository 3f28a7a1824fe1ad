"""The HF Trainer subclass and the pieces the run hands it: each epoch's rows as a dataset, the
collator that adds the rows and token counts to a batch, and the callback that moves the epoch."""

import contextlib
import math
import os
import time
from collections import Counter
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback

from . import expert_parallel, export, flops, saves
from .runlog import LogWindow
from ..text.batching import BatchMeta, EpochSampler, split_to_budget
from ..text.loss import causal_lm_loss, causal_lm_of
from ..run import checkpoints


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
        batch["meta"] = BatchMeta(rows=[r["row"] for r in rows], lengths=[r["length"] for r in rows],
                                  supervised=[r["length"] - r["prompt_len"] for r in rows])
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



@dataclass(frozen=True)
class TrainerSetup:
    """What ChameleonsTrainer takes beyond HF's arguments: settings, and the objects it shares
    with the run. The defaults are a bare trainer (tests): no stop, no log, no trace."""

    batching: str = "padded"
    router_aux_loss_coef: float = 0.0
    max_tokens_per_micro_batch: int | None = None  # the plan's token budget
    collate: object = None  # the evaluation collator (batches without `meta`)
    stop: object = None  # stopping.StopRequest
    throughput: object = None  # runlog.Throughput: tokens and FLOPs for the log
    trace: list | None = None  # the dataset rows of every micro-batch, appended in order
    full_saves: object = None  # saves.FullSavePolicy; None: every save is resumable
    unseen_rows: frozenset = frozenset()  # validation rows of characters without training samples


@contextlib.contextmanager
def timed(seconds: Counter, what: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[what] += time.perf_counter() - start


class ChameleonsTrainer(Trainer):
    """HF Trainer with the loss as the true mean token loss, an exact evaluation, strict MoE
    reloads and resumes that continue exactly where the run stopped."""

    def __init__(self, *a, setup: TrainerSetup = TrainerSetup(), **kw):
        super().__init__(*a, **kw)
        self.batching = setup.batching
        self.full_saves = setup.full_saves
        self.max_tokens_per_micro_batch = setup.max_tokens_per_micro_batch
        self.split_micro_batches = 0
        self.model_config = causal_lm_of(self.model).config
        self.model_accepts_loss_kwargs = True
        self.throughput = setup.throughput
        self.stop = setup.stop
        self.collate_eval = setup.collate
        self.router_aux_loss_coef = setup.router_aux_loss_coef
        self.trace = setup.trace
        self.unseen_rows = setup.unseen_rows
        self.seconds = Counter()  # wall-clock of the saves and the best-model restore (the run's summary)
        self.best_in_memory = False  # the best evaluation was of the weights training ended with
        self.log_window = LogWindow(self, self.throughput)
        self.add_callback(self.log_window)

    def log(self, logs: dict, start_time=None):
        """Adds the run's own figures (tokens/s, padding, MFU, perplexity) to HF's logs before any
        reporter sees them, so wandb, TensorBoard, the console and the detailed log get the same."""
        if self.throughput is not None:
            logs.update(self.throughput.figures(logs, self.args.device))
        super().log(logs, start_time)

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
        """Replaces HF's loss: token cross-entropy over supervised positions only (chameleons/text/loss.py)."""
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
        model FLOPs of this training micro-batch (chameleons/train/flops.py); also records its rows and
        tokens for the data-order trace and the log's throughput."""
        meta = inputs.get("meta")
        if meta is None:
            return super().floating_point_ops(inputs)
        if self.trace is not None:
            self.trace.append(meta.rows)
        model_flops = flops.train_flops(self.model_config, meta.lengths, meta.supervised)
        if self.throughput is not None:
            self.throughput.add(sum(meta.lengths), int(inputs["input_ids"].numel()), model_flops)
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
        divided once), the same number of forward passes on every rank so ZeRO-3's collectives line up.
        Also apart: the loss of validation characters the run trained on and of those it did not
        (batches never mix the two)."""
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        model.eval()
        world, rank = self.args.world_size, self.args.process_index
        bs = self.args.per_device_eval_batch_size
        rows = self.eval_dataset  # validation row numbers of the encoded dataset
        kinds = ([r for r in rows if r not in self.unseen_rows], [r for r in rows if r in self.unseen_rows])
        batches = [(kind, part[i:i + bs]) for kind, part in enumerate(kinds) for i in range(0, len(part), bs)]
        mine = batches[rank::world]
        total = torch.zeros(2, 2, dtype=torch.float64, device=self.args.device)  # [trained, unseen] x [loss, tokens]
        with torch.no_grad():
            for k in range(math.ceil(len(batches) / world)):
                kind, rows = mine[k] if k < len(mine) else batches[0]
                batch = self._prepare_inputs(self.collate_eval([self.eval_item(r) for r in rows]))
                loss_sum, n = causal_lm_loss(model, batch, num_items_in_batch=1, router_aux_loss_coef=0.0)
                if k < len(mine):
                    total[kind] += torch.stack([loss_sum.double().detach(), n.double().to(total.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        both = total.sum(dim=0)
        mean = lambda t: (t[0] / t[1]).item() if t[1] > 0 else float("nan")  # noqa: E731
        metrics = {f"{metric_key_prefix}_loss": mean(both), f"{metric_key_prefix}_tokens": int(both[1].item()),
                   f"{metric_key_prefix}_loss_trained_characters": mean(total[0]),
                   f"{metric_key_prefix}_loss_unseen_characters": mean(total[1]),
                   f"{metric_key_prefix}_tokens_unseen_characters": int(total[1][1].item())}
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
        self.best_in_memory = self.state.best_global_step == self.state.global_step
        if self.best_in_memory:  # the last evaluation's weights are the best: nothing to read back
            self.seconds["best_model_restore"] += 0
            return
        with timed(self.seconds, "best_model_restore"):
            self._restore_best()

    def final_evaluation(self) -> tuple:
        """(the best model's eval loss, the log's line about it): a restored model is evaluated again,
        the check that the restore worked; the last step's weights, when best, as evaluated there."""
        best, checkpoint = self.state.best_metric, self.state.best_model_checkpoint
        if self.best_in_memory:
            return best, (f"best model: the weights of the last step, evaluated there (eval_loss {best:.4f}); "
                          f"kept as they are, not read back from {checkpoint}")
        final = self.evaluate(metric_key_prefix="final")["final_loss"]
        return final, f"best model restored from {checkpoint}: final eval_loss {final:.4f} (best recorded {best:.4f})"

    def _restore_best(self):
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
        final model is written once, by the final save of the best model, as Hugging Face shards
        every rank writes its own of (`export`: not gathered in rank 0's host RAM)."""
        if _internal_call and self._zero3_weights():
            if self.args.should_save:  # the folder must exist now: HF records the best checkpoint only if it does
                self.model.config.save_pretrained(output_dir)
            saves.save_partitions(self.model, output_dir, self.args.process_index, self.args.world_size)
            return
        if not _internal_call and self._zero3_weights():
            export.save_sharded(self.model, output_dir or self.args.output_dir, self.args.process_index,
                                self.args.world_size)
            return
        super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial):
        """An evaluation-time save keeps the weights only (HF's `save_only_model` skips the
        optimizer, scheduler and RNG states) unless a full one is due (saves.FullSavePolicy) or
        the run is stopping. Marks the checkpoint once every rank has saved, and rotates so that
        the newest resumable checkpoint survives. A non-finite checkpoint is kept for
        inspection only: it is not marked and rotates nothing away."""
        weights_only = self._weights_only_save()
        self.log_window.capture()
        limit, only_model = self.args.save_total_limit, self.args.save_only_model
        self.args.save_total_limit, self.args.save_only_model = None, weights_only or only_model
        try:
            with timed(self.seconds, "weights_only_saves" if weights_only else "resumable_saves"):
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
                saves.rotate(run_dir, limit, self.state.best_model_checkpoint)

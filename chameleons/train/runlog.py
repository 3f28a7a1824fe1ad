"""What a person watching `tail -f` sees: the detailed log, metrics.jsonl and the loss curve.

Only rank 0 writes. Every line is flushed as it happens.
"""

import json
import math
import time
from datetime import timedelta
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


LOG_DIR = "training_logs"
LOG_NAME = "detailed_training_log.txt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss_curve.png"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0, seconds))))


class RunLog:
    """Appends to the detailed log and metrics.jsonl (rank 0 only; other ranks write nothing)."""

    def __init__(self, output_dir, enabled: bool):
        self.enabled = enabled
        self.dir = Path(output_dir, LOG_DIR)
        self.log_path = self.dir / LOG_NAME
        self.metrics_path = self.dir / METRICS_NAME
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def line(self, text: str = ""):
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as f:
            for part in str(text).splitlines() or [""]:
                f.write(f"[{stamp}] {part}\n")

    def block(self, title: str, text: str):
        self.line(f"== {title}")
        self.line(text)

    def metrics(self, event: str, **values):
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **values}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.item()
    return str(value)


def decode_with_span(tokenizer, input_ids, prompt_len: int) -> str:
    """The sample as the model sees it, the supervised span between <<< and >>>."""
    prompt = tokenizer.decode(input_ids[:prompt_len])
    target = tokenizer.decode(input_ids[prompt_len:])
    return f"{prompt}<<<{target}>>>"


class Throughput:
    """Real (non-padding) tokens, computed token slots and model FLOPs since the last log, filled
    in by the trainer, summed over ranks when logged and turned into the figures every reporter
    gets (`ChameleonsTrainer.log` adds them to HF's logs)."""

    def __init__(self, world_size: int = 1, peak_flops=None):
        self.world_size = world_size
        self.peak_flops = peak_flops  # per device; None (CPU, unknown GPU): no MFU
        self.real = self.slots = self.flops = 0
        self.last_time = time.time()

    def add(self, real: int, slots: int, flops: float = 0.0):
        self.real += real
        self.slots += slots
        self.flops += flops

    def take(self, device):
        counts = torch.tensor([self.real, self.slots, self.flops], dtype=torch.float64, device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        self.real = self.slots = self.flops = 0
        return tuple(c.item() for c in counts)

    def figures(self, logs: dict, device) -> dict:
        """Tokens/s, padding, model TFLOP/s and MFU since the last training log (every rank: the
        counts are summed over ranks), and the perplexity of an evaluation."""
        out = {}
        if "loss" in logs:
            real, slots, flops = self.take(device)
            now = time.time()
            span, self.last_time = max(now - self.last_time, 1e-9), now
            out = {"tokens": int(real), "tokens_per_s": real / span,
                   "tokens_per_s_per_gpu": real / span / self.world_size,
                   "padding_share": 1 - real / slots if slots else 0.0, "model_tflops_per_s": flops / span / 1e12}
            if self.peak_flops:
                out["mfu"] = flops / (span * self.peak_flops * self.world_size)
        if "eval_loss" in logs:
            out["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50))
        return out


class LogWindow(TrainerCallback, ExportableState):
    """What the next training log adds up since the last one, kept in every checkpoint: a run
    stopped between two logs and resumed would otherwise log, at the next one, only the steps
    since the resume (HF starts its running loss from zero), not what its uninterrupted twin
    logs. Per rank: HF's running loss (`_tr_loss`) and the `Throughput` counts; and the step last
    logged. `capture` runs on every rank before a checkpoint's trainer_state.json is written."""

    def __init__(self, trainer, throughput=None):
        self.trainer = trainer
        self.throughput = throughput
        self.last_logged = None  # None: nothing to restore (a fresh run, or a checkpoint without it)
        self.by_rank = []  # [running loss, real tokens, token slots, FLOPs] of each rank

    def capture(self):
        t, tp = self.trainer, self.throughput
        counts = [tp.real, tp.slots, tp.flops] if tp is not None else [0, 0, 0.0]
        mine = torch.tensor([t._tr_loss.item(), *counts], dtype=torch.float64, device=t.args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(every, mine)
        else:
            every = [mine]
        self.by_rank = [v.tolist() for v in every]
        self.last_logged = t._globalstep_last_logged

    def on_train_begin(self, args, state, control, **kwargs):
        """After HF zeroed its running loss; restores the window of the checkpoint resumed from."""
        if self.last_logged is None or len(self.by_rank) != args.world_size:
            return
        loss, real, slots, flops = self.by_rank[args.process_index]
        self.trainer._tr_loss.fill_(loss)
        self.trainer._globalstep_last_logged = self.last_logged
        if self.throughput is not None:
            self.throughput.real, self.throughput.slots, self.throughput.flops = int(real), int(slots), flops
        self.last_logged = None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"last_logged": self.last_logged, "by_rank": self.by_rank}}


def process_start() -> float:
    """When this process started (the entry script imports `launch` first thing)."""
    from ..core.launch import STARTED

    return STARTED


class DetailedLogCallback(TrainerCallback):
    def __init__(self, runlog: RunLog, throughput: Throughput, early_stopping=None, since: float | None = None):
        self.since = process_start() if since is None else since  # start-up counts from here
        self.log = runlog
        self.throughput = throughput
        self.early_stopping = early_stopping
        self.start = None
        self.best = None
        self.startup_s = None  # launch (process start) to the end of the first optimizer step

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.throughput.last_time = time.time()
        self.best = state.best_metric  # restored on resume
        self.log.line(f"training: {state.max_steps} optimizer steps at most, evaluation every {args.eval_steps} steps")

    def on_step_end(self, args, state, control, **kwargs):
        if self.startup_s is None:
            self.startup_s = round(time.time() - self.since, 1)
            self.log.line(f"start-up: {self.startup_s} s from launch (in a sweep: from the previous run's end) to "
                          f"the end of the first optimizer step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The step line and metrics.jsonl, from the figures `Throughput.figures` added to the logs."""
        logs = logs or {}
        if "loss" in logs and "tokens_per_s" in logs:
            elapsed = time.time() - self.start
            eta = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
            grad, mfu, tok_s = logs.get("grad_norm"), logs.get("mfu"), logs["tokens_per_s"]
            self.log.line(
                f"step {state.global_step}/{state.max_steps} | epoch {state.epoch:.2f} | loss {logs['loss']:.4f} | "
                f"lr {logs.get('learning_rate', 0):.3e} | grad_norm {grad if grad is None else f'{grad:.3f}'} | "
                f"tokens/s {tok_s:,.0f} ({logs['tokens_per_s_per_gpu']:,.0f}/gpu) | "
                f"padding {logs['padding_share']:.1%} | " + (f"MFU {mfu:.1%} | " if mfu is not None else "") +
                f"elapsed {_clock(elapsed)} | eta {_clock(eta)}")
            self.log.metrics("train", step=state.global_step, epoch=state.epoch, loss=logs["loss"],
                             learning_rate=logs.get("learning_rate"), grad_norm=grad, tokens=logs["tokens"],
                             tokens_per_s=tok_s, tokens_per_s_per_gpu=logs["tokens_per_s_per_gpu"],
                             padding_share=logs["padding_share"], model_tflops_per_s=logs["model_tflops_per_s"],
                             mfu=mfu)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        improved = self.best is None or loss < self.best
        self.best = loss if improved else self.best
        patience = ""
        if self.early_stopping is not None:
            left = self.early_stopping.early_stopping_patience - self.early_stopping.early_stopping_patience_counter
            patience = f" | patience left {left}"
        trained, unseen = (_number(metrics.get(f"eval_loss_{kind}_characters")) for kind in ("trained", "unseen"))
        apart = "" if "eval_loss_trained_characters" not in metrics else (
            f" | characters trained on {'none' if trained is None else f'{trained:.4f}'}, unseen "
            f"{'none' if unseen is None else f'{unseen:.4f}'}")
        self.log.line(f"eval step {state.global_step} | epoch {state.epoch:.2f} | eval_loss {loss:.4f} | "
                      f"perplexity {math.exp(min(loss, 50)):.2f} | best {self.best:.4f}{' (new best)' if improved else ''}"
                      f"{apart}{patience}")
        self.log.metrics("eval", step=state.global_step, epoch=state.epoch, eval_loss=loss, best=self.best,
                         eval_tokens=metrics.get("eval_tokens"), eval_loss_trained_characters=trained,
                         eval_loss_unseen_characters=unseen,
                         eval_tokens_unseen_characters=metrics.get("eval_tokens_unseen_characters"))
        if control.should_training_stop and self.early_stopping is not None and left <= 0:
            self.log.line(f"early stopping: no improvement above {self.early_stopping.early_stopping_threshold} "
                          f"for {self.early_stopping.early_stopping_patience} evaluations")
            self.log.metrics("early_stop", step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self.log.line(f"checkpoint saved: checkpoint-{state.global_step}")
        self.log.metrics("checkpoint", step=state.global_step)


def _number(value):
    """A loss for the log and metrics.jsonl: None where there was nothing to average (NaN is not JSON)."""
    return None if value is None or math.isnan(value) else value


def plot_losses(metrics_path, png_path) -> bool:
    """Train and eval loss against step; skipped quietly when there is nothing to draw."""
    train, evals = [], []
    for line in Path(metrics_path).read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "train":
            train.append((rec["step"], rec["loss"]))
        elif rec["event"] == "eval":
            evals.append((rec["step"], rec["eval_loss"]))
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True

"""A clean stop on SIGTERM/SIGINT and on a non-finite loss: every rank finishes the current
optimizer step, a checkpoint is saved, and the process exits with a code that says why.

The one per-step reduction that lets ranks agree on stopping also carries the step's summed
token losses and token counts: that gives the non-finite check (no host sync per micro-batch)
and the run's true mean token loss, which checkpoints keep so a resumed run reports the same.
"""

import math
import os
import signal
import time

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

EXIT_NONFINITE = 3
REPEAT_WINDOW_S = 5.0  # pkill hits torchrun and the workers; torchrun forwards its own copy


class StopRequest:
    def __init__(self):
        self.signal = None
        self.first_at = None
        self.nonfinite = False
        self.step_loss = None  # summed token losses of this rank's micro-batches since the last agree
        self.step_tokens = None
        self.want_full_save = False  # this rank's clock says a resumable checkpoint is due
        self.full_save_due = False  # some rank's did, at the last agree

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signal is None:
            self.signal = signum
            self.first_at = now
        elif now - self.first_at > REPEAT_WINDOW_S:
            os._exit(128 + signum)

    def add_loss(self, loss_sum, tokens):
        """Device tensors, added without a sync."""
        loss_sum, tokens = loss_sum.detach().double(), tokens.detach().double()
        self.step_loss = loss_sum if self.step_loss is None else self.step_loss + loss_sum
        self.step_tokens = tokens if self.step_tokens is None else self.step_tokens + tokens

    def agree(self, device):
        """Every rank takes the same exit path; returns the step's (loss sum, tokens) over all ranks."""
        zero = torch.zeros((), dtype=torch.float64, device=device)
        values = torch.stack([
            torch.tensor(float(self.signal == signal.SIGINT), dtype=torch.float64, device=device),
            torch.tensor(float(self.signal == signal.SIGTERM), dtype=torch.float64, device=device),
            zero + float(self.nonfinite),
            (self.step_loss if self.step_loss is not None else zero).to(device),
            (self.step_tokens if self.step_tokens is not None else zero).to(device),
            zero + float(self.want_full_save),
        ])
        self.step_loss = self.step_tokens = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        sigint, sigterm, nonfinite, loss_sum, tokens, full_save = values.tolist()
        self.full_save_due = bool(full_save)
        if self.signal is None and (sigint or sigterm):
            self.signal = signal.SIGTERM if sigterm else signal.SIGINT
            self.first_at = time.monotonic()
        self.nonfinite = self.nonfinite or bool(nonfinite) or not math.isfinite(loss_sum)
        return loss_sum, tokens

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal  # 130 for SIGINT, 143 for SIGTERM
        return EXIT_NONFINITE if self.nonfinite else 0


class StopCallback(TrainerCallback, ExportableState):
    """Agrees across ranks, at each optimizer step's end, whether any rank wants to stop, and
    keeps the run's token loss sums (saved in every checkpoint's trainer_state.json), and, in the
    same reduction, whether a resumable checkpoint is due (`full_saves`, a saves.FullSavePolicy:
    the ranks' clocks differ, so they agree first)."""

    def __init__(self, request: StopRequest, full_saves=None):
        self.request = request
        self.full_saves = full_saves
        self.loss_sum = 0.0
        self.tokens = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        policy = self.full_saves
        self.request.want_full_save = policy is not None and policy.interval_s > 0 and policy.due()
        loss_sum, tokens = self.request.agree(args.device)
        self.loss_sum += loss_sum
        self.tokens += tokens
        if self.request.full_save_due and policy is not None:
            policy.agreed = True
            control.should_save = True
        if self.request.signal or self.request.nonfinite:
            control.should_save = True
            control.should_training_stop = True
        return control

    @property
    def mean_loss(self) -> float:
        """The mean token loss over every supervised token the run trained on."""
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    def state(self) -> dict:
        return {"args": {}, "attributes": {"loss_sum": self.loss_sum, "tokens": self.tokens}}

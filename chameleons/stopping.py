"""A clean stop on SIGTERM/SIGINT and on a non-finite loss: every rank finishes the current
optimizer step, a checkpoint is saved, and the process exits with a code that says why."""

import os
import signal
import time

import torch
from transformers import TrainerCallback

EXIT_NONFINITE = 3
REPEAT_WINDOW_S = 5.0  # pkill hits torchrun and the workers; torchrun forwards its own copy


class StopRequest:
    def __init__(self):
        self.signal = None
        self.first_at = None
        self.nonfinite = False

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

    def agree(self, device):
        """Every rank takes the same exit path (the flags summed with MAX over ranks)."""
        flags = torch.tensor([float(self.signal or 0), float(self.nonfinite)], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if self.signal is None and flags[0] > 0:
            self.signal = int(flags[0].item())
            self.first_at = time.monotonic()
        self.nonfinite = self.nonfinite or bool(flags[1] > 0)

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal  # 130 for SIGINT, 143 for SIGTERM
        return EXIT_NONFINITE if self.nonfinite else 0


class StopCallback(TrainerCallback):
    """Agrees across ranks, at each optimizer step's end, whether any rank wants to stop."""

    def __init__(self, request: StopRequest):
        self.request = request

    def on_step_end(self, args, state, control, **kwargs):
        self.request.agree(args.device)
        if self.request.signal or self.request.nonfinite:
            control.should_save = True
            control.should_training_stop = True
        return control

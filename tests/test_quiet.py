"""chameleons/core/quiet.py: the known noisy notices are dropped precisely, anything else still shows;
ranks other than 0 print errors only. Each case runs in a fresh interpreter (filters are global)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import logging, sys, warnings
import torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from chameleons.core import quiet
quiet.quiet_console()  # reads RANK from the environment
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
x, y = torch.zeros(2), torch.zeros(2)
for _ in range(3):
    dist.all_gather_into_tensor(y, x)
    dist.reduce_scatter_tensor(x, y)
    with warnings.catch_warnings():  # invalidates the once-per-location registry, as libraries do
        pass
warnings.warn("another FutureWarning stays visible", FutureWarning)
acc = logging.getLogger("accelerate.accelerator")  # what accelerate's logging adapter writes to
acc.warning("[RANK 0] Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has 2.")
acc.warning("another accelerate warning stays visible")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.trainer").warning("a transformers warning")
hf_logging.get_logger("transformers.trainer").error("a transformers error")
logging.getLogger("DeepSpeed").warning("a DeepSpeed warning")
dist.destroy_process_group()
"""


def run_as(rank: str) -> str:
    env = {**os.environ, "RANK": rank}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_rank_zero_drops_only_the_known_notices():
    out = run_as("0")
    assert "is deprecated" not in out
    assert "Gradient accumulation steps mismatch" not in out
    for visible in ("another FutureWarning stays visible", "another accelerate warning stays visible",
                    "a transformers warning", "a transformers error", "a DeepSpeed warning"):
        assert visible in out, (visible, out)


def test_other_ranks_print_errors_only():
    out = run_as("1")
    assert "a transformers error" in out
    for hidden in ("is deprecated", "another FutureWarning", "a transformers warning", "a DeepSpeed warning",
                   "another accelerate warning"):
        assert hidden not in out, (hidden, out)

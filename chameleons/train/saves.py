"""What each checkpoint holds. An evaluation-time save keeps what early stopping needs, the
weights, as each rank's own partition (ZeRO-3; bf16 on GPUs) or the model file (no DeepSpeed),
without optimizer states; full resumable state (DeepSpeed's partitioned fp32 weights and AdamW
moments, scheduler, RNG) is written when `training.full_checkpoint_minutes` have passed since
the last full save, and on a stop (SIGTERM/SIGINT, non-finite loss).

Why not the libraries': HF Trainer refuses `save_only_model` with DeepSpeed and
`load_best_model_at_end` (it restores the best model through DeepSpeed's full states), and
DeepSpeed has no weights-only save short of gathering the whole model on rank 0
(`save_16bit_model`: 57 GiB of rank 0's host RAM for Qwen3-30B-A3B). HF's `save_only_model` is
used for the decision what to skip; the partitions are written and read here.
"""

import shutil
import time
from pathlib import Path

import torch

from ..run import checkpoints


def partition_file(folder, rank: int, world: int) -> Path:
    return Path(folder, f"weights-rank{rank:05d}-of-{world:05d}.pt")


class FullSavePolicy:
    """Whether the next save must be resumable: every one when `interval_s` is 0, else once
    `interval_s` have passed since the last full save (or the start)."""

    def __init__(self, interval_s: float, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.last = clock()
        self.agreed = False  # set at each step's end from every rank's clock (stopping.StopRequest.agree)

    def due(self) -> bool:
        return self.interval_s <= 0 or self.clock() - self.last >= self.interval_s

    def saved(self):
        self.last = self.clock()
        self.agreed = False


def save_partitions(model, folder, rank: int, world: int) -> int:
    """Each rank writes its own ZeRO-3 partition of every parameter (no gather); returns bytes."""
    state = {name: p.ds_tensor.detach().to("cpu", copy=True) for name, p in model.named_parameters()}
    path = partition_file(folder, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return sum(t.numel() * t.element_size() for t in state.values())


def load_partitions(engine, model, folder, rank: int, world: int) -> None:
    """The best model back from a checkpoint's partitions: each rank reads its own file only.
    DeepSpeed's own load steps around it: every parameter partitioned first, the small
    persistent ones gathered again after, and the fp32 master copy follows the weights."""
    path = partition_file(folder, rank, world)
    state = torch.load(path, map_location="cpu", weights_only=True)
    optimizer = engine.optimizer
    optimizer.checkpoint_event_prologue()
    params = dict(model.named_parameters())
    if set(params) != set(state):
        raise RuntimeError(f"{path}: parameters differ from the model's ({sorted(set(params) ^ set(state))[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.ds_tensor.data.copy_(state[name])
        for low, master in zip(getattr(optimizer, "fp16_partitioned_groups_flat", []),
                               getattr(optimizer, "fp32_partitioned_groups_flat", [])):
            if low.numel():
                master.data.copy_(low.data)
    optimizer.checkpoint_event_epilogue()


def rotate(run_dir, limit: int, best):
    """The one checkpoint rotation (HF's is turned off around each save): removes what
    `to_delete` names, never the best or the newest resumable checkpoint."""
    found = checkpoints.listing(run_dir)
    full = [path for _, path, done in found if done]
    for path in to_delete(found, limit, best and str(Path(best)), full[-1] if full else None):
        shutil.rmtree(path, ignore_errors=True)


def to_delete(found, limit: int, best, newest_full) -> list:
    """Checkpoint folders to remove: keep the best, the newest resumable one and the newest others
    up to `limit` in all. `found`: (step, path, resumable) tuples."""
    keep = {p for p in (best, newest_full) if p is not None}
    for step, path, full in sorted(found, key=lambda f: -f[0]):
        if len(keep) >= limit:
            break
        keep.add(path)
    return [path for _, path, _ in found if path not in keep]

"""Prediction's ranks: RANK/WORLD_SIZE from the launcher, and a gloo group that carries the
(small) Python objects prediction exchanges (the finished ids, every rank's results)."""

import sys

from ..core import launch
from ..core.errors import UserError


class Distributed:
    """RANK/WORLD_SIZE from the launcher; a gloo group carries the (small) Python objects."""

    def __init__(self, rank=0, world=1, local_rank=0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._group = False

    @classmethod
    def from_env(cls):
        """The launcher's variables, read as training reads them (`launch`) and checked: a bad one
        is one error line, not a traceback later."""
        rank, world, local = launch.rank(), launch.world_size(), launch.local_rank()
        if world < 1:
            raise UserError(f"environment variable WORLD_SIZE={world} must be at least 1")
        if not 0 <= rank < world:
            raise UserError(f"environment variable RANK={rank} must be in 0..WORLD_SIZE-1 ({world - 1})")
        if local < 0:
            raise UserError(f"environment variable LOCAL_RANK={local} must not be negative")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self):
        if self.world > 1 and not self._group:
            from datetime import timedelta

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timedelta(hours=12))
            self._group = True

    def device(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's object, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        box = [None] * self.world if self.is_main else None
        dist.gather_object(obj, box, dst=0)
        return box

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False

    def warn(self, message: str):
        if self.is_main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def notice(self, message: str):
        if self.is_main:
            print(f"notice: {message}", file=sys.stderr, flush=True)

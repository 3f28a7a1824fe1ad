"""Disk space: a run that cannot fit its saves is refused before it starts (a notice where it may
not fit), and a write that fails on a full disk anyway is one line that says what was kept and
how to continue, not a `SafetensorError`/`OSError` traceback.

An incomplete checkpoint never counts: `auto` resumes only folders with the completeness marker
(chameleons/run/checkpoints.py), written after every rank has saved."""

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import UserError

GiB = 2 ** 30


def free_bytes(path) -> int:
    """Free bytes on the disk that holds `path` (or the nearest folder above it that exists)."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _gib(n: int) -> str:
    return f"{n / GiB:,.1f} GiB"


def check_run_space(output_dir, cost) -> str | None:
    """One line if the first checkpoint cannot fit (the run would fail at its first save); a notice
    if all the saves the plan counts (kept checkpoints and the final model) may not; None when
    they fit or `cost` (zero3.checkpoint_cost) could not be estimated."""
    if not cost:
        return None
    free = free_bytes(output_dir)
    first = cost["checkpoint_bytes"]
    if free < first:
        raise UserError(f"--output_dir {output_dir}: {_gib(free)} free on its disk, one checkpoint needs about "
                        f"{_gib(first)} (the plan's estimate); free space, or choose another --output_dir")
    if free < cost["disk_bytes"]:
        return (f"disk: {_gib(free)} free at {output_dir}, the run's saves may need up to {_gib(cost['disk_bytes'])} "
                f"({cost['kept']} checkpoints kept + final model); it may stop on a full disk (resumable)")
    return None


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC as Python raises it, or as safetensors' Rust writer reports it (its own error type)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


@contextmanager
def full_disk_is_one_line(where, then: str):
    """A full disk inside the block ends the run with one line: where, and `then` (what was kept,
    how to continue). Other errors pass through unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        path = getattr(exc, "filename", None) or where
        raise UserError(f"disk full while writing {path}: {then}") from None


def check_output_space(path, at_least: int, why: str):
    """One line when the disk of `path` has less than `at_least` bytes free (`why`: the reason)."""
    free = free_bytes(path)
    if free < at_least:
        raise UserError(f"{path}: {_gib(free)} free on its disk, at least {_gib(at_least)} needed ({why}); free "
                        f"space, or write elsewhere")

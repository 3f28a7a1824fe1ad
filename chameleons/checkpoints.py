"""Which checkpoints are complete, and which one `--resume_from_checkpoint auto` means."""

import re
from pathlib import Path

from .errors import UserError

COMPLETE_MARKER = "chameleons_complete"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def mark_complete(checkpoint_dir):
    """Written by rank 0 after every rank finished saving: a checkpoint without it is partial."""
    Path(checkpoint_dir, COMPLETE_MARKER).write_text("ok\n")


def is_complete(checkpoint_dir) -> bool:
    return Path(checkpoint_dir, COMPLETE_MARKER).is_file()


def newest_complete(output_dir):
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = _CHECKPOINT.fullmatch(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return str(max(found)[1]) if found else None


def resolve_resume(value, output_dir):
    """None (fresh), a complete checkpoint path, or a clear error."""
    if value is None:
        return None
    if value == "auto":
        return newest_complete(output_dir)
    path = Path(value)
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint: {value} is not a folder")
    if not is_complete(path):
        raise UserError(f"--resume_from_checkpoint: {value} is not a complete checkpoint ({COMPLETE_MARKER} missing)")
    return str(path)

"""Which checkpoints are complete, and which one `--resume_from_checkpoint auto` means."""

import json
import re
from pathlib import Path

from ..core.errors import UserError
from ..core.sources import check_model_folder

COMPLETE_MARKER = "chameleons_complete"
WEIGHTS_MARKER = "chameleons_weights_only"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def mark_complete(checkpoint_dir):
    """Written by rank 0 after every rank finished saving: a checkpoint without it is partial."""
    Path(checkpoint_dir, COMPLETE_MARKER).write_text("ok\n")


def mark_weights_only(checkpoint_dir):
    """Written by rank 0 after every rank saved an evaluation-time checkpoint (chameleons/train/saves.py):
    complete, but not resumable, so `--resume_from_checkpoint auto` passes it by."""
    Path(checkpoint_dir, WEIGHTS_MARKER).write_text("ok\n")


def is_complete(checkpoint_dir) -> bool:
    return Path(checkpoint_dir, COMPLETE_MARKER).is_file()


def listing(output_dir) -> list:
    """[(step, path, complete)] of the checkpoint folders in `output_dir`: what resuming and
    rotation both read."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = _CHECKPOINT.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), str(p), is_complete(p)))
    return sorted(found)


def newest_complete(output_dir):
    complete = [path for _, path, done in listing(output_dir) if done]
    return complete[-1] if complete else None


def resolve_resume(value, output_dir):
    """None (fresh), a complete and readable checkpoint path, or a clear error."""
    if value is None:
        return None
    if value == "auto":
        found = newest_complete(output_dir)
        if found is not None:
            check_readable(found)
        return found
    path = Path(value)
    if not path.is_dir():
        raise UserError(f"--resume_from_checkpoint: {value} is not a folder")
    if Path(path, WEIGHTS_MARKER).is_file():
        raise UserError(f"--resume_from_checkpoint: {value} holds the weights only (an evaluation-time save, for "
                        f"early stopping); resume from a resumable checkpoint (auto picks the newest)")
    if not is_complete(path):
        raise UserError(f"--resume_from_checkpoint: {value} is not a complete checkpoint ({COMPLETE_MARKER} missing)")
    check_readable(path)
    return str(path)


def check_readable(checkpoint):
    """trainer_state.json and the weights parse, so a damaged checkpoint is one line before the
    run touches anything, not a traceback after the model is built."""
    state = Path(checkpoint, "trainer_state.json")
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{state}: missing; the checkpoint cannot be resumed") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{state}: damaged, not valid JSON ({exc}); resume from an older checkpoint") from None
    check_model_folder(checkpoint)

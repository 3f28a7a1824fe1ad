"""The run folder: what may be written where, always atomically."""

import json
import os
import tempfile
from pathlib import Path

from .errors import UserError

FINISHED_MARKER = "training_config.json"


def run_path(output_dir, *parts) -> Path:
    return Path(output_dir, *parts)


def write_text(path, text: str):
    """Write beside the target, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def is_finished_run(output_dir) -> bool:
    return run_path(output_dir, FINISHED_MARKER).is_file()


def check_output_dir(output_dir, overwrite: bool, resume, dry_run: bool):
    """A finished run is never overwritten unless asked; a dry run only adds plan.json."""
    if dry_run or overwrite or resume:
        return
    if is_finished_run(output_dir):
        raise UserError(f"{output_dir}: holds a finished run ({FINISHED_MARKER}); pass --overwrite_output_dir "
                        f"to replace it, or choose another --output_dir")

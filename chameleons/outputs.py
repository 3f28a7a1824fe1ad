"""The run folder: what may be written where, always atomically."""

import json
import os
import tempfile
import time
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


RUN_FILES = (FINISHED_MARKER, "split_manifest.json", "training_logs", "model.safetensors",
             "model.safetensors.index.json", "adapter_model.safetensors", "adapter_config.json", "config.json",
             "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "special_tokens_map.json", "vocab.json", "merges.txt", "training_args.bin")


def check_output_dir(output_dir, overwrite: bool, resume, dry_run: bool):
    """A run folder is never overwritten unless asked; a dry run only adds plan.json."""
    if dry_run or overwrite or resume:
        return
    if is_finished_run(output_dir):
        raise UserError(f"{output_dir}: holds a finished run ({FINISHED_MARKER}); pass --overwrite_output_dir "
                        f"to replace it, or choose another --output_dir")
    if any(Path(output_dir).glob("checkpoint-*")):
        raise UserError(f"{output_dir}: holds checkpoints of an unfinished run; pass --resume_from_checkpoint auto "
                        f"to continue it, --overwrite_output_dir to start over, or choose another --output_dir")


def clear_previous_run(output_dir):
    """With --overwrite_output_dir (and no resume): the old run's checkpoints, logs and markers
    go, so the new run's logs do not mix with them and `auto` never resumes the old run."""
    import shutil

    old = list(Path(output_dir).glob("checkpoint-*")) + list(Path(output_dir).glob("model-*.safetensors"))
    for path in old + [Path(output_dir, name) for name in RUN_FILES]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def set_aside_previous_logs(output_dir):
    """A fresh start (nothing to resume) keeps an earlier attempt's logs, renamed, instead of
    appending to them."""
    logs = Path(output_dir, "training_logs")
    if logs.is_dir() and any(logs.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(logs.stat().st_mtime))
        logs.rename(logs.with_name(f"training_logs.before-{stamp}"))


def write_records(path, records, jsonl: bool = False):
    """Chameleons records as JSON Lines, or as a JSON list with one record per line (readable
    diffs), atomically."""
    if jsonl:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"
    write_text(path, text)

"""The run folder: what may be written where, always atomically."""

import json
import os
import tempfile
import time
from pathlib import Path

from .errors import UserError

FINISHED_MARKER = "training_config.json"
MANIFEST_NAME = "split_manifest.json"
RUN_RECORD = "run_record.json"  # see chameleons/run/run_record.py


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; colleagues on a shared disk read our files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def is_finished_run(output_dir) -> bool:
    return run_path(output_dir, FINISHED_MARKER).is_file()


RUN_FILES = (FINISHED_MARKER, MANIFEST_NAME, RUN_RECORD, "training_logs", "model.safetensors",
             "model.safetensors.index.json", "adapter_model.safetensors", "adapter_config.json", "config.json",
             "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "special_tokens_map.json", "vocab.json", "merges.txt", "training_args.bin")


def check_output_dir(output_dir, overwrite: bool, resume, dry_run: bool) -> bool:
    """A run folder is never overwritten unless asked; a dry run only adds plan.json and split_audit.json.

    Returns True when `--resume_from_checkpoint auto` meets a finished run: there is nothing to
    do, and a requeued job must leave the result alone and succeed."""
    check_writable(output_dir)
    if dry_run:
        return False
    if is_finished_run(output_dir) and not overwrite:
        if resume == "auto":
            return True
        if resume:
            raise UserError(f"{output_dir}: holds a finished run ({FINISHED_MARKER}); resuming {resume} would train it "
                            f"further and replace its model; pass --overwrite_output_dir to do that, or choose another "
                            f"--output_dir")
        raise UserError(f"{output_dir}: holds a finished run ({FINISHED_MARKER}); pass --overwrite_output_dir "
                        f"to replace it, or choose another --output_dir")
    if overwrite or resume:
        return False
    if any(Path(output_dir).glob("checkpoint-*")):
        raise UserError(f"{output_dir}: holds checkpoints of an unfinished run; pass --resume_from_checkpoint auto "
                        f"to continue it, --overwrite_output_dir to start over, or choose another --output_dir")
    return False


def check_writable(output_dir):
    """The output folder (or the nearest folder above it that exists) takes files: found out
    before hours of tokenizing, not at the first save."""
    path = Path(output_dir).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_dir {output_dir}: is a file, not a folder")
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UserError(f"--output_dir {output_dir}: {probe_dir} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".chameleons-write-test.", dir=probe_dir)
    except OSError as exc:
        raise UserError(f"--output_dir {output_dir}: cannot write in {probe_dir} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


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

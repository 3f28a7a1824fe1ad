"""A finished run resubmitted with `--resume_from_checkpoint auto` (a requeued job) is left alone
and exits 0; when the command asks for something else than the run did (another data file, seed,
--max_steps...), one notice line names the settings that differ, so a changed sweep point is
not mistaken for a result."""

import json

from ..core.outputs import FINISHED_MARKER, run_path

# flags that do not change what a run trains (where it logs, how it starts, the dry run's
# estimates), and those that stand for a config key (compared as the key)
IGNORED_FLAGS = {"output_dir", "resume_from_checkpoint", "overwrite_output_dir", "wandb_project", "wandb_run_name",
                 "wandb_group", "tensorboard", "dry_run", "sec_per_step", "nproc_per_node", "overrides", "seed",
                 "evals_per_epoch"}
IGNORED_KEYS = {"overrides", "data.cache_dir"}


def _flatten(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            out.update(_flatten(v, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def differences(finished: dict, args: dict, resolved: dict) -> list:
    """`name (finished value -> now value)` for every flag and config key that differs."""
    out = []
    old_args = finished.get("args") or {}
    for key in sorted(set(args) - IGNORED_FLAGS):
        if key in old_args and old_args[key] != args[key]:
            out.append(f"--{key} ({json.dumps(old_args[key])} -> {json.dumps(args[key])})")
    old_cfg = _flatten(finished.get("config") or {})
    new_cfg = _flatten(resolved)
    for key in sorted((set(old_cfg) | set(new_cfg)) - IGNORED_KEYS):
        if old_cfg.get(key) != new_cfg.get(key):
            out.append(f"{key} ({json.dumps(old_cfg.get(key))} -> {json.dumps(new_cfg.get(key))})")
    return out


def finished_run_notice(output_dir, args: dict, resolved: dict) -> str | None:
    """The notice for a finished run this command would have run differently (None: same run)."""
    try:
        finished = json.loads(run_path(output_dir, FINISHED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    diff = differences(finished if isinstance(finished, dict) else {}, args, resolved)
    if not diff:
        return None
    return (f"notice: {output_dir} holds a finished run made with other settings; nothing was run or changed. "
            f"Differs: {'; '.join(diff)}. Use another --output_dir (or --overwrite_output_dir) to train these")

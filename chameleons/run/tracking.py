"""wandb for sweeps: every setting that tells two runs apart in `wandb.config`, seeds of one
setting in one group, and tags to filter by.

The Trainer's WandbCallback would start the run itself with only `TrainingArguments` and the model
config; starting it here first (rank 0) makes the callback reuse it and add those on top.
"""

import os
import sys

from ..core.errors import UserError


def wandb_settings(project: str, run_name, output_dir) -> tuple:
    """(report_to, notice, environment): rank 0 logs to wandb; with no key or no network it goes
    offline, saying so once. The environment the run sets when it starts (`apply_wandb_env`):
    worked out at the checks, from the environment as the user left it, so the runs of a sweep
    each log into their own folder."""
    if not project or project.lower() == "none":
        return [], None, {}
    env = {"WANDB_PROJECT": project, "WANDB_DIR": os.environ.get("WANDB_DIR") or str(output_dir)}
    if run_name:
        env["WANDB_NAME"] = run_name
    notice = None
    key = os.environ.get("WANDB_API_KEY", "")
    has_key = bool(key) or os.path.exists(os.path.expanduser("~/.netrc"))
    if os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        reason = "no API key found" if not has_key else \
            f"WANDB_API_KEY is malformed ({len(key)} characters, wandb keys have {MIN_KEY_LENGTH}+)" \
            if key and len(key) < MIN_KEY_LENGTH else None
        if reason:
            env["WANDB_MODE"] = "offline"
            notice = f"wandb: {reason}, logging offline to {env['WANDB_DIR']}/wandb (sync later with `wandb sync`)"
    return ["wandb"], notice, env


def apply_wandb_env(env: dict):
    """Every rank, when its run starts (the Trainer's wandb callback reads these too)."""
    os.environ.update(env)


MIN_KEY_LENGTH = 40


def _go_offline(reason: str) -> str:
    os.environ["WANDB_MODE"] = "offline"
    return f"wandb: {reason}, logging offline to {os.environ['WANDB_DIR']}/wandb (sync later with `wandb sync`)"


def size_label(max_samples_per_user) -> str:
    """`N2`, or `Nall` when every sample is kept."""
    return f"N{'all' if max_samples_per_user is None else max_samples_per_user}"


def wandb_group(opts) -> str:
    """`--wandb_group`, else ablation and N (`context_only_N2`): the seeds of one setting."""
    return opts.wandb_group or f"{opts.ablation_config}_{size_label(opts.max_samples_per_user)}"


def wandb_tags(opts) -> list:
    return [opts.ablation_config, size_label(opts.max_samples_per_user), f"seed{opts.sample_seed}"]


def run_config(opts, spec) -> dict:
    """What goes to `wandb.config`: the run spec's flags at the top level (filterable columns in
    the UI; N as `all` when unlimited, the validation seed as used), the resolved config sections,
    and every flag under `args` (`TrainOptions`)."""
    return {
        **spec.flags,
        "ablation": spec.flags["ablation_config"],  # the column's name before the run spec: saved filters use it
        "max_samples_per_user": spec.flags["max_samples_per_user"] or "all",
        "val_seed": spec.split_settings().validation_seed,
        "wandb_group": wandb_group(opts),
        "config_file": str(spec.config.path),
        "training_file": spec.settings()["training file"],
        **spec.config.resolved(),  # model, data, training, lora, ablation_configs, overrides
        "args": opts.as_record(),
    }


def start_wandb(opts, spec, report_to, **extra):
    """Start the wandb run on rank 0 (call it there only), before the Trainer exists; project,
    run name, folder and mode come from the environment `apply_wandb_env` set, passed explicitly
    (wandb keeps the first run's settings of a process otherwise: a sweep's runs would share one
    folder); `extra`: facts decided at start that the config does not show (expert parallelism's size)."""
    if "wandb" not in report_to:
        return None
    import wandb

    settings = dict(group=wandb_group(opts), tags=wandb_tags(opts), config={**run_config(opts, spec), **extra},
                    project=os.environ.get("WANDB_PROJECT"), name=os.environ.get("WANDB_NAME"),
                    dir=os.environ.get("WANDB_DIR"))
    try:
        return wandb.init(**settings)
    except wandb.errors.CommError as exc:  # a rejected key or no network: the run goes on, logged offline
        print(_go_offline(f"cannot log online ({str(exc).splitlines()[0][:120]})"), file=sys.stderr, flush=True)
        return wandb.init(mode="offline", **settings)


def finish_wandb(exit_code: int):
    """Close the run with the process's exit code while everything is alive: left to wandb's exit
    hook, the run was cut off at interpreter exit and its config.yaml never written."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)


def require_tensorboard():
    """TensorBoard is optional (not in requirements.txt): asked for without the package, say how to get it."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        raise UserError("--tensorboard: the tensorboard package is not installed (.venv/bin/pip install tensorboard)")
